// Regressions for what the fuzz harnesses (tests/fuzz) found in the core: each input reduced
// to the instruction or field that mattered. Every one must end in the core's own error (or
// a well-defined result), never in an out-of-bounds access, undefined behaviour or a hang;
// the sanitizer build (make cpp-sanitize) runs these too.
#include <gtest/gtest.h>

#include <chrono>
#include <cmath>
#include <memory>
#include <string>
#include <vector>

#include "common/error.h"
#include "cost/cost_model.h"
#include "cost/profiler.h"
#include "emu/emulator.h"
#include "isa/isa.h"
#include "runtime/session.h"
#include "test_compiled.h"
#include "test_util.h"

using namespace hyperdex;

namespace {

bool has(const std::string& text, const std::string& part) { return text.find(part) != std::string::npos; }

constexpr uint64_t kChannelBytes = 1 << 20;

// One instruction checked by the emulator against 4 channels of 1 MiB (the I/O segment the
// last 8 KiB of channel 0); the FormatError's message, or "" when the program is accepted.
class FuzzedInstruction : public ::testing::Test {
 protected:
  void SetUp() override {
    layout_.channel_bytes.assign(4, kChannelBytes);
    layout_.io_base = kChannelBytes - 8192;
    layout_.io_bytes = 8192;
  }
  isa::Program program(const isa::Instruction& in, uint32_t max_tokens = 1) const {
    isa::Program p;
    p.kind = isa::ProgramKind::Decode;
    p.max_tokens = max_tokens;
    p.lmem_bytes = 4 << 20;
    p.code = {in};
    return p;
  }
  std::string rejection(const isa::Instruction& in) {
    emu::Emulator emu(preset_, 1);
    emu.allocate(layout_);
    try {
      emu.load_program(ProgramSlot::Decode, program(in));
    } catch (const FormatError& e) {
      return e.what();
    }
    return "";
  }

  DevicePreset preset_ = hyperdex::testing::small_preset(4, kChannelBytes);
  DeviceLayout layout_;
};

// The last 64-byte row of channel 0: a region of one row there is inside the allocation,
// but row r of a longer read lies past the end of channel r % 4.
const isa::HbmRegion kLastRow{kChannelBytes - 64, 64, 1};

// BIAS read n = 1024 bias values (32 rows) from a region of one row: 31 rows past it, off
// the end of the channels' buffers.
TEST_F(FuzzedInstruction, BiasShorterThanNIsRejected) {
  isa::Instruction in;
  in.op = isa::Opcode::Bias;
  in.n = 1024;
  in.dst = isa::Operand{isa::Space::Lmem, 0, 1024};
  in.a = isa::Operand{isa::Space::Lmem, 4096, 1024};
  in.w1 = kLastRow;
  const std::string msg = rejection(in);
  EXPECT_TRUE(has(msg, "instruction 0 (BIAS)")) << msg;
  EXPECT_TRUE(has(msg, "bias shorter than n")) << msg;
}

// NORM's beta was read for all n values; only gamma's length was checked.
TEST_F(FuzzedInstruction, NormBetaShorterThanNIsRejected) {
  isa::Instruction in;
  in.op = isa::Opcode::Norm;
  in.flags = isa::kFlagHasBias;
  in.n = 1024;
  in.f0 = 1e-5f;
  in.dst = isa::Operand{isa::Space::Lmem, 0, 1024};
  in.a = isa::Operand{isa::Space::Lmem, 4096, 1024};
  in.w0 = isa::HbmRegion{0, 64, 32};  // gamma: 32 rows of 32 values
  in.w1 = kLastRow;
  const std::string msg = rejection(in);
  EXPECT_TRUE(has(msg, "instruction 0 (NORM)")) << msg;
  EXPECT_TRUE(has(msg, "beta shorter than n")) << msg;
}

// KVSTORE and ATTN check positions against the K cache's rows; a V cache of fewer rows was
// written and read past its end.
TEST_F(FuzzedInstruction, KvStoreWithAShorterVCacheIsRejected) {
  isa::Instruction in;
  in.op = isa::Opcode::KvStore;
  in.n = 32;
  in.a = isa::Operand{isa::Space::Lmem, 0, 32};
  in.b = isa::Operand{isa::Space::Lmem, 64, 32};
  in.w0 = isa::HbmRegion{0, 64, 64};
  in.w1 = kLastRow;
  const std::string msg = rejection(in);
  EXPECT_TRUE(has(msg, "instruction 0 (KVSTORE)")) << msg;
  EXPECT_TRUE(has(msg, "V cache (w1) shorter than its K cache")) << msg;
}

TEST_F(FuzzedInstruction, AttentionWithAShorterVCacheIsRejected) {
  isa::Instruction in;
  in.op = isa::Opcode::Attention;
  in.n = 2;
  in.i0 = 1;
  in.k = 16;
  in.f0 = 0.25f;
  in.dst = isa::Operand{isa::Space::Lmem, 0, 32};
  in.a = isa::Operand{isa::Space::Lmem, 64, 32};
  in.w0 = isa::HbmRegion{0, 64, 64};
  in.w1 = kLastRow;
  const std::string msg = rejection(in);
  EXPECT_TRUE(has(msg, "instruction 0 (ATTN)")) << msg;
  EXPECT_TRUE(has(msg, "V cache (w1) shorter than its K cache")) << msg;
}

// An int32 ARGMAX result at I/O offset 2 was stored misaligned (UBSan: misaligned store).
TEST_F(FuzzedInstruction, MisalignedOperandIsRejected) {
  isa::Instruction in;
  in.op = isa::Opcode::Argmax;
  in.n = 16;
  in.dst = isa::Operand{isa::Space::Io, 2, 1};
  in.a = isa::Operand{isa::Space::Lmem, 0, 16};
  const std::string msg = rejection(in);
  EXPECT_TRUE(has(msg, "operand dst")) << msg;
  EXPECT_TRUE(has(msg, "not a multiple of its 4-byte elements")) << msg;
}

// Region rows are read as fp16 and fp32 values: a base off the 64-byte lines docs/isa.md
// requires made every one of them misaligned.
TEST_F(FuzzedInstruction, MisalignedRegionIsRejected) {
  isa::Instruction in;
  in.op = isa::Opcode::Embed;
  in.sub = uint8_t(isa::EmbedSource::Positions);
  in.n = 32;
  in.f0 = 1.0f;
  in.dst = isa::Operand{isa::Space::Lmem, 0, 32};
  in.w0 = isa::HbmRegion{2, 64, 8};
  const std::string msg = rejection(in);
  EXPECT_TRUE(has(msg, "HBM region w0")) << msg;
  EXPECT_TRUE(has(msg, "not a multiple of 64 bytes")) << msg;
  in.w0 = isa::HbmRegion{0, 66, 8};
  EXPECT_TRUE(has(rejection(in), "not a multiple of 64 bytes"));
  in.w0 = isa::HbmRegion{0, 64, 8};
  EXPECT_EQ(rejection(in), "");
}

// The I/O segment's offset comes from the memory map; off a 64-byte line every I/O operand
// (token ids, logits) was misaligned however its own offset was.
TEST(FuzzedLayout, MisalignedIoSegmentIsALayoutError) {
  const DevicePreset preset = hyperdex::testing::small_preset(4, kChannelBytes);
  DeviceLayout layout;
  layout.channel_bytes.assign(4, kChannelBytes);
  layout.io_base = kChannelBytes - 8192 + 2;
  layout.io_bytes = 4096;
  EXPECT_THROW(check_layout(layout, preset, "the device"), DeviceError);
  emu::Emulator emu(preset, 1);
  EXPECT_THROW(emu.allocate(layout), DeviceError);
  layout.io_base -= 2;
  EXPECT_NO_THROW(emu.allocate(layout));
}

// The same from the memory map: a FormatError naming segments.io, before anything is allocated.
TEST(FuzzedLayout, MisalignedIoSegmentFailsTheSession) {
  hyperdex::testing::CompiledTiny model("fuzz_io_align", 4, 16, 4);
  SessionConfig config = model.config;
  config.layout.io_base += 2;  // still inside channel 0
  config.layout.io_bytes -= 64;
  config.io.base += 2;
  std::string msg;
  try {
    Session s(std::make_unique<emu::Emulator>(model.preset, 1), config);
  } catch (const FormatError& e) {
    msg = e.what();
  }
  EXPECT_TRUE(has(msg, "segments.io")) << msg;
  EXPECT_TRUE(has(msg, "64-byte boundary")) << msg;
}

// The trace's cycle counts converted spans of more than 2^64 cycles (a preset whose HBM
// streams at 1e-9 GB/s, as a memory map's device_preset may say) to uint64_t: undefined.
TEST(FuzzedProfiler, TraceOfSpansPast2To64CyclesSaturates) {
  DevicePreset preset = hyperdex::testing::small_preset(4, kChannelBytes);
  preset.hbm_bandwidth_gbps = 1e-9;
  isa::Instruction mm;
  mm.op = isa::Opcode::MatMul;
  mm.n = 1u << 20;
  mm.k = 32;
  mm.dst = isa::Operand{isa::Space::Lmem, 0, 0};
  mm.a = isa::Operand{isa::Space::Lmem, 0, 32};
  mm.w0 = isa::HbmRegion{0, 1u << 30, 1u << 20};
  isa::Program prefill, decode;
  prefill.kind = isa::ProgramKind::Prefill;
  decode.kind = isa::ProgramKind::Decode;
  prefill.code = decode.code = {mm};
  cost::Profiler prof(prefill, decode, preset, 1);
  prof.set_keep_timeline(true);
  prof.decode(0);
  const std::string trace = prof.chrome_trace();
  EXPECT_TRUE(has(trace, "\"cycles\":18446744073709551615")) << trace.substr(0, 2000);
}

// An ALLREDUCE cut into i0 = 2^32 - 1 chunks was priced chunk by chunk: minutes for one
// instruction of a program file (hdex-objdump). Now priced at once, with the same result as
// the chunk-by-chunk recurrence.
TEST(FuzzedCostModel, AllReduceOfBillionsOfChunksIsPricedAtOnce) {
  const DevicePreset preset = hyperdex::testing::small_preset(4, kChannelBytes);
  auto program = [](uint32_t chunks) {
    isa::Instruction mm;
    mm.op = isa::Opcode::MatMul;
    mm.n = 64;
    mm.k = 64;
    mm.dst = isa::Operand{isa::Space::Lmem, 0, 64};
    mm.a = isa::Operand{isa::Space::Lmem, 4096, 64};
    mm.w0 = isa::HbmRegion{0, 128, 64};
    isa::Instruction ar;
    ar.op = isa::Opcode::AllReduce;
    ar.n = 64;
    ar.i0 = chunks;
    ar.i1 = 2;
    ar.dst = isa::Operand{isa::Space::Lmem, 8192, 64};
    ar.a = mm.dst;  // fed by the MATMUL: the chunked path
    isa::Program p;
    p.kind = isa::ProgramKind::Decode;
    p.max_tokens = 1;
    p.code = {mm, ar};
    return p;
  };
  const auto t0 = std::chrono::steady_clock::now();
  const cost::RunCost huge = cost::CostModel(program(0xFFFFFFFFu), preset).run(RunArgs{0, 1});
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_LT(seconds, 1.0);
  ASSERT_EQ(huge.instructions.size(), 2u);
  EXPECT_TRUE(std::isfinite(huge.time_ns));
  EXPECT_GT(huge.instructions[1].end_ns, huge.instructions[0].end_ns);
  // Just past the chunk-by-chunk limit (closed form) and at it (the loop): one more chunk
  // costs one more chunk's transfer (2 us of ring latency here), nothing wild.
  const cost::RunCost above = cost::CostModel(program((1u << 16) + 1), preset).run(RunArgs{0, 1});
  const cost::RunCost at = cost::CostModel(program(1u << 16), preset).run(RunArgs{0, 1});
  EXPECT_GT(above.time_ns, at.time_ns);
  EXPECT_LT(above.time_ns - at.time_ns, 1e-4 * at.time_ns);
}

}  // namespace
