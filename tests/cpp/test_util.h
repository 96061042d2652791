// Small specs and presets shared by the core's tests.
#pragma once
#include <cmath>

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

}  // namespace hyperdex::testing
