// The HBM plan: striping, alignment, no overlap, stream order, capacity errors.
#include <gtest/gtest.h>

#include <algorithm>

#include "common/error.h"
#include "instgen/instgen.h"
#include "mapper/memory_plan.h"
#include "test_util.h"

using namespace hyperdex;
using namespace hyperdex::testing;

namespace {

void expect_well_formed(const MemoryPlan& plan) {
  uint64_t prev_end = 0;
  for (const Region& r : plan.regions) {
    EXPECT_EQ(r.base % kRowAlignBytes, 0u) << r.name;
    EXPECT_EQ(r.row_bytes % kRowAlignBytes, 0u) << r.name;
    EXPECT_GE(r.base, prev_end) << r.name << " overlaps the region before it";
    prev_end = r.base + r.bytes_per_channel(plan.num_channels);
    if (r.kind == RegionKind::KvCache) {
      EXPECT_GE(r.base, plan.kv_base);
      EXPECT_LE(prev_end, plan.kv_base + plan.kv_bytes);
    } else {
      EXPECT_LE(prev_end, plan.weights_bytes) << r.name;
    }
  }
  EXPECT_LE(plan.kv_base + plan.kv_bytes, plan.io.base);
  EXPECT_EQ(plan.channel_bytes[0], plan.io.base + plan.io.bytes);
  for (uint32_t c = 1; c < plan.num_channels; ++c) EXPECT_EQ(plan.channel_bytes[c], plan.io.base);
}

}  // namespace

TEST(MemoryPlan, LlamaLayoutIsAlignedOrderedAndDisjoint) {
  MemoryPlan plan = plan_memory(tiny_llama(), small_preset(), 128, 16);
  expect_well_formed(plan);
  // Fused Q/K/V rows: q heads, then k, then v.
  const Region& qkv = plan.find("blk.0.attn_qkv");
  EXPECT_EQ(qkv.rows, 4u * 16 + 2u * 2 * 16);
  EXPECT_EQ(qkv.sources.size(), 3u);
  EXPECT_EQ(qkv.row_bytes, 128u);
  // Tied embeddings: no separate LM head.
  EXPECT_EQ(plan.find_or_null("output"), nullptr);
  // The KV cache holds max_length rows of kv_heads * head_dim.
  EXPECT_EQ(plan.find("blk.1.v_cache").rows, 128u);
  EXPECT_EQ(plan.find("blk.1.v_cache").cols, 32u);
  EXPECT_EQ(plan.find("rope_table").rows, 128u);
}

TEST(MemoryPlan, StripingBalancesChannels) {
  MemoryPlan plan = plan_memory(tiny_gpt2(), small_preset(32), 64, 8);
  expect_well_formed(plan);
  const Region& emb = plan.find("tok_embd");  // 257 rows over 32 channels: 9 rows in the first
  EXPECT_EQ(emb.bytes_per_channel(32), 9u * emb.row_bytes);
  // Vectors are cut in 32-element rows: a 48-wide norm is 2 rows.
  EXPECT_EQ(plan.find("blk.0.attn_norm.weight").rows, 2u);
  EXPECT_EQ(plan.find("blk.0.attn_norm.weight").row_bytes, 64u);
}

TEST(MemoryPlan, WeightStreamFollowsLayerOrder) {
  MemoryPlan plan = plan_memory(tiny_gpt2(), small_preset(), 64, 8);
  std::vector<std::string> names;
  for (const auto& r : plan.regions) names.push_back(r.name);
  auto at = [&](const std::string& n) { return std::find(names.begin(), names.end(), n) - names.begin(); };
  EXPECT_LT(at("tok_embd"), at("pos_embd"));
  EXPECT_LT(at("pos_embd"), at("blk.0.attn_norm.weight"));
  EXPECT_LT(at("blk.0.attn_qkv"), at("blk.0.attn_output"));
  EXPECT_LT(at("blk.0.ffn_down.bias"), at("blk.1.attn_norm.weight"));
  EXPECT_LT(at("blk.2.ffn_down"), at("output_norm.weight"));
}

TEST(MemoryPlan, FingerprintChangesWithLayout) {
  auto a = plan_memory(tiny_llama(), small_preset(), 128, 16).fingerprint();
  EXPECT_EQ(a, plan_memory(tiny_llama(), small_preset(), 128, 16).fingerprint());
  EXPECT_NE(a, plan_memory(tiny_llama(), small_preset(), 256, 16).fingerprint());
  EXPECT_NE(a, plan_memory(tiny_llama(), small_preset(8), 128, 16).fingerprint());
}

TEST(MemoryPlan, TooBigGivesNumbersAndADeviceCount) {
  ModelSpec big = tiny_llama();
  big.hidden_size = 8192;
  big.head_dim = 2048;
  big.intermediate_size = 28672;
  big.num_layers = 80;
  try {
    plan_memory(big, small_preset(32, 512ull << 20), 4096, 16);
    FAIL() << "a model larger than the device was accepted";
  } catch (const CapacityError& e) {
    std::string m = e.what();
    EXPECT_NE(m.find("GiB"), std::string::npos) << m;
    EXPECT_NE(m.find("max_length=4096"), std::string::npos) << m;
    EXPECT_NE(m.find("devices"), std::string::npos) << m;
  }
}

TEST(MemoryPlan, RejectsBadOptions) {
  EXPECT_THROW(plan_memory(tiny_llama(), small_preset(), 0, 1), SpecError);
  EXPECT_THROW(plan_memory(tiny_llama(), small_preset(), 64, 128), SpecError);
  EXPECT_THROW(plan_memory(tiny_gpt2(), small_preset(), 65, 8), SpecError);  // > 64 positions
  ModelSpec bad = tiny_llama();
  bad.num_kv_heads = 3;
  EXPECT_THROW(plan_memory(bad, small_preset(), 64, 8), SpecError);
}

TEST(Instgen, ChunkFitsOnChipMemory) {
  ModelSpec s = tiny_llama();
  DevicePreset p = small_preset();
  EXPECT_EQ(choose_max_tokens(s, p, 2048), 128u);
  EXPECT_EQ(choose_max_tokens(s, p, 40), 32u);
  p.lmem_bytes = lmem_bytes_per_token(s) * 5;
  EXPECT_EQ(choose_max_tokens(s, p, 2048), 4u);
  p.lmem_bytes = lmem_bytes_per_token(s) - 1;
  EXPECT_THROW(choose_max_tokens(s, p, 2048), CapacityError);
}

TEST(Instgen, DecodeStreamsWeightsInPlanOrder) {
  PassOptions off;
  off.fuse_epilogue = off.fuse_qkv = off.fuse_gate_up = off.reorder = off.fuse_argmax = false;
  for (const PassOptions& passes : {PassOptions{}, off})
    for (const ModelSpec& s : {tiny_llama(), tiny_gpt2()}) {
      MemoryPlan plan = plan_memory(s, small_preset(), 64, 8, passes);
      isa::Program p = generate_program(s, plan, isa::ProgramKind::Decode, 1, passes);
      uint64_t last = 0;
      size_t matmuls = 0;
      for (const auto& in : p.code) {
        if (in.op != isa::Opcode::MatMul && in.op != isa::Opcode::Norm) continue;
        matmuls += in.op == isa::Opcode::MatMul;
        if (in.flags & isa::kFlagLogitRows) continue;  // a tied head re-reads the embedding
        EXPECT_GE(in.w0.base, last) << "weights streamed out of order: " << isa::disassemble(in);
        last = in.w0.base;
      }
      // qkv (or q, k, v), out, (gate), up, down
      const size_t per_layer = (passes.fuse_qkv ? 1 : 3) + 1 + (s.gated_mlp && !passes.fuse_gate_up) + 2;
      EXPECT_EQ(matmuls, s.num_layers * per_layer + 1);
      if (passes.fuse_argmax) {
        EXPECT_EQ(p.code.back().op, isa::Opcode::MatMul);
        EXPECT_TRUE(p.code.back().flags & isa::kFlagArgmax);
      } else {
        EXPECT_EQ(p.code.back().op, isa::Opcode::Argmax);
      }
      EXPECT_EQ(p.plan_fingerprint, plan.fingerprint());
    }
}

// Tensor parallelism: a device's query heads all belong to its own KV heads (whole GQA
// groups, or a share of one group when KV heads are replicated, being fewer than devices), sizes that do not divide round up, the
// embedding table stays whole and the LM head becomes a vocabulary slice.
TEST(ShardSpec, SplitsHeadsMlpAndVocabularyWithPadding) {
  const ModelSpec s = hyperdex::testing::tiny_llama();  // 4 heads over 2 KV heads, ff 96, vocab 300
  for (uint32_t n : {1u, 2u, 4u, 8u}) {
    const ModelSpec d = shard_spec(s, n);
    EXPECT_EQ(d.num_heads % d.num_kv_heads, 0u) << n;
    EXPECT_EQ(d.vocab_size, 300u);
    EXPECT_EQ(d.logits_size(), n == 1 ? 300u : (300 + n - 1) / n);
    EXPECT_GE(uint64_t(d.intermediate_size) * n, 96u);
    EXPECT_LT(uint64_t(d.intermediate_size - 1) * n, 96u);
    EXPECT_EQ(d.tie_word_embeddings, n == 1);
  }
  EXPECT_EQ(shard_spec(s, 2).num_kv_heads, 1u);
  EXPECT_EQ(shard_spec(s, 2).num_heads, 2u);
  EXPECT_EQ(shard_spec(s, 8).num_kv_heads, 1u);  // replicated on 4 devices each
  EXPECT_EQ(shard_spec(s, 8).num_heads, 1u);     // 2 query heads over 4 devices: padding
  ModelSpec odd = s;                             // 6 heads over 3 KV heads on 2 devices
  odd.num_heads = 6;
  odd.num_kv_heads = 3;
  odd.hidden_size = 96;
  EXPECT_EQ(shard_spec(odd, 2).num_kv_heads, 2u);
  EXPECT_EQ(shard_spec(odd, 2).num_heads, 4u);
  EXPECT_THROW(shard_spec(s, 3), SpecError);
}

TEST(ShardSpec, PlanKeepsTheWholeEmbeddingAndASliceOfTheHead) {
  const ModelSpec d = shard_spec(hyperdex::testing::tiny_llama(), 4);
  const MemoryPlan plan = plan_memory(d, hyperdex::testing::small_preset(4), 64, 8);
  EXPECT_EQ(plan.find("tok_embd").rows, 300u);
  EXPECT_EQ(plan.find("output").rows, 75u);
  EXPECT_EQ(plan.vocab_size, 75u);  // logits per row this device writes
  EXPECT_EQ(plan.find("blk.0.k_cache").cols, d.num_kv_heads * d.head_dim);
  const Programs progs = generate_programs(d, plan, PassOptions{}, 4);
  uint32_t reduces = 0;
  for (const auto& in : progs.decode.code)
    if (in.op == isa::Opcode::AllReduce) {
      ++reduces;
      EXPECT_EQ(in.i1, 4u);
    }
  EXPECT_EQ(reduces, 2 * d.num_layers);  // attention output and MLP down, per layer
}
