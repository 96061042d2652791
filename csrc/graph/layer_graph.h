// The layer graph: what a model computes, written once.
//
// From a ModelSpec (the architecture's traits and sizes) and the passes, build_graph()
// lists the weights the device streams, in stream order, and the steps of the program
// that read them. Everything downstream reads this one description:
//   * the memory plan (mapper/) places `weights` in HBM in this order;
//   * the instruction generator (instgen/) lowers `steps` onto the ISA;
//   * model_tensors() (the unfused graph's weights) gives the converter the canonical
//     tensors with their shapes, and sharding the rule that splits each over N devices;
//   * the cost model and estimate() price the programs instgen makes from it.
// A new architecture made of known traits is a new ModelSpec, not new code here
// (docs/architecture.md, "Adding an architecture").
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "spec/model_spec.h"
#include "spec/passes.h"

namespace hyperdex::graph {

// How a canonical tensor is split over a ring of devices (tensor parallelism,
// hyperdex/tools/sharding.py applies it; shard_spec() gives the shares' sizes).
enum class Split : uint8_t {
  Replicated = 0,    // every device holds all of it
  QHeadRows = 1,     // rows in blocks of head_dim, by the device's query heads
  KvHeadRows = 2,    // rows in blocks of head_dim, by the device's KV heads
  QHeadColumns = 3,  // columns in blocks of head_dim, by query heads (row-parallel)
  FfnRows = 4,       // rows, by the device's share of the intermediate size
  FfnColumns = 5,    // columns, by that share (row-parallel)
  VocabRows = 6,     // rows, by the device's share of the vocabulary
};
const char* split_name(Split s);

enum class WeightKind : uint8_t {
  Matrix = 0,     // [rows, cols] fp16 (quantized when `quantize` and the spec says so)
  Vector = 1,     // [rows] fp16 parameters (norm gains, biases)
  RopeTable = 2,  // a rotary table: rows = positions, made by the compiler (two with a
                  // local one: "rope_table" and "rope_table_local")
};

// One region of weights the programs stream: canonical tensors concatenated by rows.
struct Weight {
  std::string name;
  WeightKind kind = WeightKind::Matrix;
  uint32_t rows = 0, cols = 0;  // a vector: rows = its length, cols = 0
  std::vector<std::string> sources;
  Split split = Split::Replicated;  // of each source (fused regions: their sources')
  bool quantize = false;            // a projection the spec's weight format applies to
  // > 0: the experts of a mixture, rows/experts each, their sources in expert order (the
  // memory plan gives each a block that starts on channel 0).
  uint32_t experts = 0;
};

// A canonical tensor (hyperdex_model.bin name, docs/formats.md).
struct Tensor {
  std::string name;
  std::vector<uint32_t> shape;
  Split split = Split::Replicated;
  bool quantize = false;
};

// The on-chip activation buffers a step reads or writes (instgen sizes them).
enum class Buf : uint8_t {
  None = 0,
  X,    // the residual stream [hidden]
  Y,    // a normed copy of it [max(hidden, embed_dim)]
  Qkv,  // q | k | v
  A,    // attention output [heads * head_dim]
  F1,   // MLP hidden (a gated MLP: gate | up in one row)
  Z,    // OPT's projected embedding [embed_dim]
  R,    // a mixture's router: fp32 logits [experts], then the picks (int32 expert, fp32 weight)
  M,    // the sum of the picked experts' outputs [hidden]
};
// A buffer, `elems` elements into its row.
struct Slot {
  Buf buf = Buf::None;
  uint32_t elems = 0;
};

enum class StepKind : uint8_t {
  EmbedTokens,     // dst = tok_embd[ids] * embed_scale
  EmbedPositions,  // dst += pos_embd[position + learned_pos_offset]
  Norm,            // dst = norm(src) over groups of `group` (0: n) elements; weight.{weight,bias}
  Linear,          // dst = act(src . W^T + bias); W = `weight` (bias: weight + ".bias")
  GatedMlp,        // dst = act(src . Wg^T + bg) * (src . Wu^T + bu): `weight` holds gate | up rows
  Mul,             // dst = dst * src (an unfused gated MLP's product)
  AddLinear,       // X += src . W^T + bias (an all-reduce of partial sums on a ring)
  ReduceLinear,    // dst = src . W^T + bias, summed over the ring (a row-parallel branch
                   // whose output is normed before it is added)
  Add,             // dst += src
  Clip,            // dst = clamp(dst, -value, value)
  Rope,            // rotate `n` heads of dst in place
  KvStore,         // this layer's K/V cache rows = k, v (`dst` = k, `src` = v)
  Attention,       // dst = attention of q = src over this layer's cache (window `n`)
  Head,            // fp32 logits of src (weight: "output" or the tied "tok_embd")
  // A mixture of experts (R's logits and picks are fp32/int32: instgen places them).
  Router,          // R's logits = src . W^T in fp32 (n experts, k inputs)
  TopK,            // R's picks = the k largest of softmax(R's logits) over n experts
  ExpertGatedMlp,  // GatedMlp with the expert `pick` chose (gate | up rows per expert)
  ExpertLinear,    // Linear with the expert `pick` chose (an unfused gate or up projection)
  ExpertDown,      // dst (+)= pick's weight * (src . W_e^T): pick 0 writes, later picks add
  AddReduced,      // X += src, summed over the ring first (the experts' partial sums)
};

struct Step {
  StepKind kind = StepKind::Linear;
  std::string weight;  // region name (Norm: the prefix of .weight/.bias; attention: the layer's)
  Slot dst, src;
  uint32_t n = 0;      // output features / width / heads / window
  uint32_t k = 0;      // input features
  uint32_t group = 0;  // Norm: elements per normalised group (0: all n)
  uint32_t count = 0;  // Norm: the ring-wide element count its statistics divide by (0: n,
                       // statistics local); qk_norm_whole on a shard
  uint32_t layer = 0;
  uint32_t experts = 0;       // expert steps: the mixture's expert count
  uint32_t pick = 0;          // expert steps: which of the token's picks (0 .. k-1)
  bool renormalize = false;   // TopK: the picks' weights divided by their sum
  ActKind act = ActKind::None;
  float value = 0.0f;  // Clip: the bound; Head: the logit scale; Attention: the soft-cap
  float cap = 0.0f;    // Head: the final logits' soft-cap
};

struct Graph {
  std::vector<Weight> weights;  // stream order (the memory plan's order)
  std::vector<Step> steps;      // program order

  const Weight* find(const std::string& name) const;
};

// The graph of `spec` (a whole model or one device's shard_spec()) under `passes`
// (which decide the fused regions). Validates the spec.
Graph build_graph(const ModelSpec& spec, const PassOptions& passes);

// The canonical tensors of `spec`: the weights of its unfused graph, one per source,
// without the tied LM head and the compiler-made rope table. Their order is stream order.
std::vector<Tensor> model_tensors(const ModelSpec& spec);

// The rotary table of `table` (1: "rope_table", 2: "rope_table_local").
const char* rope_table_name(uint32_t table);

}  // namespace hyperdex::graph
