// Small specs and presets shared by the core's tests.
#pragma once
#include <cmath>
#include <cstdint>
#include <vector>

#include "emu/kernels.h"
#include "spec/model_spec.h"

namespace hyperdex::testing {

inline ModelSpec tiny_llama() {
  ModelSpec s;
  s.architecture = "LlamaForCausalLM";
  s.vocab_size = 300;
  s.hidden_size = 64;
  s.num_layers = 2;
  s.num_heads = 4;
  s.num_kv_heads = 2;
  s.head_dim = 16;
  s.intermediate_size = 96;
  s.norm = NormKind::RmsNorm;
  s.norm_bias = false;
  s.act = ActKind::Silu;
  s.gated_mlp = true;
  s.positions = PositionKind::Rope;
  s.rope_dim = 16;
  for (uint32_t i = 0; i < 8; ++i) s.rope_inv_freq.push_back(float(std::pow(10000.0, -double(2 * i) / 16)));
  s.tie_word_embeddings = true;
  s.embed_dim = 64;
  return s;
}

inline ModelSpec tiny_gpt2() {
  ModelSpec s;
  s.architecture = "GPT2LMHeadModel";
  s.vocab_size = 257;
  s.hidden_size = 48;
  s.num_layers = 3;
  s.num_heads = 4;
  s.num_kv_heads = 4;
  s.head_dim = 12;
  s.intermediate_size = 192;
  s.act = ActKind::GeluTanh;
  s.qkv_bias = s.attn_out_bias = s.mlp_bias = true;
  s.positions = PositionKind::Learned;
  s.learned_pos_rows = 64;
  s.tie_word_embeddings = true;
  s.embed_dim = 48;
  return s;
}

inline DevicePreset small_preset(uint32_t channels = 4, uint64_t channel_bytes = 64ull << 20) {
  DevicePreset p;
  p.name = "test";
  p.hbm_channels = channels;
  p.hbm_channel_bytes = channel_bytes;
  p.lmem_bytes = 8ull << 20;
  return p;
}

// Host memory striped over pseudo-channels the way the emulator lays a region out:
// m rows of row_bytes, row r in channel r % channels at base + (r / channels) * row_bytes,
// each channel 64-byte aligned. The caller fills the rows.
class StripedBuffer {
 public:
  StripedBuffer(uint64_t row_bytes, uint64_t base, size_t m, uint32_t channels) {
    const size_t per_channel = (m + channels - 1) / channels;
    storage_.resize(channels);
    ptrs_.resize(channels);
    for (uint32_t c = 0; c < channels; ++c) {
      storage_[c].assign(base + per_channel * row_bytes + 64, 0);
      const auto p = reinterpret_cast<uintptr_t>(storage_[c].data());
      ptrs_[c] = storage_[c].data() + ((64 - p % 64) % 64);
    }
    rows_.channels = ptrs_.data();
    rows_.num_channels = channels;
    rows_.base = base;
    rows_.row_bytes = row_bytes;
  }
  StripedBuffer(const StripedBuffer&) = delete;  // rows_ points into this object
  StripedBuffer& operator=(const StripedBuffer&) = delete;
  const emu::StripedRows& rows() const { return rows_; }
  uint8_t* row(size_t r) { return rows_.row(r); }

 private:
  std::vector<std::vector<uint8_t>> storage_;
  std::vector<uint8_t*> ptrs_;
  emu::StripedRows rows_;
};

}  // namespace hyperdex::testing
