// Phase 3 (map): where every weight, the KV cache and the host I/O buffers live in
// the device's HBM. Weights are striped over all pseudo-channels row by row
// (row r in channel r % C), in the order the programs stream them, so each
// channel reads its share front to back ("streamlined memory access").
//
// Per pseudo-channel the layout is [weights | KV cache | (channel 0 only) I/O];
// docs/formats.md draws it. On a ring of N devices each device's plan is made for
// its shard_spec() share; the shares have the same shapes, so every device has the
// same plan and only its parameter bytes differ (hyperdex/tools/sharding.py).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "isa/isa.h"
#include "isa/qmatrix.h"
#include "spec/model_spec.h"
#include "spec/passes.h"

namespace hyperdex {

constexpr uint32_t kPlanFormatVersion = 1;
constexpr uint32_t kRowAlignBytes = 64;   // every row starts on a 64-byte (512-bit) line
constexpr uint32_t kVectorRowElems = 32;  // vectors are striped in 32-element (64-byte) rows
constexpr uint64_t kSegmentAlign = 4096;  // regions start on 4 KiB boundaries

enum class RegionKind : uint8_t {
  Matrix = 0,     // fp16 [rows, cols], rows zero-padded to a multiple of 64 bytes
  Vector = 1,     // fp16 [cols] cut into 32-element rows
  RopeTable = 2,  // fp32 (cos, sin) pairs, one row per position
  KvCache = 3,    // fp16 [max_length, kv_heads * head_dim], written at run time
  QMatrix = 4,    // quantized [rows, cols]: per row, chunks of 16 fp16 scales + packed codes
                  // (isa/qmatrix.h), zero-padded to a multiple of 64 bytes
};

struct Region {
  std::string name;
  RegionKind kind = RegionKind::Matrix;
  uint64_t base = 0;       // byte offset inside every pseudo-channel
  uint32_t row_bytes = 0;
  uint32_t rows = 0;       // logical rows (matrix rows, vector pieces, positions)
  uint32_t cols = 0;       // logical elements per row (matrix/KV) or length (vector)
  uint32_t bits = 16;      // QMatrix: code bits (4 or 8); 16 for every other kind
  uint32_t group = 0;      // QMatrix: input columns per scale (divides cols)
  // A mixture's experts (0: none): `rows` is `experts` equal blocks, each a multiple of the
  // channel count (an expert starts on channel 0 and streams from every channel), holding
  // `expert_rows` rows of its sources then zero rows.
  uint32_t experts = 0;
  uint32_t expert_rows = 0;
  // Canonical tensors whose rows are concatenated into this region, in order.
  std::vector<std::string> sources;

  // In 64 bits: rows + channels - 1 may not fit 32, and the product fits 64.
  uint64_t bytes_per_channel(uint32_t channels) const {
    return (uint64_t(rows) + channels - 1) / channels * row_bytes;
  }
  isa::HbmRegion ref() const { return isa::HbmRegion{base, row_bytes, rows}; }
  bool quantized() const { return kind == RegionKind::QMatrix; }
  uint32_t expert_block() const { return experts ? rows / experts : 0; }
  isa::QRowFormat qformat() const { return isa::QRowFormat{bits, group, cols}; }
};

// Host-visible buffers in pseudo-channel 0 (offsets relative to `base`).
struct IoLayout {
  uint64_t base = 0;
  uint32_t ids_offset = 0;        // int32 [max_tokens] token ids of a run
  uint32_t argmax_offset = 0;     // int32: ARGMAX of the last logits row
  uint32_t logits_offset = 0;     // fp32 [max_tokens, vocab]
  uint32_t bytes = 0;
};

struct MemoryPlan {
  uint32_t num_channels = 0;
  uint64_t channel_capacity = 0;
  uint32_t max_length = 0;   // KV cache rows
  uint32_t max_tokens = 0;   // token rows of one prefill run
  uint32_t vocab_size = 0;
  std::vector<Region> regions;  // weights in stream order, then KV caches
  uint64_t weights_bytes = 0;   // per channel: [0, weights_bytes) is param/ch*.bin
  uint64_t kv_base = 0, kv_bytes = 0;  // per channel
  IoLayout io;
  std::vector<uint64_t> channel_bytes;  // allocation per channel

  const Region& find(const std::string& name) const;  // throws SpecError
  const Region* find_or_null(const std::string& name) const;
  uint64_t total_bytes() const;
  uint64_t weight_bytes_total() const { return weights_bytes * num_channels; }
  // A checksum of the layout; programs record it so stale pairs are caught.
  uint32_t fingerprint() const;
};

// Lays the model out for one device. Throws CapacityError (with the numbers)
// when weights + KV cache + I/O do not fit the preset's HBM. The passes decide
// which projections share a region: Q/K/V as `attn_qkv` (else attn_q, attn_k,
// attn_v) and gate/up as `ffn_gate_up` (else ffn_gate, ffn_up). A quantized spec
// (weight_bits 4 or 8) makes those projections, attn_output and ffn_down QMatrix regions,
// and the LM head one with quantize_lm_head (region "output", also for tied embeddings).
MemoryPlan plan_memory(const ModelSpec& spec, const DevicePreset& preset, uint32_t max_length,
                       uint32_t max_tokens, const PassOptions& passes = {});

// Bytes of HBM the model needs on one device, by part (for phase-0 checks).
struct MemoryNeeds {
  uint64_t weights = 0, kv_cache = 0, io = 0;
  uint64_t total() const { return weights + kv_cache + io; }
};
MemoryNeeds memory_needs(const MemoryPlan& plan);

}  // namespace hyperdex
