// Shared by the libFuzzer harnesses (tests/fuzz/fuzz_*.cpp) and the seed generator
// (tests/fuzz/make_corpus.cpp): the tiny models and device the seeds come from, the
// little-endian fields the harness inputs are made of, and the rule that a harness
// swallows only the core's own error types (common/error.h). Anything else escaping a
// reader (std::out_of_range, std::bad_alloc, ...) ends the run as a finding, as does
// every sanitizer report.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <string>
#include <vector>

#include "common/error.h"
#include "instgen/instgen.h"
#include "mapper/memory_plan.h"
#include "spec/model_spec.h"

namespace hyperdex::fuzz {

// --- the bad-input errors the core throws on purpose (the only ones a harness swallows) ---

// HYPERDEX_FUZZ_DEBUG=1 prints each swallowed error (to see how far a seed gets).
inline void swallowed(const char* type, const std::exception& e) {
  static const bool debug = std::getenv("HYPERDEX_FUZZ_DEBUG") != nullptr;
  if (debug) std::fprintf(stderr, "[swallowed %s] %s\n", type, e.what());
}

template <typename Fn>
void expect_only_our_errors(Fn&& fn) {
  try {
    fn();
  } catch (const FormatError& e) {
    swallowed("FormatError", e);
  } catch (const CapacityError& e) {
    swallowed("CapacityError", e);
  } catch (const SpecError& e) {
    swallowed("SpecError", e);
  } catch (const DeviceError& e) {
    swallowed("DeviceError", e);
  }
}

// --- little-endian input fields ---------------------------------------------------------------

// Reads fixed-size fields front to back; past the end every field reads as zero.
class Reader {
 public:
  Reader(const uint8_t* data, size_t size) : data_(data), size_(size) {}
  template <typename T>
  T get() {
    uint64_t v = 0;
    for (size_t i = 0; i < sizeof(T); ++i) v |= uint64_t(pos_ + i < size_ ? data_[pos_ + i] : 0) << (8 * i);
    pos_ += sizeof(T);
    return T(v);
  }
  size_t pos() const { return pos_ < size_ ? pos_ : size_; }
  const uint8_t* rest() const { return data_ + pos(); }
  size_t rest_size() const { return size_ - pos(); }

 private:
  const uint8_t* data_;
  size_t size_;
  size_t pos_ = 0;
};

class Writer {
 public:
  template <typename T>
  void put(T v) {
    for (size_t i = 0; i < sizeof(T); ++i) out.push_back(uint8_t(uint64_t(v) >> (8 * i)));
  }
  void bytes(const std::vector<uint8_t>& b) { out.insert(out.end(), b.begin(), b.end()); }
  std::vector<uint8_t> out;
};

// --- the tiny device and models -----------------------------------------------------------

constexpr uint32_t kChannels = 2;

// Small enough that an emulator per input costs little, large enough for the models below.
inline DevicePreset tiny_preset() {
  DevicePreset p;
  p.name = "fuzz";
  p.hbm_channels = kChannels;
  p.hbm_channel_bytes = 1ull << 20;
  p.lmem_bytes = 256ull << 10;
  return p;
}

inline void rope(ModelSpec& s, uint32_t dim) {
  s.positions = PositionKind::Rope;
  s.rope_dim = dim;
  s.rope_inv_freq.clear();
  for (uint32_t i = 0; i < dim / 2; ++i)
    s.rope_inv_freq.push_back(float(std::pow(10000.0, -double(2 * i) / dim)));
}

inline ModelSpec tiny_llama() {
  ModelSpec s;
  s.architecture = "LlamaForCausalLM";
  s.vocab_size = 96;
  s.hidden_size = 32;
  s.num_layers = 1;
  s.num_heads = 2;
  s.num_kv_heads = 1;
  s.head_dim = 16;
  s.intermediate_size = 64;
  s.norm = NormKind::RmsNorm;
  s.norm_bias = false;
  s.act = ActKind::Silu;
  s.gated_mlp = true;
  rope(s, 16);
  s.tie_word_embeddings = true;
  s.embed_dim = 32;
  return s;
}

inline ModelSpec tiny_gpt2() {
  ModelSpec s;
  s.architecture = "GPT2LMHeadModel";
  s.vocab_size = 80;
  s.hidden_size = 32;
  s.num_layers = 1;
  s.num_heads = 2;
  s.num_kv_heads = 2;
  s.head_dim = 16;
  s.intermediate_size = 64;
  s.act = ActKind::GeluTanh;
  s.qkv_bias = s.attn_out_bias = s.mlp_bias = true;
  s.positions = PositionKind::Learned;
  s.learned_pos_rows = 16;
  s.tie_word_embeddings = true;
  s.embed_dim = 32;
  return s;
}

inline ModelSpec tiny_llama_q4() {
  ModelSpec s = tiny_llama();
  s.weight_bits = 4;
  s.group_size = 16;
  s.quantize_lm_head = true;
  return s;
}

inline PassOptions no_passes() {
  PassOptions p;
  p.fuse_epilogue = p.fuse_qkv = p.fuse_gate_up = p.reorder = p.fuse_argmax = p.chunk_ring = false;
  return p;
}

// A tiny model compiled for the tiny device (max_length 8, prefill chunks of 4 rows).
struct TinyModel {
  const char* name;
  ModelSpec spec;
  PassOptions passes;
  uint32_t devices = 1;
  MemoryPlan plan;
  Programs programs;
};

constexpr uint32_t kMaxLength = 8;
constexpr uint32_t kMaxTokens = 4;

inline TinyModel compile_tiny(const char* name, const ModelSpec& full, const PassOptions& passes,
                              uint32_t devices = 1) {
  TinyModel m{name, shard_spec(full, devices), passes, devices, {}, {}};
  m.plan = plan_memory(m.spec, tiny_preset(), kMaxLength, kMaxTokens, passes);
  m.programs = generate_programs(m.spec, m.plan, passes, devices);
  return m;
}

// The models the seeds are compiled from; fuzz_session picks one by index.
inline const std::vector<TinyModel>& tiny_models() {
  static const std::vector<TinyModel> models = {
      compile_tiny("llama", tiny_llama(), PassOptions{}),
      compile_tiny("gpt2_unfused", tiny_gpt2(), no_passes()),
      compile_tiny("llama_q4", tiny_llama_q4(), PassOptions{}),
      compile_tiny("llama_ring2", tiny_llama(), PassOptions{}, 2),
  };
  return models;
}

// --- fuzz_program's input: a device layout and run, then a program file -----------------------
//
//   u32 channel_bytes[kChannels], u32 io_base, u32 io_bytes  (the memory map's layout)
//   u16 start_pos, u8 n_tokens, u8 run flags (1: logits_all, 2: want_logits)
//   then the program file's bytes (isa::serialize)
constexpr size_t kProgramPrefixBytes = 4 * kChannels + 8 + 4;

inline std::vector<uint8_t> program_input(const std::vector<uint64_t>& channel_bytes, uint64_t io_base,
                                          uint64_t io_bytes, const std::vector<uint8_t>& program,
                                          uint16_t start_pos, uint8_t n_tokens, uint8_t flags) {
  Writer w;
  for (uint32_t c = 0; c < kChannels; ++c) w.put<uint32_t>(uint32_t(channel_bytes.at(c)));
  w.put<uint32_t>(uint32_t(io_base));
  w.put<uint32_t>(uint32_t(io_bytes));
  w.put<uint16_t>(start_pos);
  w.put<uint8_t>(n_tokens);
  w.put<uint8_t>(flags);
  w.bytes(program);
  return w.out;
}

// --- fuzz_session's input: a SessionConfig (what hyperdex/compiled/session.py builds from
// config/memory_map.json), the parameter files' bytes, then a script of runtime calls -----------
//
//   u8 model index, u8 flags (kSessionFixCrc: the harness writes each param file's true CRC-32
//   into the config; kSessionSwapPrograms: prefill and decode paths swapped)
//   u64 channel_bytes[kChannels], u64 layout io_base, u64 layout io_bytes
//   u64 io.base, u32 io.ids_offset, io.argmax_offset, io.logits_offset, io.bytes
//   u32 vocab_size, max_length, plan_fingerprint; u64 weights_bytes
//   per channel: u32 param file length, u32 CRC-32, u8 fill byte (the file is that long,
//   filled with the byte; lengths are clamped to kMaxParamFileBytes)
//   u8 KV region count (clamped to 8), per region: u64 base, u32 row_bytes, rows, cols
//   then script steps of 4 bytes: u8 op (kStep*), u8 a, u8 b, u8 c
enum SessionFlags : uint8_t { kSessionFixCrc = 1, kSessionSwapPrograms = 2 };
enum SessionStep : uint8_t {
  kStepPrefill = 0,  // a tokens (1 + a % 8), ids from b, c bit 0: logits_all
  kStepDecode = 1,   // id b
  kStepReadKv = 2,   // start a % 16, n b % 16
  kStepWriteKv = 3,  // start a % 16, n b % 16
  kStepTruncate = 4, // position a % 16
  kStepReset = 5,
};
constexpr uint32_t kMaxParamFileBytes = (1u << 20) + 64;  // past a tiny channel
constexpr uint32_t kMaxKvRegions = 8;

inline std::vector<uint8_t> session_input(uint8_t model, const MemoryPlan& plan,
                                          const std::vector<uint8_t>& script) {
  Writer w;
  w.put<uint8_t>(model);
  w.put<uint8_t>(kSessionFixCrc);
  for (uint32_t c = 0; c < kChannels; ++c) w.put<uint64_t>(plan.channel_bytes[c]);
  w.put<uint64_t>(plan.io.base);
  w.put<uint64_t>(plan.io.bytes);
  w.put<uint64_t>(plan.io.base);
  w.put<uint32_t>(plan.io.ids_offset);
  w.put<uint32_t>(plan.io.argmax_offset);
  w.put<uint32_t>(plan.io.logits_offset);
  w.put<uint32_t>(plan.io.bytes);
  w.put<uint32_t>(plan.vocab_size);
  w.put<uint32_t>(plan.max_length);
  w.put<uint32_t>(plan.fingerprint());
  w.put<uint64_t>(plan.weights_bytes);
  for (uint32_t c = 0; c < kChannels; ++c) {
    w.put<uint32_t>(uint32_t(plan.weights_bytes));
    w.put<uint32_t>(0);  // replaced by the true CRC (kSessionFixCrc)
    w.put<uint8_t>(0);
  }
  std::vector<const Region*> kv;
  for (const Region& r : plan.regions)
    if (r.kind == RegionKind::KvCache) kv.push_back(&r);
  w.put<uint8_t>(uint8_t(kv.size()));
  for (const Region* r : kv) {
    w.put<uint64_t>(r->base);
    w.put<uint32_t>(r->row_bytes);
    w.put<uint32_t>(r->rows);
    w.put<uint32_t>(r->cols);
  }
  w.bytes(script);
  return w.out;
}

}  // namespace hyperdex::fuzz
