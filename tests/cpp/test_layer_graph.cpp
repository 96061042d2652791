// The layer graph: one description of a model that the plan, the programs and the
// converter's tensor list all come from.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>
#include <map>
#include <set>

#include "common/error.h"
#include "graph/layer_graph.h"
#include "instgen/instgen.h"
#include "mapper/memory_plan.h"
#include "mapper/param_writer.h"
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

// Gemma 2/3's sandwich: every branch normed before and after (a bias on each projection
// that ends a branch, so the ring's ALLREDUCE has one to add).
ModelSpec sandwich() {
  ModelSpec s = tiny_llama();
  s.branch_output_norm = true;
  s.attn_out_bias = true;
  s.mlp_bias = true;
  return s;
}

// The local table's frequencies: base 10 instead of 10000.
std::vector<float> local_inv_freq(uint32_t rope_dim) {
  std::vector<float> f;
  for (uint32_t i = 0; i < rope_dim / 2; ++i)
    f.push_back(float(std::pow(10.0, -double(2 * i) / rope_dim)));
  return f;
}

// The programs of `s` on `devices` (a shard_spec share and its plan), with `passes`.
struct Compiled {
  ModelSpec shard;
  MemoryPlan plan;
  Programs programs;
};
Compiled compile(const ModelSpec& s, uint32_t devices, const PassOptions& passes = {}) {
  Compiled c;
  c.shard = shard_spec(s, devices);
  c.plan = plan_memory(c.shard, small_preset(), 64, 8, passes);
  c.programs = generate_programs(c.shard, c.plan, passes, devices);
  return c;
}

// A program's instructions without the PREFETCHes (layer reordering only moves streams).
std::vector<isa::Instruction> without_prefetch(const isa::Program& p) {
  std::vector<isa::Instruction> out;
  for (const auto& in : p.code)
    if (in.op != isa::Opcode::Prefetch) out.push_back(in);
  return out;
}

bool same_operand(const isa::Operand& a, const isa::Operand& b) {
  return a.space == b.space && a.offset == b.offset && a.stride == b.stride;
}
bool same_region(const isa::HbmRegion& a, const isa::HbmRegion& b) {
  return a.base == b.base && a.row_bytes == b.row_bytes && a.rows == b.rows;
}

// Index of the first instruction of `op` streaming region `w0` (code.size() if none).
size_t find_op(const std::vector<isa::Instruction>& code, isa::Opcode op, const isa::HbmRegion& w0) {
  for (size_t i = 0; i < code.size(); ++i)
    if (code[i].op == op && same_region(code[i].w0, w0)) return i;
  return code.size();
}

size_t count_op(const std::vector<isa::Instruction>& code, isa::Opcode op) {
  return size_t(std::count_if(code.begin(), code.end(),
                              [op](const isa::Instruction& in) { return in.op == op; }));
}

// The SpecError message `fn` throws ("" if none).
template <typename Fn>
std::string spec_error(Fn&& fn) {
  try {
    fn();
  } catch (const SpecError& e) {
    return e.what();
  }
  return "";
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

// branch_output_norm: each branch's row-parallel projection is reduced into Y (ReduceLinear),
// normed there by its post norm, then added to X; no AddLinear is left.
TEST(LayerGraph, BranchOutputNormReducesNormsThenAdds) {
  const ModelSpec s = sandwich();
  const graph::Graph g = graph::build_graph(s, PassOptions{});
  for (uint32_t l = 0; l < s.num_layers; ++l) {
    const std::string b = "blk." + std::to_string(l) + ".";
    struct Branch {
      std::string proj, post;
      graph::Buf src;
      uint32_t k;
    };
    for (const Branch& br : {Branch{b + "attn_output", b + "attn_post_norm", graph::Buf::A, 64},
                             Branch{b + "ffn_down", b + "ffn_post_norm", graph::Buf::F1, 96}}) {
      const size_t i = step_index(g, graph::StepKind::ReduceLinear, br.proj);
      ASSERT_LT(i + 2, g.steps.size()) << br.proj;
      const graph::Step &red = g.steps[i], &norm = g.steps[i + 1], &add = g.steps[i + 2];
      EXPECT_EQ(red.dst.buf, graph::Buf::Y) << br.proj;
      EXPECT_EQ(red.src.buf, br.src) << br.proj;
      EXPECT_EQ(red.n, 64u);
      EXPECT_EQ(red.k, br.k);
      EXPECT_EQ(red.layer, l);
      EXPECT_EQ(norm.kind, graph::StepKind::Norm);
      EXPECT_EQ(norm.weight, br.post);
      EXPECT_EQ(norm.src.buf, graph::Buf::Y);
      EXPECT_EQ(norm.dst.buf, graph::Buf::Y);
      EXPECT_EQ(norm.n, 64u);
      EXPECT_EQ(norm.group, 0u);
      EXPECT_EQ(add.kind, graph::StepKind::Add);
      EXPECT_EQ(add.dst.buf, graph::Buf::X);
      EXPECT_EQ(add.src.buf, graph::Buf::Y);
      EXPECT_EQ(add.n, 64u);
      EXPECT_EQ(step_index(g, graph::StepKind::AddLinear, br.proj), g.steps.size()) << br.proj;
      ASSERT_NE(g.find(br.post + ".weight"), nullptr);
      EXPECT_EQ(g.find(br.post + ".weight")->kind, graph::WeightKind::Vector);
      ASSERT_NE(g.find(br.proj + ".bias"), nullptr);  // added once after the reduction
      EXPECT_EQ(g.find(br.proj + ".bias")->split, graph::Split::Replicated);
    }
    // The input norms stay: the branches read Y.
    EXPECT_LT(step_index(g, graph::StepKind::Norm, b + "attn_norm"), g.steps.size());
    EXPECT_EQ(g.steps[step_index(g, graph::StepKind::Linear, b + "attn_qkv")].src.buf, graph::Buf::Y);
    EXPECT_EQ(g.steps[step_index(g, graph::StepKind::GatedMlp, b + "ffn_gate_up")].src.buf,
              graph::Buf::Y);
  }
  for (const auto& st : g.steps) EXPECT_NE(st.kind, graph::StepKind::AddLinear);
  // Without the trait nothing changes: AddLinear, no post norms.
  const graph::Graph plain = graph::build_graph(tiny_llama(), PassOptions{});
  EXPECT_LT(step_index(plain, graph::StepKind::AddLinear, "blk.0.attn_output"), plain.steps.size());
  EXPECT_EQ(plain.find("blk.0.attn_post_norm.weight"), nullptr);
  for (const auto& st : plain.steps) {
    EXPECT_NE(st.kind, graph::StepKind::ReduceLinear);
    EXPECT_NE(st.kind, graph::StepKind::Add);
  }

  // The checkpoint's tensors: the post norms are replicated [H] vectors after their branch.
  const auto t = by_name(s);
  for (const char* name : {"blk.0.attn_post_norm.weight", "blk.1.ffn_post_norm.weight"}) {
    ASSERT_EQ(t.count(name), 1u) << name;
    EXPECT_EQ(t.at(name).shape, (std::vector<uint32_t>{64})) << name;
    EXPECT_EQ(t.at(name).split, graph::Split::Replicated) << name;
    EXPECT_FALSE(t.at(name).quantize) << name;
  }
  EXPECT_EQ(t.at("blk.0.attn_output.weight").split, graph::Split::QHeadColumns);
  EXPECT_EQ(t.at("blk.0.ffn_down.weight").split, graph::Split::FfnColumns);
  std::vector<std::string> order;
  for (const auto& x : graph::model_tensors(s)) order.push_back(x.name);
  auto pos = [&](const std::string& n) { return std::find(order.begin(), order.end(), n) - order.begin(); };
  EXPECT_LT(pos("blk.0.attn_output.weight"), pos("blk.0.attn_post_norm.weight"));
  EXPECT_LT(pos("blk.0.attn_post_norm.weight"), pos("blk.0.ffn_norm.weight"));
  EXPECT_LT(pos("blk.0.ffn_down.weight"), pos("blk.0.ffn_post_norm.weight"));
  EXPECT_LT(pos("blk.0.ffn_post_norm.weight"), pos("blk.1.attn_norm.weight"));
}

// branch_input_norm = false (OLMo 2, EXAONE 4): no attn_norm / ffn_norm at all; the
// branches read X itself, and only the post norms remain.
TEST(LayerGraph, WithoutInputNormsTheBranchesReadTheResidualStream) {
  ModelSpec s = sandwich();
  s.branch_input_norm = false;
  const graph::Graph g = graph::build_graph(s, PassOptions{});
  for (uint32_t l = 0; l < s.num_layers; ++l) {
    const std::string b = "blk." + std::to_string(l) + ".";
    EXPECT_EQ(g.find(b + "attn_norm.weight"), nullptr);
    EXPECT_EQ(g.find(b + "ffn_norm.weight"), nullptr);
    EXPECT_EQ(step_index(g, graph::StepKind::Norm, b + "attn_norm"), g.steps.size());
    EXPECT_EQ(step_index(g, graph::StepKind::Norm, b + "ffn_norm"), g.steps.size());
    EXPECT_EQ(g.steps[step_index(g, graph::StepKind::Linear, b + "attn_qkv")].src.buf, graph::Buf::X);
    EXPECT_EQ(g.steps[step_index(g, graph::StepKind::GatedMlp, b + "ffn_gate_up")].src.buf,
              graph::Buf::X);
    EXPECT_LT(step_index(g, graph::StepKind::Norm, b + "attn_post_norm"), g.steps.size());
    EXPECT_LT(step_index(g, graph::StepKind::Norm, b + "ffn_post_norm"), g.steps.size());
  }
  size_t norms = 0;
  for (const auto& st : g.steps) norms += st.kind == graph::StepKind::Norm;
  EXPECT_EQ(norms, 2u * s.num_layers + 1);  // two post norms per layer and the final norm
  const auto t = by_name(s);
  EXPECT_EQ(t.count("blk.0.attn_norm.weight"), 0u);
  EXPECT_EQ(t.count("blk.1.ffn_norm.weight"), 0u);
  EXPECT_EQ(t.count("blk.1.attn_post_norm.weight"), 1u);
  // Unfused projections read X too.
  PassOptions unfused;
  unfused.fuse_qkv = unfused.fuse_gate_up = false;
  const graph::Graph u = graph::build_graph(s, unfused);
  for (const char* w : {"blk.0.attn_q", "blk.0.attn_k", "blk.0.attn_v", "blk.0.ffn_gate", "blk.0.ffn_up"})
    EXPECT_EQ(u.steps[step_index(u, graph::StepKind::Linear, w)].src.buf, graph::Buf::X) << w;
}

// The sandwich in the programs: on one device the branch's MATMUL writes Y (bias fused, no
// residual), a NORM by the post norm's gain turns Y into Y, and an ADD puts it on X; on a
// ring the MATMUL writes its partial sum to Y and an ALLREDUCE without HAS_RESIDUAL (with
// the bias, once) sums it in place before the NORM.
TEST(LayerGraph, BranchOutputNormProgramsOnOneAndTwoDevices) {
  for (const bool input_norm : {true, false})
    for (const uint32_t devices : {1u, 2u})
      for (const bool fused : {true, false}) {
        ModelSpec s = sandwich();
        s.branch_input_norm = input_norm;
        PassOptions passes;
        passes.fuse_epilogue = fused;
        const Compiled c = compile(s, devices, passes);
        const std::string what = "input_norm=" + std::to_string(input_norm) +
                                 " devices=" + std::to_string(devices) + " fused=" + std::to_string(fused);
        for (const isa::Program* p : {&c.programs.prefill, &c.programs.decode}) {
          const auto code = without_prefetch(*p);
          for (const auto& in : code) EXPECT_EQ(isa::instruction_problem(in), "") << what;
          ASSERT_EQ(code[0].op, isa::Opcode::Embed);
          const isa::Operand X = code[0].dst;
          EXPECT_EQ(count_op(code, isa::Opcode::AllReduce), devices == 1 ? 0u : 2u * s.num_layers)
              << what;
          EXPECT_EQ(count_op(code, isa::Opcode::Norm), (input_norm ? 4u : 2u) * s.num_layers + 1)
              << what;
          for (uint32_t l = 0; l < s.num_layers; ++l) {
            const std::string b = "blk." + std::to_string(l) + ".";
            for (const auto& [proj, post] : {std::pair<std::string, std::string>{b + "attn_output", b + "attn_post_norm"},
                                             {b + "ffn_down", b + "ffn_post_norm"}}) {
              const size_t i = find_op(code, isa::Opcode::MatMul, c.plan.find(proj).ref());
              ASSERT_LT(i, code.size()) << what << " " << proj;
              const isa::Instruction& mm = code[i];
              EXPECT_EQ(mm.flags & isa::kFlagHasResidual, 0) << what << " " << proj;
              EXPECT_EQ(mm.flags & isa::kFlagOutF32, 0);
              EXPECT_FALSE(same_operand(mm.dst, X)) << what << " " << proj << ": X is added later";
              const isa::Operand Y = mm.dst;
              size_t j = i + 1;
              if (devices == 1) {
                // The bias: fused, or a BIAS of its own right after.
                if (fused) {
                  EXPECT_NE(mm.flags & isa::kFlagHasBias, 0) << what << " " << proj;
                  EXPECT_TRUE(same_region(mm.w1, c.plan.find(proj + ".bias").ref()));
                } else {
                  EXPECT_EQ(mm.flags & isa::kFlagHasBias, 0) << what << " " << proj;
                  ASSERT_EQ(code[j].op, isa::Opcode::Bias) << what << " " << proj;
                  EXPECT_TRUE(same_operand(code[j].dst, Y));
                  EXPECT_TRUE(same_region(code[j].w1, c.plan.find(proj + ".bias").ref()));
                  ++j;
                }
              } else {
                EXPECT_EQ(mm.flags & isa::kFlagHasBias, 0) << what << " " << proj << ": a partial sum";
                const isa::Instruction& ar = code[j++];
                ASSERT_EQ(ar.op, isa::Opcode::AllReduce) << what << " " << proj;
                EXPECT_EQ(ar.flags & isa::kFlagHasResidual, 0) << what << " " << proj;
                EXPECT_NE(ar.flags & isa::kFlagHasBias, 0) << what << " " << proj;
                EXPECT_TRUE(same_region(ar.w1, c.plan.find(proj + ".bias").ref()));
                EXPECT_TRUE(same_operand(ar.dst, Y)) << what << " " << proj;
                EXPECT_TRUE(same_operand(ar.a, Y)) << what << " " << proj;
                EXPECT_EQ(ar.n, 64u);
                EXPECT_EQ(ar.i1, devices);
              }
              const isa::Instruction& norm = code[j];
              ASSERT_EQ(norm.op, isa::Opcode::Norm) << what << " " << proj;
              EXPECT_TRUE(same_region(norm.w0, c.plan.find(post + ".weight").ref())) << what;
              EXPECT_TRUE(same_operand(norm.a, Y)) << what;
              EXPECT_TRUE(same_operand(norm.dst, Y)) << what;
              EXPECT_EQ(norm.n, 64u);
              const isa::Instruction& add = code[j + 1];
              ASSERT_EQ(add.op, isa::Opcode::Add) << what << " " << proj;
              EXPECT_TRUE(same_operand(add.dst, X)) << what;
              EXPECT_TRUE(same_operand(add.a, X)) << what;
              EXPECT_TRUE(same_operand(add.b, Y)) << what;
              EXPECT_EQ(add.n, 64u);
            }
            // Without input norms the layer's first MATMUL (Q/K/V) reads X.
            if (!input_norm) {
              const size_t qkv = find_op(code, isa::Opcode::MatMul,
                                         c.plan.find(b + "attn_qkv").ref());
              ASSERT_LT(qkv, code.size());
              EXPECT_TRUE(same_operand(code[qkv].a, X)) << what;
            }
          }
        }
      }
  // The plain model's ring keeps its residual ALLREDUCE: the contrast that makes the above mean something.
  const Compiled plain = compile(tiny_llama(), 2);
  for (const auto& in : plain.programs.decode.code)
    if (in.op == isa::Opcode::AllReduce) {
      EXPECT_NE(in.flags & isa::kFlagHasResidual, 0);
    }
}

// layer_rope: per layer 0 (no rotary), 1 ("rope_table") or 2 ("rope_table_local"). Only the
// tables some layer uses exist, each a RopeTable region of max_length rows, and each ROPE
// streams its layer's table.
TEST(LayerGraph, LayerRopePicksEachLayersTable) {
  ModelSpec s = tiny_llama();
  s.num_layers = 4;
  s.layer_rope = {0, 1, 2, 1};
  s.rope_local_inv_freq = local_inv_freq(s.rope_dim);
  const graph::Graph g = graph::build_graph(s, PassOptions{});
  std::vector<std::pair<uint32_t, std::string>> ropes;
  for (const auto& st : g.steps)
    if (st.kind == graph::StepKind::Rope) ropes.emplace_back(st.layer, st.weight);
  EXPECT_EQ(ropes, (std::vector<std::pair<uint32_t, std::string>>{
                       {1, "rope_table"}, {2, "rope_table_local"}, {3, "rope_table"}}));
  for (const char* name : {"rope_table", "rope_table_local"}) {
    ASSERT_NE(g.find(name), nullptr) << name;
    EXPECT_EQ(g.find(name)->kind, graph::WeightKind::RopeTable);
    EXPECT_EQ(g.find(name)->cols, s.rope_dim / 2);
  }
  // Neither table is a checkpoint tensor.
  const auto t = by_name(s);
  EXPECT_EQ(t.count("rope_table"), 0u);
  EXPECT_EQ(t.count("rope_table_local"), 0u);

  const Compiled c = compile(s, 1);
  const Region& global = c.plan.find("rope_table");
  const Region& local = c.plan.find("rope_table_local");
  for (const Region* r : {&global, &local}) {
    EXPECT_EQ(r->kind, RegionKind::RopeTable) << r->name;
    EXPECT_EQ(r->rows, 64u) << r->name;  // max_length positions
    EXPECT_EQ(r->cols, s.rope_dim / 2) << r->name;
    EXPECT_GE(r->row_bytes, s.rope_dim / 2 * 8) << r->name;
  }
  EXPECT_NE(global.base, local.base);
  for (const isa::Program* p : {&c.programs.prefill, &c.programs.decode}) {
    const auto code = without_prefetch(*p);
    // The table each layer's ROPE streams, found between that layer's Q/K/V and its KVSTORE.
    std::vector<std::string> per_layer;
    for (uint32_t l = 0; l < s.num_layers; ++l) {
      const std::string b = "blk." + std::to_string(l) + ".";
      const size_t qkv = find_op(code, isa::Opcode::MatMul, c.plan.find(b + "attn_qkv").ref());
      const size_t store = find_op(code, isa::Opcode::KvStore, c.plan.find(b + "k_cache").ref());
      ASSERT_LT(qkv, store);
      std::string table = "none";
      for (size_t i = qkv; i < store; ++i)
        if (code[i].op == isa::Opcode::Rope) {
          EXPECT_EQ(table, "none") << "two ROPEs in layer " << l;
          table = same_region(code[i].w0, global.ref()) ? "rope_table"
                  : same_region(code[i].w0, local.ref()) ? "rope_table_local"
                                                         : "?";
          EXPECT_EQ(code[i].n, s.num_heads + s.num_kv_heads);
          EXPECT_EQ(code[i].i0, s.rope_dim);
        }
      per_layer.push_back(table);
    }
    EXPECT_EQ(per_layer,
              (std::vector<std::string>{"none", "rope_table", "rope_table_local", "rope_table"}));
    EXPECT_EQ(count_op(code, isa::Opcode::Rope), 3u);
  }

  // Only the tables in use: all 0 gives none, all 1 no local one, all 2 no global one.
  ModelSpec nope = s;
  nope.layer_rope = {0, 0, 0, 0};
  const Compiled n = compile(nope, 1);
  EXPECT_EQ(n.plan.find_or_null("rope_table"), nullptr);
  EXPECT_EQ(n.plan.find_or_null("rope_table_local"), nullptr);
  EXPECT_EQ(count_op(n.programs.decode.code, isa::Opcode::Rope), 0u);
  ModelSpec global_only = s;
  global_only.layer_rope = {1, 1, 1, 1};
  EXPECT_EQ(compile(global_only, 1).plan.find_or_null("rope_table_local"), nullptr);
  ModelSpec empty = s;  // empty: every layer table 1, as before the trait
  empty.layer_rope.clear();
  const Compiled e = compile(empty, 1);
  EXPECT_NE(e.plan.find_or_null("rope_table"), nullptr);
  EXPECT_EQ(e.plan.find_or_null("rope_table_local"), nullptr);
  EXPECT_EQ(count_op(e.programs.decode.code, isa::Opcode::Rope), 4u);
  ModelSpec local_only = s;
  local_only.layer_rope = {2, 2, 2, 2};
  const Compiled lo = compile(local_only, 1);
  EXPECT_EQ(lo.plan.find_or_null("rope_table"), nullptr);
  ASSERT_NE(lo.plan.find_or_null("rope_table_local"), nullptr);
  for (const auto& in : lo.programs.decode.code)
    if (in.op == isa::Opcode::Rope) {
      EXPECT_TRUE(same_region(in.w0, lo.plan.find("rope_table_local").ref()));
    }
  // A learned-position model may say 0 for every layer (no rotary anywhere).
  ModelSpec learned = tiny_gpt2();
  learned.layer_rope = {0, 0, 0};
  EXPECT_EQ(count_op(compile(learned, 1).programs.decode.code, isa::Opcode::Rope), 0u);
}

// rope_table_row(spec, pos, 2): the local table's frequencies and no attention factor;
// table 1 keeps rope_inv_freq and the factor. Against cos/sin computed here.
TEST(LayerGraph, LocalRopeTableRowsUseTheirOwnFrequenciesAndNoFactor) {
  ModelSpec s = tiny_llama();
  s.layer_rope = {2, 1};
  s.rope_local_inv_freq = local_inv_freq(s.rope_dim);
  s.rope_attention_factor = 0.75f;
  const uint32_t half = s.rope_dim / 2;
  for (uint32_t pos : {0u, 1u, 5u, 63u, 1000u}) {
    const auto global = rope_table_row(s, pos, 1), local = rope_table_row(s, pos, 2);
    ASSERT_EQ(global.size(), 2u * half);
    ASSERT_EQ(local.size(), 2u * half);
    EXPECT_EQ(rope_table_row(s, pos), global) << "table 1 is the default";
    for (uint32_t i = 0; i < half; ++i) {
      // Bit for bit: the fp32 angle, cos/sin of it, times the factor (1 for the local table).
      const float ga = float(pos) * s.rope_inv_freq[i], la = float(pos) * s.rope_local_inv_freq[i];
      EXPECT_EQ(global[2 * i], float(std::cos(double(ga))) * 0.75f) << pos << " " << i;
      EXPECT_EQ(global[2 * i + 1], float(std::sin(double(ga))) * 0.75f) << pos << " " << i;
      EXPECT_EQ(local[2 * i], float(std::cos(double(la)))) << pos << " " << i;
      EXPECT_EQ(local[2 * i + 1], float(std::sin(double(la)))) << pos << " " << i;
      // And close to the exact angle: base 10's frequencies, 10^(-2i/d).
      const double exact = double(pos) * std::pow(10.0, -double(2 * i) / s.rope_dim);
      const double tol = 1e-6 * (1.0 + double(pos));
      EXPECT_NEAR(local[2 * i], std::cos(exact), tol) << pos << " " << i;
      EXPECT_NEAR(local[2 * i + 1], std::sin(exact), tol) << pos << " " << i;
    }
    if (pos == 0) {
      EXPECT_EQ(local[0], 1.0f);  // no factor: cos 0 = 1
      EXPECT_EQ(global[0], 0.75f);
    } else {
      EXPECT_NE(local[2], global[2] / 0.75f) << "the local table has its own frequencies";
    }
  }
  // A spec without local frequencies has no table 2 to give.
  const ModelSpec plain = tiny_llama();
  EXPECT_NE(spec_error([&] { rope_table_row(plain, 3, 2); }).find("no frequencies"), std::string::npos);
}

// The soft-caps reach the instructions: attn_softcap every ATTN's f1, final_logit_softcap
// the LM head's f1 (beside the logit scale in f0), on one device and on a ring.
TEST(LayerGraph, SoftCapsReachAttnAndTheHead) {
  ModelSpec s = tiny_llama();
  s.layer_windows = {4, 0};
  s.attn_softcap = 50.0f;
  s.final_logit_softcap = 30.0f;
  const graph::Graph g = graph::build_graph(s, PassOptions{});
  size_t attns = 0;
  for (const auto& st : g.steps)
    if (st.kind == graph::StepKind::Attention) {
      EXPECT_FLOAT_EQ(st.value, 50.0f);
      ++attns;
    }
  EXPECT_EQ(attns, s.num_layers);
  ASSERT_EQ(g.steps.back().kind, graph::StepKind::Head);
  EXPECT_FLOAT_EQ(g.steps.back().cap, 30.0f);
  EXPECT_FLOAT_EQ(g.steps.back().value, 1.0f);  // the logit scale, untouched

  for (const float scale : {1.0f, 0.25f})
    for (const uint32_t devices : {1u, 2u})
      for (const bool fuse_argmax : {true, false}) {
        ModelSpec t = s;
        t.logit_scale = scale;
        PassOptions passes;
        passes.fuse_argmax = fuse_argmax;
        const Compiled c = compile(t, devices, passes);
        for (const isa::Program* p : {&c.programs.prefill, &c.programs.decode}) {
          size_t heads = 0, attn = 0;
          for (const auto& in : p->code) {
            EXPECT_EQ(isa::instruction_problem(in), "");
            if (in.op == isa::Opcode::Attention) {
              EXPECT_EQ(in.f1, 50.0f);
              EXPECT_EQ(in.f0, s.effective_attn_scale());
              ++attn;
            } else if (in.op == isa::Opcode::MatMul && (in.flags & isa::kFlagOutF32)) {
              EXPECT_EQ(in.f1, 30.0f);
              EXPECT_EQ(in.f0, scale == 1.0f ? 0.0f : scale);
              ++heads;
            } else if (in.op == isa::Opcode::MatMul) {
              EXPECT_EQ(in.f1, 0.0f);  // no other MATMUL carries a cap
            }
          }
          EXPECT_EQ(attn, s.num_layers);
          EXPECT_EQ(heads, 1u);
        }
        // The listing shows both.
        const std::string text = isa::disassemble(c.programs.decode);
        EXPECT_NE(text.find("softcap=50"), std::string::npos);
        EXPECT_NE(text.find("softcap=30"), std::string::npos);
      }
  // Without caps every f1 is 0.
  const Compiled plain = compile(tiny_llama(), 1);
  for (const auto& in : plain.programs.decode.code) EXPECT_EQ(in.f1, 0.0f);
}

TEST(LayerGraph, BadSandwichRopeAndSoftCapSpecsAreRefused) {
  struct Case {
    const char* what;
    std::function<void(ModelSpec&)> edit;
    const char* needle;
  };
  const float nan = std::numeric_limits<float>::quiet_NaN(), inf = std::numeric_limits<float>::infinity();
  const std::vector<Case> cases = {
      {"layer_rope too short", [](ModelSpec& s) { s.layer_rope = {1}; }, "layer_rope must be empty or have one entry per layer (2)"},
      {"layer_rope too long", [](ModelSpec& s) { s.layer_rope = {1, 1, 1}; }, "layer_rope must be empty"},
      {"layer_rope 3", [](ModelSpec& s) { s.layer_rope = {1, 3}; }, "layer_rope entries are 0 (none), 1 or 2"},
      {"layer_rope 1 without RoPE",
       [](ModelSpec& s) {
         s = tiny_gpt2();
         s.layer_rope = {0, 1, 0};
       },
       "layer_rope entries"},
      {"table 2 without local frequencies", [](ModelSpec& s) { s.layer_rope = {2, 1}; }, "rope_local_inv_freq must have rope_dim/2 = 8"},
      {"table 2 with too few local frequencies",
       [](ModelSpec& s) {
         s.layer_rope = {1, 2};
         s.rope_local_inv_freq = {1.0f, 0.5f};
       },
       "rope_local_inv_freq"},
      {"branch_output_norm with parallel_block",
       [](ModelSpec& s) {
         s = parallel_neox();
         s.branch_output_norm = true;
       },
       "branch_output_norm needs sequential pre-norm blocks"},
      {"branch_output_norm with post-norm",
       [](ModelSpec& s) {
         s.pre_norm = false;
         s.branch_output_norm = true;
       },
       "branch_output_norm needs sequential pre-norm blocks"},
      {"no input norms without output norms", [](ModelSpec& s) { s.branch_input_norm = false; }, "a block without input norms needs branch_output_norm"},
      {"negative attn_softcap", [](ModelSpec& s) { s.attn_softcap = -1.0f; }, "soft-caps must be >= 0"},
      {"NaN attn_softcap", [nan](ModelSpec& s) { s.attn_softcap = nan; }, "soft-caps must be >= 0"},
      {"negative final_logit_softcap", [](ModelSpec& s) { s.final_logit_softcap = -30.0f; }, "soft-caps must be >= 0"},
      {"infinite final_logit_softcap", [inf](ModelSpec& s) { s.final_logit_softcap = inf; }, "soft-caps must be >= 0"},
  };
  for (const Case& c : cases) {
    ModelSpec s = tiny_llama();
    c.edit(s);
    const std::string msg = spec_error([&] { graph::build_graph(s, PassOptions{}); });
    EXPECT_NE(msg.find(c.needle), std::string::npos) << c.what << ": " << msg;
    EXPECT_EQ(msg.rfind("invalid model spec: ", 0), 0u) << c.what << ": " << msg;
    // The planner and the generator refuse it as well, before anything is laid out.
    EXPECT_THROW(plan_memory(s, small_preset(), 64, 8), SpecError) << c.what;
    EXPECT_THROW(graph::model_tensors(s), SpecError) << c.what;
  }
  // The good neighbours of those cases pass.
  for (auto edit : std::vector<std::function<void(ModelSpec&)>>{
           [](ModelSpec& s) {
             s.layer_rope = {0, 2};
             s.rope_local_inv_freq = local_inv_freq(16);
           },
           [](ModelSpec& s) { s.branch_output_norm = true; },
           [](ModelSpec& s) {
             s.branch_output_norm = true;
             s.branch_input_norm = false;
           },
           [](ModelSpec& s) { s.final_logit_softcap = 1e-3f; },
       }) {
    ModelSpec s = tiny_llama();
    edit(s);
    EXPECT_EQ(spec_error([&] { graph::build_graph(s, PassOptions{}); }), "");
  }
}

TEST(LayerGraph, WholeProjectionQkNormsSumOverTheRing) {
  ModelSpec s = tiny_llama();  // 4 q heads over 2 KV heads of 16
  s.qk_norm = true;
  s.qk_norm_whole = true;
  const graph::Graph one = graph::build_graph(s, PassOptions{});
  const size_t q = step_index(one, graph::StepKind::Norm, "blk.0.attn_q_norm");
  ASSERT_LT(q, one.steps.size());
  EXPECT_EQ(one.steps[q].group, 0u);  // the whole projection
  // On 4 devices each KV head is on 2: the ring counts it twice, q heads once.
  const ModelSpec shard = shard_spec(s, 4);
  EXPECT_EQ(shard.q_norm_count, 64u);
  EXPECT_EQ(shard.k_norm_count, 2u * 16 * 2);
  const MemoryPlan plan = plan_memory(shard, small_preset(), 64, 8);
  const Programs p = generate_programs(shard, plan, PassOptions{}, 4);
  uint32_t ring_norms = 0;
  for (const auto& in : p.decode.code)
    if (in.op == isa::Opcode::Norm && (in.flags & isa::kFlagRingStats)) {
      EXPECT_EQ(in.i1, 4u);
      EXPECT_EQ(in.i0, 64u);  // q: 4 heads x 16; k: 2 KV heads x 16, each counted twice
      ++ring_norms;
    }
  EXPECT_EQ(ring_norms, 2u * s.num_layers);
  // One device: plain whole-row norms.
  const MemoryPlan plan1 = plan_memory(s, small_preset(), 64, 8);
  for (const auto& in : generate_programs(s, plan1, PassOptions{}, 1).decode.code)
    EXPECT_FALSE(in.op == isa::Opcode::Norm && (in.flags & isa::kFlagRingStats));
  // KV heads that no device count divides evenly cannot be counted: refused.
  ModelSpec odd = s;
  odd.num_heads = 6;
  odd.num_kv_heads = 3;
  EXPECT_THROW(shard_spec(odd, 4), SpecError);
  // Per-head gains on a LayerNorm are no ring RMS norm.
  ModelSpec layer = s;
  layer.norm = NormKind::LayerNorm;
  EXPECT_THROW(graph::build_graph(layer, PassOptions{}), SpecError);
}
