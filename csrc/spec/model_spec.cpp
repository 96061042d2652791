#include "spec/model_spec.h"

#include <cmath>

#include "common/error.h"
#include "isa/qmatrix.h"

namespace hyperdex {
namespace {

void require(bool ok, const std::string& what) {
  if (!ok) throw SpecError("invalid model spec: " + what);
}

}  // namespace

bool ModelSpec::uses_local_rope() const {
  for (uint32_t t : layer_rope)
    if (t == 2) return true;
  return false;
}

float ModelSpec::effective_attn_scale() const {
  return attn_scale != 0.0f ? attn_scale : 1.0f / std::sqrt(float(head_dim));
}

void ModelSpec::validate() const {
  require(vocab_size > 0, "vocab_size must be > 0");
  require(hidden_size > 0, "hidden_size must be > 0");
  require(num_layers > 0, "num_layers must be > 0");
  require(num_heads > 0 && head_dim > 0, "num_heads and head_dim must be > 0");
  require(num_kv_heads > 0 && num_heads % num_kv_heads == 0,
          "num_heads (" + std::to_string(num_heads) + ") must be a multiple of num_kv_heads (" +
              std::to_string(num_kv_heads) + ")");
  require(intermediate_size > 0, "intermediate_size must be > 0");
  if (moe()) {
    require(experts_per_token >= 1 && experts_per_token <= num_experts,
            "experts_per_token must be in [1, num_experts = " + std::to_string(num_experts) +
                "], not " + std::to_string(experts_per_token));
    require(gated_mlp && !mlp_bias, "experts are gated MLPs without biases");
    require(!parallel_block && !branch_output_norm && pre_norm,
            "a mixture of experts is built for sequential pre-norm blocks without output norms");
  } else {
    require(experts_per_token == 0 && !router_renormalize,
            "experts_per_token and router_renormalize need num_experts > 0");
  }
  require(norm_eps > 0.0f, "norm_eps must be > 0");
  if (positions == PositionKind::Learned)
    require(learned_pos_rows > 0, "learned positions need learned_pos_rows > 0");
  if (positions == PositionKind::Rope) {
    require(rope_dim > 0 && rope_dim <= head_dim && rope_dim % 2 == 0,
            "rope_dim must be even and in (0, head_dim]");
    require(rope_inv_freq.size() == rope_dim / 2,
            "rope_inv_freq must have rope_dim/2 = " + std::to_string(rope_dim / 2) + " entries");
  }
  require(layer_windows.empty() || layer_windows.size() == num_layers,
          "layer_windows must be empty or have one entry per layer (" +
              std::to_string(num_layers) + ")");
  require(std::isfinite(clip_qkv) && clip_qkv >= 0.0f, "clip_qkv must be >= 0 (0: no clamp)");
  require(std::isfinite(logit_scale) && logit_scale > 0.0f, "logit_scale must be > 0");
  require(!shared_norm || parallel_block, "shared_norm needs parallel_block");
  require(!branch_output_norm || (pre_norm && !parallel_block),
          "branch_output_norm needs sequential pre-norm blocks");
  require(branch_input_norm || branch_output_norm,
          "a block without input norms needs branch_output_norm");
  require(std::isfinite(attn_softcap) && attn_softcap >= 0.0f &&
              std::isfinite(final_logit_softcap) && final_logit_softcap >= 0.0f,
          "soft-caps must be >= 0 (0: none)");
  require(layer_rope.empty() || layer_rope.size() == num_layers,
          "layer_rope must be empty or have one entry per layer (" + std::to_string(num_layers) +
              ")");
  for (uint32_t t : layer_rope)
    require(t <= 2 && (t == 0 || positions == PositionKind::Rope),
            "layer_rope entries are 0 (none), 1 or 2 (rotary tables of a RoPE model)");
  if (uses_local_rope())
    require(rope_local_inv_freq.size() == rope_dim / 2,
            "rope_local_inv_freq must have rope_dim/2 = " + std::to_string(rope_dim / 2) +
                " entries");
  require(pre_norm || !parallel_block, "a parallel block is pre-norm");
  require(!qk_norm_bias || (qk_norm && norm == NormKind::LayerNorm),
          "qk_norm_bias needs qk_norm with LayerNorm");
  require(!qk_norm_whole || (qk_norm && norm == NormKind::RmsNorm && !qk_norm_bias),
          "qk_norm_whole needs qk_norm with RMSNorm and no beta");
  require(weight_bits == 16 || weight_bits == 8 || weight_bits == 4,
          "weight_bits must be 16 (fp16), 8 or 4, not " + std::to_string(weight_bits));
  require(quantized() || (group_size == 0 && !quantize_lm_head),
          "group_size and quantize_lm_head need weight_bits 4 or 8");
  if (quantized()) {
    // Every quantized matrix must have a row format the device can stream.
    auto check = [&](const char* what, uint32_t in) {
      const std::string why = isa::QRowFormat{weight_bits, group_for(in), in}.check();
      require(why.empty(), std::string(what) + " (" + std::to_string(in) + " inputs): " + why);
    };
    check("attention and MLP input projections", hidden_size);
    check("the attention output projection", num_heads * head_dim);
    check("the MLP down projection", intermediate_size);
    if (quantize_lm_head) check("the LM head", token_embed_dim());
  }
}

void DevicePreset::validate() const {
  auto req = [&](bool ok, const std::string& what) {
    if (!ok) throw SpecError("invalid device preset '" + name + "': " + what);
  };
  req(hbm_channels > 0, "hbm_channels must be > 0");
  req(hbm_channel_bytes > 0, "hbm_channel_bytes must be > 0");
  req(hbm_bandwidth_gbps > 0, "hbm_bandwidth_gbps must be > 0");
  req(clock_mhz > 0, "clock_mhz must be > 0");
  req(lmem_bytes > 0, "lmem_bytes must be > 0");
  req(mac_trees > 0 && mac_lanes > 0 && vector_lanes > 0, "engine sizes must be > 0");
  req(hbm_efficiency > 0 && hbm_efficiency <= 1, "hbm_efficiency must be in (0, 1]");
  req(hbm_latency_ns >= 0 && ring_latency_ns >= 0 && run_overhead_us >= 0,
      "latencies and overheads must be >= 0");
  req(ring_bandwidth_gbps > 0, "ring_bandwidth_gbps must be > 0");
}

}  // namespace hyperdex
