// What the compiler's back end needs to know about a model: the shape of every
// layer and the few traits that differ between architectures. The Python side
// fills it from hyperdex_config.json (which the architecture table produced);
// nothing in the core knows an architecture by name.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace hyperdex {

enum class NormKind : uint8_t { LayerNorm = 0, RmsNorm = 1 };
// Activations the vector/matrix engines implement (docs/isa.md).
enum class ActKind : uint8_t { None = 0, Relu = 1, Gelu = 2, GeluTanh = 3, Silu = 4, Clip = 5 };
enum class PositionKind : uint8_t { None = 0, Learned = 1, Rope = 2 };
// Neox: rotate halves (x[i], x[i + rot/2]); Gptj: rotate adjacent pairs (x[2i], x[2i+1]).
enum class RopeStyle : uint8_t { Neox = 0, Gptj = 1 };

struct ModelSpec {
  std::string architecture;  // informational (the HF name)
  uint32_t vocab_size = 0;
  uint32_t hidden_size = 0;
  uint32_t num_layers = 0;
  uint32_t num_heads = 0;
  uint32_t num_kv_heads = 0;
  uint32_t head_dim = 0;
  uint32_t intermediate_size = 0;

  NormKind norm = NormKind::LayerNorm;
  float norm_eps = 1e-5f;
  bool norm_bias = true;     // LayerNorm has a beta
  bool pre_norm = true;      // false: OPT-350m style post-norm residual blocks
  bool final_norm = true;    // a norm before the LM head

  ActKind act = ActKind::GeluTanh;
  bool gated_mlp = false;    // act(gate(x)) * up(x), then down

  // Mixture of experts (Mixtral, Qwen3-MoE, OLMoE): with num_experts > 0 every layer's MLP is
  // num_experts gated experts of intermediate_size each (no biases), of which a router (a
  // linear map to num_experts logits, softmax in fp32) picks experts_per_token per token,
  // weighted by their probabilities (divided by the chosen ones' sum with
  // router_renormalize). On a ring each device holds its share of every expert.
  uint32_t num_experts = 0;
  uint32_t experts_per_token = 0;
  bool router_renormalize = false;

  // Attention and MLP both read the layer's input and add to it (GPT-J, GPT-NeoX,
  // Falcon, Phi, Cohere): x += attn(norm(x)) + mlp(norm'(x)). With shared_norm the MLP
  // reads the attention's normed input (one norm per layer), else its own ffn_norm.
  bool parallel_block = false;
  bool shared_norm = false;
  // Per-head norm (this model's norm kind) of q and k after their projections, with
  // per-head weights [heads * head_dim] (StableLM, Cohere, Phi); qk_norm_bias: a beta too.
  bool qk_norm = false;
  bool qk_norm_bias = false;
  // q/k norms over the whole projection (OLMo 2, OLMoE), not per head: an RMS norm whose
  // statistics a ring sums (NORM RING_STATS). On a shard, the elements each divides by.
  bool qk_norm_whole = false;
  uint32_t q_norm_count = 0, k_norm_count = 0;  // 0: the local width
  float clip_qkv = 0.0f;     // > 0: q, k, v clamped to [-clip_qkv, clip_qkv] (OLMo)
  // Pre-norm blocks: whether a branch reads norm(x) (false: x itself, OLMo 2), and whether
  // its output is normed before it is added (Gemma 2/3's sandwich, OLMo 2, EXAONE 4).
  bool branch_input_norm = true;
  bool branch_output_norm = false;

  bool qkv_bias = false;
  bool attn_out_bias = false;
  bool mlp_bias = false;
  bool lm_head_bias = false;

  PositionKind positions = PositionKind::Learned;
  uint32_t learned_pos_rows = 0;   // rows of the learned position table
  uint32_t learned_pos_offset = 0; // OPT adds 2 to positions
  RopeStyle rope_style = RopeStyle::Neox;
  uint32_t rope_dim = 0;           // rotated dims per head (<= head_dim)
  std::vector<float> rope_inv_freq;  // rope_dim / 2 entries (scaling already applied)
  float rope_attention_factor = 1.0f;  // multiplies cos and sin (YaRN-style scaling)
  // Per layer: 0 no rotary (NoPE layers: SmolLM3, Cohere 2's global ones), 1 the rotary
  // table, 2 the local table (Gemma 3's sliding layers, their own base). Empty: all 1.
  std::vector<uint32_t> layer_rope;
  std::vector<float> rope_local_inv_freq;  // the local table's (rope_dim / 2 entries)

  float attn_scale = 0.0f;         // 0: 1/sqrt(head_dim)
  uint32_t sliding_window = 0;     // 0: full causal attention
  // Per layer (empty: sliding_window for every layer): that layer's window, 0 = full.
  std::vector<uint32_t> layer_windows;
  float logit_scale = 1.0f;        // multiplies the fp32 logits (Cohere)
  float attn_softcap = 0.0f;       // > 0: scores = cap * tanh(scores / cap) (Gemma 2)
  float final_logit_softcap = 0.0f;  // > 0: logits = cap * tanh(logits / cap) (Gemma 2)
  float embed_scale = 1.0f;        // multiplies token embeddings (Gemma)
  bool tie_word_embeddings = false;
  uint32_t embed_dim = 0;          // OPT word_embed_proj_dim; 0 or == hidden: no projection
  // Rows of the LM head on this device: a tensor-parallel shard holds a slice of the
  // vocabulary (shard_spec) while its embedding table keeps all vocab_size rows. 0: vocab_size.
  uint32_t lm_head_rows = 0;

  // Quantized linear weights (ISA v3, GPTQ-style; docs/formats.md): 16 = fp16, else 4 or
  // 8-bit codes per group of `group_size` input columns with one fp16 scale each. The
  // attention and MLP projections are quantized; the LM head too with quantize_lm_head
  // (with tied embeddings it then gets a region of its own; the table stays fp16).
  uint32_t weight_bits = 16;
  uint32_t group_size = 0;      // input columns per scale; 0: one group per row (all inputs)
  bool quantize_lm_head = false;

  bool moe() const { return num_experts > 0; }
  bool has_projection() const { return embed_dim != 0 && embed_dim != hidden_size; }
  uint32_t token_embed_dim() const { return has_projection() ? embed_dim : hidden_size; }
  uint32_t logits_size() const { return lm_head_rows ? lm_head_rows : vocab_size; }
  float effective_attn_scale() const;
  bool quantized() const { return weight_bits != 16; }
  bool quantized_head() const { return quantized() && quantize_lm_head; }
  // The LM head streams a region "output" of its own (else the embedding table).
  bool separate_head() const { return !tie_word_embeddings || quantized_head(); }
  // The group size of a quantized matrix with `in` input columns.
  uint32_t group_for(uint32_t in) const { return group_size ? group_size : in; }
  uint32_t window(uint32_t layer) const {
    return layer_windows.empty() ? sliding_window : layer_windows.at(layer);
  }
  // The rotary table layer `layer` uses (0: none).
  uint32_t rope_of(uint32_t layer) const {
    if (positions != PositionKind::Rope) return 0;
    return layer_rope.empty() ? 1 : layer_rope.at(layer);
  }
  bool uses_local_rope() const;
  // Throws SpecError naming the first inconsistent field.
  void validate() const;
};

// A device design point (the data of a preset file, hyperdex/presets/*.json).
struct DevicePreset {
  std::string name;
  uint32_t hbm_channels = 32;
  uint64_t hbm_channel_bytes = 512ull << 20;  // capacity of one pseudo-channel
  double hbm_bandwidth_gbps = 460.0;          // all channels together, GB/s
  double clock_mhz = 220.0;
  uint64_t lmem_bytes = 32ull << 20;          // on-chip activation memory
  uint32_t mac_trees = 32;                    // matrix engine: trees x lanes
  uint32_t mac_lanes = 16;
  uint32_t vector_lanes = 16;

  // What the cost model needs beyond the sizes (docs/cost-model.md); each preset file
  // gives the source of every number.
  double hbm_efficiency = 0.92;            // share of peak a long sequential stream sustains
  double hbm_latency_ns = 250.0;           // from a stream's request to its first data
  uint64_t weight_buffer_bytes = 1ull << 20;  // on-chip buffer a PREFETCH fills ahead of its MATMUL
  uint32_t issue_cycles = 4;               // controller: fetch, decode, dispatch of one instruction
  uint32_t chain_cycles = 16;              // a result's hand-off to the instruction waiting on it
  uint32_t mac_pipeline_cycles = 32;       // matrix engine fill + drain (tree depth, epilogue)
  uint32_t vector_pipeline_cycles = 16;    // one vector pass's latency (incl. a reduction)
  double ring_bandwidth_gbps = 12.5;       // device-to-device link, one direction
  double ring_latency_ns = 1000.0;         // one hop of the ring, per transfer
  double run_overhead_us = 40.0;           // per run, outside the program: start, token I/O, host

  uint64_t hbm_bytes() const { return uint64_t(hbm_channels) * hbm_channel_bytes; }
  double cycle_ns() const { return 1000.0 / clock_mhz; }
  void validate() const;
};

}  // namespace hyperdex
