// The layer graph: one description of a model that the plan, the programs and the
// converter's tensor list all come from.
#include <gtest/gtest.h>

#include <algorithm>
#include <map>
#include <set>

#include "common/error.h"
#include "graph/layer_graph.h"
#include "instgen/instgen.h"
#include "mapper/memory_plan.h"
#include "test_util.h"

using namespace hyperdex;
using namespace hyperdex::testing;

namespace {

std::map<std::string, graph::Tensor> by_name(const ModelSpec& s) {
  std::map<std::string, graph::Tensor> out;
  for (auto& t : graph::model_tensors(s)) out[t.name] = t;
  return out;
}

// Index of the first step of `kind` on `weight` (steps.size() if none).
size_t step_index(const graph::Graph& g, graph::StepKind kind, const std::string& weight) {
  for (size_t i = 0; i < g.steps.size(); ++i)
    if (g.steps[i].kind == kind && g.steps[i].weight == weight) return i;
  return g.steps.size();
}

ModelSpec parallel_neox() {  // GPT-NeoX: parallel block off two norms, partial rotary
  ModelSpec s = tiny_gpt2();
  s.positions = PositionKind::Rope;
  s.rope_dim = 6;
  s.rope_inv_freq = {1.0f, 0.1f, 0.01f};
  s.parallel_block = true;
  return s;
}

}  // namespace

TEST(LayerGraph, TensorsHaveTheShapesAndSplitsOfTheSpec) {
  const auto t = by_name(tiny_llama());
  EXPECT_EQ(t.at("blk.0.attn_q.weight").shape, (std::vector<uint32_t>{64, 64}));
  EXPECT_EQ(t.at("blk.0.attn_k.weight").shape, (std::vector<uint32_t>{32, 64}));
  EXPECT_EQ(t.at("blk.0.attn_k.weight").split, graph::Split::KvHeadRows);
  EXPECT_EQ(t.at("blk.1.attn_output.weight").split, graph::Split::QHeadColumns);
  EXPECT_EQ(t.at("blk.1.ffn_gate.weight").split, graph::Split::FfnRows);
  EXPECT_EQ(t.at("blk.1.ffn_down.weight").split, graph::Split::FfnColumns);
  EXPECT_EQ(t.at("output_norm.weight").shape, (std::vector<uint32_t>{64}));
  EXPECT_TRUE(t.at("blk.0.ffn_up.weight").quantize);
  EXPECT_FALSE(t.at("tok_embd.weight").quantize);
  EXPECT_EQ(t.count("output.weight"), 0u) << "tied: no LM head of its own";
  EXPECT_EQ(t.count("rope_table"), 0u) << "the compiler makes the rotary table";
  EXPECT_EQ(t.count("blk.0.attn_norm.bias"), 0u) << "RMSNorm has no beta";
  // Biases of row-parallel projections are added once (replicated); the LM head's is split.
  ModelSpec g = tiny_gpt2();
  g.tie_word_embeddings = false;
  g.lm_head_bias = true;
  const auto u = by_name(g);
  EXPECT_EQ(u.at("blk.0.attn_output.bias").split, graph::Split::Replicated);
  EXPECT_EQ(u.at("blk.0.ffn_up.bias").split, graph::Split::FfnRows);
  EXPECT_EQ(u.at("output.bias").split, graph::Split::VocabRows);
  EXPECT_EQ(u.at("output.weight").shape, (std::vector<uint32_t>{257, 48}));
}

TEST(LayerGraph, ThePlanHoldsTheGraphsWeightsInItsOrder) {
  for (const ModelSpec& s : {tiny_llama(), tiny_gpt2(), parallel_neox()}) {
    const graph::Graph g = graph::build_graph(s, PassOptions{});
    const MemoryPlan plan = plan_memory(s, small_preset(), 64, 8);
    std::vector<std::string> weights;
    for (const Region& r : plan.regions)
      if (r.kind != RegionKind::KvCache) weights.push_back(r.name);
    ASSERT_EQ(weights.size(), g.weights.size()) << s.architecture;
    for (size_t i = 0; i < weights.size(); ++i) EXPECT_EQ(weights[i], g.weights[i].name);
  }
}

TEST(LayerGraph, ParallelBlockReadsTheLayerInputTwice) {
  const ModelSpec s = parallel_neox();
  const graph::Graph g = graph::build_graph(s, PassOptions{});
  // The MLP's norm and up projection run before the attention output changes x.
  const size_t ffn_norm = step_index(g, graph::StepKind::Norm, "blk.0.ffn_norm");
  const size_t up = step_index(g, graph::StepKind::Linear, "blk.0.ffn_up");
  const size_t attn_out = step_index(g, graph::StepKind::AddLinear, "blk.0.attn_output");
  const size_t down = step_index(g, graph::StepKind::AddLinear, "blk.0.ffn_down");
  ASSERT_LT(down, g.steps.size());
  EXPECT_LT(ffn_norm, up);
  EXPECT_LT(up, attn_out);
  EXPECT_LT(attn_out, down);
  EXPECT_EQ(g.steps[ffn_norm].src.buf, graph::Buf::X);
  // One shared norm (GPT-J, Falcon-7B, Phi): no ffn_norm at all; the MLP reads Y.
  ModelSpec shared = s;
  shared.shared_norm = true;
  const graph::Graph h = graph::build_graph(shared, PassOptions{});
  EXPECT_EQ(h.find("blk.0.ffn_norm.weight"), nullptr);
  EXPECT_EQ(h.steps[step_index(h, graph::StepKind::Linear, "blk.0.ffn_up")].src.buf,
            graph::Buf::Y);
}

TEST(LayerGraph, QkNormClipWindowsAndLogitScaleBecomeSteps) {
  ModelSpec s = tiny_llama();
  s.qk_norm = true;
  s.clip_qkv = 8.0f;
  s.layer_windows = {4, 0};
  s.logit_scale = 0.25f;
  const graph::Graph g = graph::build_graph(s, PassOptions{});
  const size_t q = step_index(g, graph::StepKind::Norm, "blk.0.attn_q_norm");
  const size_t k = step_index(g, graph::StepKind::Norm, "blk.0.attn_k_norm");
  const size_t rope = step_index(g, graph::StepKind::Rope, "rope_table");
  ASSERT_LT(k, g.steps.size());
  EXPECT_LT(q, rope);
  EXPECT_LT(k, rope);
  EXPECT_EQ(g.steps[q].group, 16u);  // per head
  EXPECT_EQ(g.steps[q].n, 64u);
  EXPECT_EQ(g.steps[k].n, 32u);
  EXPECT_EQ(g.steps[k].dst.elems, 64u);  // k starts after q
  const auto clip = std::find_if(g.steps.begin(), g.steps.end(),
                                 [](const graph::Step& st) { return st.kind == graph::StepKind::Clip; });
  ASSERT_NE(clip, g.steps.end());
  EXPECT_FLOAT_EQ(clip->value, 8.0f);
  std::vector<uint32_t> windows;
  for (const auto& st : g.steps)
    if (st.kind == graph::StepKind::Attention) windows.push_back(st.n);
  EXPECT_EQ(windows, (std::vector<uint32_t>{4, 0}));
  EXPECT_FLOAT_EQ(g.steps.back().value, 0.25f);
  const auto t = by_name(s);
  EXPECT_EQ(t.at("blk.1.attn_k_norm.weight").split, graph::Split::KvHeadRows);
  EXPECT_EQ(t.at("blk.1.attn_q_norm.weight").shape, (std::vector<uint32_t>{64}));
}

TEST(LayerGraph, BadSpecsAreRefusedNamingTheField) {
  ModelSpec s = tiny_llama();
  s.layer_windows = {4};
  EXPECT_THROW(graph::build_graph(s, PassOptions{}), SpecError);
  s = tiny_llama();
  s.shared_norm = true;
  EXPECT_THROW(graph::build_graph(s, PassOptions{}), SpecError);
  s = tiny_llama();
  s.logit_scale = 0.0f;
  EXPECT_THROW(graph::build_graph(s, PassOptions{}), SpecError);
  s = tiny_llama();
  s.qk_norm_bias = true;  // RMSNorm has no beta
  s.qk_norm = true;
  EXPECT_THROW(graph::build_graph(s, PassOptions{}), SpecError);
}
