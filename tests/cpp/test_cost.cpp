// The cost model against numbers worked out by hand from docs/cost-model.md, the
// physical floors on whole programs, and the profiler's trace.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>

#include "cost/cost_model.h"
#include "cost/profiler.h"
#include "instgen/instgen.h"
#include "mapper/memory_plan.h"
#include "test_util.h"

using namespace hyperdex;
using namespace hyperdex::cost;
using namespace hyperdex::isa;

namespace {

// Round numbers: 4 channels of 1 GB/s each at 100% efficiency, a 1 GHz clock.
DevicePreset round_preset() {
  DevicePreset p = hyperdex::testing::small_preset(4);
  p.hbm_bandwidth_gbps = 4.0;
  p.hbm_efficiency = 1.0;
  p.hbm_latency_ns = 100.0;
  p.clock_mhz = 1000.0;
  p.mac_trees = 4;
  p.mac_lanes = 16;
  p.vector_lanes = 16;
  p.issue_cycles = 2;
  p.chain_cycles = 10;
  p.mac_pipeline_cycles = 20;
  p.vector_pipeline_cycles = 5;
  p.weight_buffer_bytes = 4 * 1024;
  p.run_overhead_us = 0.0;
  return p;
}

Instruction matmul(uint32_t n, uint32_t k, uint64_t base, Operand dst, Operand a) {
  Instruction in;
  in.op = Opcode::MatMul;
  in.n = n;
  in.k = k;
  in.w0 = HbmRegion{base, uint32_t(k * 2), n};
  in.dst = dst;
  in.a = a;
  return in;
}

Instruction vector_op(Opcode op, uint32_t n, Operand dst, Operand a, Operand b) {
  Instruction in;
  in.op = op;
  in.n = n;
  in.dst = dst;
  in.a = a;
  in.b = b;
  return in;
}

Program program_of(std::vector<Instruction> code, uint32_t max_tokens = 1) {
  Program p;
  p.kind = ProgramKind::Decode;
  p.max_tokens = max_tokens;
  p.lmem_bytes = 1 << 20;
  p.code = std::move(code);
  return p;
}

const Operand kA{Space::Lmem, 0, 1024}, kB{Space::Lmem, 4096, 1024}, kC{Space::Lmem, 8192, 1024},
    kD{Space::Lmem, 12288, 1024};

}  // namespace

TEST(CostModel, MatMulTakesTheSlowerOfItsStreamAndItsMacs) {
  const DevicePreset p = round_preset();
  // 64 rows of 512 inputs: 16 rows (16 KiB) per channel at 1 B/ns = 16384 ns + 100 ns
  // latency; MACs: 16 rows per tree x 32 cycles = 512 cycles. Memory-bound.
  RunCost r = CostModel(program_of({matmul(64, 512, 0, kB, kA)}), p).run(RunArgs{});
  ASSERT_EQ(r.instructions.size(), 1u);
  EXPECT_NEAR(r.time_ns, 100.0 + 16384.0 + 20.0, 1e-6);
  EXPECT_EQ(r.instructions[0].bound, Bound::Memory);
  EXPECT_EQ(r.hbm_bytes, 64u * 1024);
  EXPECT_EQ(r.macs, 64u * 512);
  // 128 token rows: the same stream feeds 128 x the MACs: 512 x 128 cycles. Compute-bound.
  r = CostModel(program_of({matmul(64, 512, 0, kB, kA)}, 128), p).run(RunArgs{0, 128});
  EXPECT_NEAR(r.time_ns, 512.0 * 128 + 20.0, 1e-6);
  EXPECT_EQ(r.instructions[0].bound, Bound::Compute);
  // Rows that do not fill the last stripe cost a whole stripe row: 65 rows = 17 per channel.
  r = CostModel(program_of({matmul(65, 512, 0, kB, kA)}), p).run(RunArgs{});
  EXPECT_NEAR(r.time_ns, 100.0 + 17 * 1024.0 + 20.0, 1e-6);
}

TEST(CostModel, IndependentInstructionsOverlapDependentOnesChain) {
  const DevicePreset p = round_preset();
  const Instruction mm = matmul(64, 512, 0, kB, kA);
  // ADD on C, D: touches nothing the MATMUL writes -> runs on the vector engine meanwhile.
  Program independent = program_of({mm, vector_op(Opcode::Add, 512, kD, kC, kC)});
  // ADD reading the MATMUL's output -> waits for it, plus the hand-off.
  Program dependent = program_of({mm, vector_op(Opcode::Add, 64, kD, kB, kC)});
  CostModel mi(independent, p), md(dependent, p);
  EXPECT_TRUE(mi.dependencies()[1].empty());
  ASSERT_EQ(md.dependencies()[1].size(), 1u);
  RunCost ri = mi.run(RunArgs{}), rd = md.run(RunArgs{});
  const double mm_end = ri.instructions[0].end_ns;
  EXPECT_LT(ri.instructions[1].start_ns, mm_end);
  EXPECT_NEAR(ri.time_ns, mm_end, 1e-6);
  EXPECT_NEAR(rd.instructions[1].start_ns, mm_end + 10.0, 1e-6);
  EXPECT_NEAR(rd.time_ns, mm_end + 10.0 + 64.0 / 16 + 5.0, 1e-6);
  // A write after a read is a hazard too: the ADD overwrites the MATMUL's input.
  CostModel war(program_of({mm, vector_op(Opcode::Add, 64, kA, kC, kC)}), p);
  EXPECT_EQ(war.dependencies()[1].size(), 1u);
}

TEST(CostModel, PrefetchStreamsWeightsWhileTheVectorEngineWorks) {
  DevicePreset p = round_preset();
  p.weight_buffer_bytes = 64 * 1024;  // 16 KiB per channel
  // MATMUL 1, a long vector op on its output, MATMUL 2 on the vector op's output.
  const Instruction m1 = matmul(64, 512, 0, kB, kA);
  const Instruction v = vector_op(Opcode::Act, 64 * 1024, kC, kB, kB);  // 4096 cycles
  const Instruction m2 = matmul(64, 512, 1 << 20, kD, kC);
  Instruction pf;
  pf.op = Opcode::Prefetch;
  pf.w0 = m2.w0;
  Program plain = program_of({m1, v, m2});
  Program hoisted = program_of({m1, pf, v, m2});
  RunCost a = CostModel(plain, p).run(RunArgs{}), b = CostModel(hoisted, p).run(RunArgs{});
  EXPECT_EQ(a.hbm_bytes, b.hbm_bytes);  // the same bytes, moved earlier
  EXPECT_EQ(a.weight_bytes, b.weight_bytes);
  // m2's whole stream (16 KiB per channel) fits the buffer, so it runs from the moment m1's
  // stream ends: m2 gains m1's pipeline drain (20), two hand-offs (10 + 10) and the ACT
  // (4096 + 5).
  EXPECT_NEAR(a.time_ns - b.time_ns, 20.0 + 10.0 + 4101.0 + 10.0, 1e-6);
  // The buffer bounds what runs ahead: 4 KiB (1 KiB per channel) saves 1024 ns and the latency.
  p.weight_buffer_bytes = 4 * 1024;
  RunCost c = CostModel(hoisted, p).run(RunArgs{});
  EXPECT_NEAR(a.time_ns - c.time_ns, 1024.0 + 100.0, 1e-6);
}

TEST(CostModel, RingAllReduceOverlapsTheMatMulFeedingIt) {
  DevicePreset p = round_preset();
  p.ring_bandwidth_gbps = 1.0;
  p.ring_latency_ns = 50.0;
  const Instruction mm = matmul(512, 512, 0, kB, kA);
  Instruction ar;
  ar.op = Opcode::AllReduce;
  ar.dst = kC;
  ar.a = kB;
  ar.n = 512;
  ar.i1 = 2;
  ar.i0 = 1;
  RunCost one = CostModel(program_of({mm, ar}), p).run(RunArgs{});
  // 2(N-1) = 2 steps of half the 1 KiB: 2 x (50 + 512) ns, after the MATMUL and the hand-off.
  EXPECT_NEAR(one.time_ns - one.instructions[0].end_ns, 10.0 + 2 * (50.0 + 512.0) + 512.0 / 16 + 5,
              1e-6);
  EXPECT_EQ(one.ring_bytes, 1024u);
  ar.i0 = 8;
  RunCost eight = CostModel(program_of({mm, ar}), p).run(RunArgs{});
  EXPECT_LT(eight.time_ns, one.time_ns);
  // Only the last chunk's transfer (plus its hops) is left after the MATMUL.
  const double tail = eight.time_ns - eight.instructions[0].end_ns;
  EXPECT_NEAR(tail, 10.0 + 2 * (50.0 + 512.0 / 8) + 512.0 / 16 + 5, 1e-6);
}

TEST(CostModel, NoProgramBeatsTheBandwidthOrComputeFloor) {
  PassOptions off;
  off.fuse_epilogue = off.fuse_qkv = off.fuse_gate_up = off.reorder = off.fuse_argmax = false;
  for (const ModelSpec& s : {hyperdex::testing::tiny_llama(), hyperdex::testing::tiny_gpt2()})
    for (const PassOptions& passes : {PassOptions{}, off})
      for (uint32_t devices : {1u, 2u}) {
        const ModelSpec shard = shard_spec(s, devices);
        DevicePreset p = hyperdex::testing::small_preset(8);
        MemoryPlan plan = plan_memory(shard, p, 64, 8, passes);
        Programs progs = generate_programs(shard, plan, passes, devices);
        for (RunArgs args : {RunArgs{0, 8, false, true}, RunArgs{20, 1, false, true}}) {
          const Program& prog = args.n_tokens == 1 ? progs.decode : progs.prefill;
          RunCost r = CostModel(prog, p).run(args);
          Floors f = floors(prog, p, args);
          EXPECT_GE(r.time_ns, f.bandwidth_ns) << s.architecture;
          EXPECT_GE(r.time_ns, f.compute_ns) << s.architecture;
          EXPECT_GE(r.weight_bytes, f.weight_bytes);
          EXPECT_EQ(r.macs >= f.macs, true);
          double sum = 0;
          for (const auto& c : r.instructions) {
            EXPECT_GE(c.start_ns, c.issue_ns);
            EXPECT_GE(c.end_ns, c.start_ns);
            sum = std::max(sum, c.end_ns);
          }
          EXPECT_NEAR(sum, r.time_ns, 1e-6);
        }
      }
}

TEST(CostModel, LaterPositionsCostMoreAttention) {
  const ModelSpec s = hyperdex::testing::tiny_llama();
  DevicePreset p = hyperdex::testing::small_preset(4);
  MemoryPlan plan = plan_memory(s, p, 512, 8);
  Programs progs = generate_programs(s, plan);
  CostModel m(progs.decode, p);
  RunCost early = m.run(RunArgs{0, 1}), late = m.run(RunArgs{500, 1});
  EXPECT_GT(late.time_ns, early.time_ns);
  EXPECT_GT(late.hbm_bytes, early.hbm_bytes);
  EXPECT_EQ(late.weight_bytes, early.weight_bytes);
}

// ISA v4: a NORM by groups makes the same passes; each group starts on fresh vector lanes,
// so groups a multiple of the lanes wide cost what the whole row does and narrower ones more.
// The clip activation and the LM head's logit scale cost what their v3 neighbours do.
TEST(CostModel, GroupedNormClipAndLogitScaleArePriced) {
  const DevicePreset p = round_preset();  // 16 vector lanes, 5 pipeline cycles, 1 ns cycles
  auto norm_ns = [&](NormKind kind, uint32_t group, uint32_t tokens) {
    Instruction in = vector_op(Opcode::Norm, 64, kB, kA, kA);
    in.sub = uint8_t(kind);
    in.k = group;
    in.w0 = HbmRegion{0, 64, 2};
    RunCost r = CostModel(program_of({in}, tokens), p).run(RunArgs{0, tokens});
    EXPECT_EQ(r.instructions[0].vector_ops, uint64_t(tokens) * 64 * (kind == NormKind::RmsNorm ? 2 : 3));
    return r.instructions[0].duration_ns();
  };
  // RMSNorm, 2 passes over 64 elements: 2 x 64 / 16 + 2 x 5 = 18 cycles.
  EXPECT_NEAR(norm_ns(NormKind::RmsNorm, 0, 1), 18.0, 1e-9);
  EXPECT_NEAR(norm_ns(NormKind::RmsNorm, 64, 1), 18.0, 1e-9);
  EXPECT_NEAR(norm_ns(NormKind::RmsNorm, 16, 1), 18.0, 1e-9);
  EXPECT_NEAR(norm_ns(NormKind::RmsNorm, 32, 1), 18.0, 1e-9);
  // Groups of 8: 8 groups of one 16-lane vector each, half of it idle: 2 x 8 + 10 cycles.
  EXPECT_NEAR(norm_ns(NormKind::RmsNorm, 8, 1), 26.0, 1e-9);
  // LayerNorm, 3 passes, 4 token rows, groups of 24 (not a lane multiple; the cost model
  // prices what it is given): ceil(64 / 24) = 3 groups x 2 vectors x 16 lanes x 4 rows.
  EXPECT_NEAR(norm_ns(NormKind::LayerNorm, 24, 4), 3.0 * 3 * 2 * 4 + 15.0, 1e-9);
  EXPECT_NEAR(norm_ns(NormKind::LayerNorm, 0, 4), 3.0 * 64 * 4 / 16 + 15.0, 1e-9);

  Instruction relu = vector_op(Opcode::Act, 512, kB, kA, kA), clip = relu;
  relu.sub = uint8_t(ActKind::Relu);
  clip.sub = uint8_t(ActKind::Clip);
  clip.f0 = 6.0f;
  const double relu_ns = CostModel(program_of({relu}), p).run(RunArgs{}).time_ns;
  EXPECT_NEAR(CostModel(program_of({clip}), p).run(RunArgs{}).time_ns, relu_ns, 1e-9);
  EXPECT_NEAR(relu_ns, 512.0 / 16 + 5.0, 1e-9);

  Instruction head = matmul(64, 512, 0, Operand{Space::Io, 0, 64}, kA), scaled = head;
  head.flags = scaled.flags = kFlagOutF32 | kFlagArgmax;
  head.b = scaled.b = Operand{Space::Io, 4096, 1};
  scaled.f0 = 0.0625f;
  const RunCost a = CostModel(program_of({head}), p).run(RunArgs{});
  const RunCost b = CostModel(program_of({scaled}), p).run(RunArgs{});
  EXPECT_NEAR(b.time_ns, a.time_ns, 1e-9);
  EXPECT_EQ(b.hbm_bytes, a.hbm_bytes);
}

TEST(Profiler, PricesPrefillInChunksAndWritesATrace) {
  const ModelSpec s = hyperdex::testing::tiny_llama();
  DevicePreset p = hyperdex::testing::small_preset(4);
  p.run_overhead_us = 3.0;
  MemoryPlan plan = plan_memory(s, p, 128, 8);
  Programs progs = generate_programs(s, plan);
  Profiler prof(progs.prefill, progs.decode, p, 2);
  prof.set_keep_timeline(true);
  prof.set_region_names({{plan.find("tok_embd").base, "tok_embd"}});
  prof.prefill(0, 20);  // 8 + 8 + 4 rows
  prof.decode(20);
  prof.decode(21);
  const Totals& t = prof.totals();
  EXPECT_EQ(t.prefill_runs, 3u);
  EXPECT_EQ(t.prefill_tokens, 20u);
  EXPECT_EQ(t.decode_runs, 2u);
  EXPECT_NEAR(t.overhead_ns, 5 * 3000.0, 1e-6);
  const std::string trace = prof.chrome_trace();
  for (const char* needle : {"\"traceEvents\"", "HBM stream", "matrix engine", "vector engine",
                             "ring link", "decode @21", "prefill 16..19", "tok_embd",
                             "device 1 (test)", "host (run overhead)"})
    EXPECT_NE(trace.find(needle), std::string::npos) << needle;
  prof.reset();
  EXPECT_EQ(prof.totals().decode_runs, 0u);
  EXPECT_EQ(prof.chrome_trace().find("decode @21"), std::string::npos);
}
