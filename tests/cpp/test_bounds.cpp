// Overflow-safe bounds (common/bounds.h) and the hostile artifacts they stop: memory
// maps, programs and tensors whose offsets and sizes wrap round 2^64 when added or
// multiplied. Each must end in the core's error with a message naming the field, never
// in a crash (the sanitizer build runs these too).
#include <gtest/gtest.h>

#include <cstring>
#include <limits>
#include <map>
#include <string>
#include <vector>

#include "common/bounds.h"
#include "common/error.h"
#include "emu/emulator.h"
#include "isa/isa.h"
#include "mapper/param_writer.h"
#include "runtime/session.h"
#include "test_compiled.h"
#include "test_util.h"
#include "xrt/sim_board.h"

using namespace hyperdex;

namespace {

constexpr uint64_t kMax = std::numeric_limits<uint64_t>::max();

// The message of the exception `fn` throws as E (fails the test if it throws nothing or
// something else).
template <typename E, typename Fn>
std::string message_of(Fn&& fn) {
  try {
    fn();
  } catch (const E& e) {
    return e.what();
  }
  ADD_FAILURE() << "expected an exception";
  return {};
}

bool contains(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

// -- the helper -------------------------------------------------------------------------------

TEST(Bounds, FitsHasNoWrappingSum) {
  EXPECT_TRUE(fits(0, 0, 0));
  EXPECT_TRUE(fits(0, 10, 10));
  EXPECT_TRUE(fits(4, 6, 10));
  EXPECT_TRUE(fits(10, 0, 10));
  EXPECT_FALSE(fits(11, 0, 10));
  EXPECT_FALSE(fits(5, 6, 10));
  EXPECT_FALSE(fits(0, 11, 10));
  // offset + length wraps to 0 or to a small number: still outside
  EXPECT_FALSE(fits(kMax - 7, 8, 4096));
  EXPECT_FALSE(fits(kMax - 7, 16, 4096));
  EXPECT_FALSE(fits(8, kMax - 7, 4096));
  EXPECT_TRUE(fits(kMax - 8, 8, kMax));
  EXPECT_TRUE(fits(0, kMax, kMax));
  EXPECT_FALSE(fits(1, kMax, kMax));
}

TEST(Bounds, CheckedRemembersAnOverflow) {
  const Checked a = uint64_t(1) << 63;
  EXPECT_TRUE(a.ok());
  EXPECT_FALSE((a * 2).ok());
  EXPECT_FALSE((a + a).ok());
  EXPECT_TRUE((a + (a.value() - 1)).ok());
  EXPECT_EQ((Checked(3) * 4 + 5).value(), 17u);
  // once overflowed, it stays so whatever follows
  const Checked bad = Checked(kMax) + 1;
  EXPECT_FALSE(bad.ok());
  EXPECT_FALSE((bad * 0).ok());
  EXPECT_FALSE(fits(Checked(0), bad, kMax));
  EXPECT_FALSE(fits(bad, Checked(0), kMax));
  // n = k = 2^31 token rows of width n * k fp16 elements: 2^64 bytes, not 0
  EXPECT_FALSE(fits(Checked(0), Checked(uint64_t(1) << 31) * (uint64_t(1) << 31) * 2 * 2, 1 << 20));
  EXPECT_FALSE(align_up_checked(kMax - 2, 64).ok());
  EXPECT_EQ(align_up_checked(65, 64).value(), 128u);
}

// -- a memory map whose I/O segment wraps -----------------------------------------------------

TEST(HostileMemoryMap, IoOffsetNear2To64IsALayoutError) {
  const DevicePreset preset = hyperdex::testing::small_preset(4, 1 << 20);
  DeviceLayout layout;
  layout.channel_bytes.assign(4, 1 << 20);
  layout.io_base = kMax - 7;  // io_base + io_bytes wraps to 4088
  layout.io_bytes = 4096;
  const std::string msg =
      message_of<DeviceError>([&] { check_layout(layout, preset, "the device"); });
  EXPECT_TRUE(contains(msg, "I/O region")) << msg;
  EXPECT_TRUE(contains(msg, std::to_string(kMax - 7))) << msg;
  emu::Emulator emu(preset, 1);
  EXPECT_THROW(emu.allocate(layout), DeviceError);
}

TEST(HostileMemoryMap, IoOffsetNear2To64FailsTheSessionCleanly) {
  hyperdex::testing::CompiledTiny model("bounds_io", 4, 16, 4);
  SessionConfig config = model.config;
  config.layout.io_base = kMax - 7;  // segments.io.offset = 2^64 - 8, as the JSON edit gives
  config.io.base = kMax - 7;
  const std::string msg = message_of<FormatError>(
      [&] { Session s(std::make_unique<emu::Emulator>(model.preset, 1), config); });
  EXPECT_TRUE(contains(msg, "segments.io")) << msg;
  EXPECT_TRUE(contains(msg, "pseudo-channel 0")) << msg;
  EXPECT_TRUE(contains(msg, "recompile")) << msg;
}

TEST(HostileMemoryMap, IoBuffersOutsideTheIoSegmentFailTheSession) {
  hyperdex::testing::CompiledTiny model("bounds_iobuf", 4, 16, 4);
  SessionConfig config = model.config;
  config.io.logits_offset = std::numeric_limits<uint32_t>::max();
  const std::string msg = message_of<FormatError>(
      [&] { Session s(std::make_unique<emu::Emulator>(model.preset, 1), config); });
  EXPECT_TRUE(contains(msg, "segments.io.logits_offset")) << msg;
}

TEST(HostileMemoryMap, WeightSegmentLargerThanAChannelFailsTheSession) {
  hyperdex::testing::CompiledTiny model("bounds_weights", 4, 16, 4);
  SessionConfig config = model.config;
  config.weights_bytes = kMax;
  const std::string msg = message_of<FormatError>(
      [&] { Session s(std::make_unique<emu::Emulator>(model.preset, 1), config); });
  EXPECT_TRUE(contains(msg, "segments.weights.bytes_per_channel")) << msg;
}

// The emulator's own read and write (what every host transfer goes through) check
// offset + bytes without wrapping.
TEST(HostileMemoryMap, DeviceTransfersNear2To64AreRefused) {
  const DevicePreset preset = hyperdex::testing::small_preset(2, 1 << 20);
  DeviceLayout layout;
  layout.channel_bytes.assign(2, 1 << 20);
  layout.io_base = 0;
  layout.io_bytes = 4096;
  emu::Emulator emu(preset, 1);
  emu.allocate(layout);
  std::vector<uint8_t> buf(64);
  const std::string msg =
      message_of<DeviceError>([&] { emu.write(0, kMax - 7, buf.data(), buf.size()); });
  EXPECT_TRUE(contains(msg, "outside pseudo-channel 0")) << msg;
  EXPECT_THROW(emu.read(1, kMax - 7, buf.data(), buf.size()), DeviceError);
  EXPECT_THROW(emu.read(0, 8, buf.data(), kMax - 7), DeviceError);
  EXPECT_THROW(emu.read(2, 0, buf.data(), 8), DeviceError);  // no such channel
  EXPECT_THROW(emu.read_lmem(kMax - 7, buf.data(), buf.size()), DeviceError);
  EXPECT_THROW(emu.write_lmem(kMax - 7, buf.data(), buf.size()), DeviceError);
  emu.write(1, (1 << 20) - 64, buf.data(), buf.size());  // the last bytes are fine
  EXPECT_THROW(emu.exchange(emu, 0, kMax - 7, 64), DeviceError);

  board::SimBoard sim(preset, 1);
  const board::BufferHandle bo = sim.alloc(64, 0);
  EXPECT_THROW(sim.write(bo, kMax - 7, buf.data(), 16), DeviceError);
  EXPECT_THROW(sim.read(bo, kMax - 7, buf.data(), 16), DeviceError);
  EXPECT_THROW(sim.sync(bo, board::SyncDirection::ToDevice, kMax - 7, 16), DeviceError);
}

// -- a KV cache region near 2^64 (the prefix cache's save/restore path) ----------------------

TEST(HostileMemoryMap, KvRegionNear2To64FailsTheSessionNamingTheRegion) {
  hyperdex::testing::CompiledTiny model("bounds_kv", 4, 16, 4);
  SessionConfig config = model.config;
  ASSERT_GE(config.kv_regions.size(), 2u);
  KvRegion& r = config.kv_regions[1];
  r.base = kMax - 63;  // base + rows * row_bytes wraps to a small number
  const std::string msg = message_of<FormatError>(
      [&] { Session s(std::make_unique<emu::Emulator>(model.preset, 1), config); });
  EXPECT_TRUE(contains(msg, "KV cache region '" + r.name + "'")) << msg;
  EXPECT_TRUE(contains(msg, std::to_string(kMax - 63))) << msg;
  // unnamed (a config made without names): its index
  r.name.clear();
  const std::string msg2 = message_of<FormatError>(
      [&] { Session s(std::make_unique<emu::Emulator>(model.preset, 1), config); });
  EXPECT_TRUE(contains(msg2, "KV cache region #1")) << msg2;
}

TEST(HostileMemoryMap, KvRegionPastItsChannelFailsTheSession) {
  hyperdex::testing::CompiledTiny model("bounds_kv_end", 4, 16, 4);
  SessionConfig config = model.config;
  // rows * row_bytes past the channel without any wrap: still caught at load
  config.kv_regions.back().base = config.layout.channel_bytes[1] - 64;
  EXPECT_THROW(Session(std::make_unique<emu::Emulator>(model.preset, 1), config), FormatError);
}

// The save/restore itself: with a valid map it round-trips; the device transfer it is made
// of refuses a wrapping offset, so no KV base that slipped past the load could reach memory.
TEST(HostileMemoryMap, PrefixCacheSaveRestoreStaysInsideTheChannels) {
  hyperdex::testing::CompiledTiny model("bounds_kv_rt", 4, 16, 4);
  Session s(std::make_unique<emu::Emulator>(model.preset, 1), model.config);
  const auto ids = model.prompt(5);
  s.prefill(ids.data(), 5, false, nullptr);
  std::vector<uint16_t> kv(size_t(s.kv_region_count()) * 5 * s.kv_cols());
  s.read_kv(0, 5, kv.data());
  s.write_kv(0, 5, kv.data());
  EXPECT_EQ(s.position(), 5u);
  std::vector<uint8_t> row(64);
  EXPECT_THROW(s.device().read(1, kMax - 63, row.data(), 128), DeviceError);
  EXPECT_THROW(s.device().write(1, kMax - 63, row.data(), 64 + 1), DeviceError);
}

// -- a CRC-valid program whose KV region wraps ------------------------------------------------

TEST(HostileProgram, WrappingKvRegionIsRejectedAtLoad) {
  hyperdex::testing::CompiledTiny model("bounds_prog", 4, 40, 4);
  isa::Program decode = isa::load_program(model.config.decode_path);
  size_t at = decode.code.size();
  for (size_t i = 0; i < decode.code.size(); ++i)
    if (decode.code[i].op == isa::Opcode::KvStore) {
      at = i;
      break;
    }
  ASSERT_LT(at, decode.code.size());
  // 8 rows of 2 GiB per channel from 2^64 - 16 GiB: base + 16 GiB wraps to exactly 0,
  // which the old check took for "inside"; KVSTORE then wrote 16 GiB before the buffer.
  isa::HbmRegion& w = decode.code[at].w0;
  w.base = kMax - (uint64_t(16) << 30) + 1;
  w.row_bytes = 1u << 31;
  w.rows = 4 * 8;
  isa::save_program(decode, model.config.decode_path);  // a fresh, valid CRC
  EXPECT_EQ(isa::load_program(model.config.decode_path).code[at].w0.base, w.base);

  const std::string msg = message_of<FormatError>(
      [&] { Session s(std::make_unique<emu::Emulator>(model.preset, 1), model.config); });
  EXPECT_TRUE(contains(msg, "instruction " + std::to_string(at) + " (KVSTORE)")) << msg;
  EXPECT_TRUE(contains(msg, "HBM region w0")) << msg;
  EXPECT_TRUE(contains(msg, "past the allocation")) << msg;
}

// -- check_operand / check_region with extents that wrap when multiplied ----------------------

class HostileInstruction : public ::testing::Test {
 protected:
  void SetUp() override {
    layout_.channel_bytes.assign(4, 1 << 20);
    layout_.io_base = (1 << 20) - 8192;
    layout_.io_bytes = 8192;
    program_.kind = isa::ProgramKind::Decode;
    program_.max_tokens = 1;
    program_.lmem_bytes = 4 << 20;
  }
  std::string rejection(const isa::Instruction& in, uint32_t max_tokens = 1) {
    program_.code = {in};
    program_.max_tokens = max_tokens;
    emu::Emulator emu(preset_, 1);
    emu.allocate(layout_);
    return message_of<FormatError>([&] { emu.load_program(ProgramSlot::Decode, program_); });
  }
  static isa::Instruction rope(uint32_t n, uint32_t k) {
    isa::Instruction in;
    in.op = isa::Opcode::Rope;
    in.n = n;
    in.k = k;
    in.i0 = 2;  // rotates two values of every head: writes
    in.dst = isa::Operand{isa::Space::Lmem, 0, 0};
    in.w0 = isa::HbmRegion{0, 64, 64};
    return in;
  }

  DevicePreset preset_ = hyperdex::testing::small_preset(4, 1 << 20);
  DeviceLayout layout_;
  isa::Program program_;
};

TEST_F(HostileInstruction, ValidRopePasses) {
  program_.code = {rope(4, 16)};
  EXPECT_NO_THROW(emu::validate_program(program_, preset_, layout_));
}

// n * k * 2 bytes = 2^64 + 1900334: wrapped, that is under 2 MiB, inside the 4 MiB of
// on-chip memory, and ROPE then wrote through n heads of k elements.
TEST_F(HostileInstruction, RopeWhoseWidthWrapsIsRejected) {
  const uint32_t n = 2147516409u, k = 4294901775u;
  ASSERT_EQ(uint64_t(n) * k * 2, uint64_t(1900334));  // what the old check saw
  const std::string msg = rejection(rope(n, k));
  EXPECT_TRUE(contains(msg, "instruction 0 (ROPE)")) << msg;
  EXPECT_TRUE(contains(msg, "operand dst")) << msg;
  EXPECT_TRUE(contains(msg, "past its memory")) << msg;
}

// The example: n = k = 2^31 over two token rows (2^64 bytes per row).
TEST_F(HostileInstruction, RopeOfTwoHugeRowsIsRejected) {
  const std::string msg = rejection(rope(1u << 31, 1u << 31), 2);
  EXPECT_TRUE(contains(msg, "instruction 0 (ROPE)")) << msg;
  EXPECT_TRUE(contains(msg, "operand dst")) << msg;
}

// (rows - 1) * stride + width = 2^62 + 16 fp32 elements: 2^64 + 64 bytes, 64 when wrapped.
TEST_F(HostileInstruction, ArgmaxWhoseRowsWrapAreRejected) {
  isa::Instruction in;
  in.op = isa::Opcode::Argmax;
  in.n = 16;
  in.dst = isa::Operand{isa::Space::Io, 0, 1};
  in.a = isa::Operand{isa::Space::Lmem, 0, 1u << 31};
  const std::string msg = rejection(in, (1u << 31) + 1);
  EXPECT_TRUE(contains(msg, "instruction 0 (ARGMAX)")) << msg;
  EXPECT_TRUE(contains(msg, "operand a")) << msg;
}

// heads * head_dim * 2 bytes per token row (and kv_heads * head_dim * 2 per KV row) wrap
// to 1900334: neither the operands nor the KV rows may pass for short ones.
TEST_F(HostileInstruction, AttentionWhoseKvRowWrapsIsRejected) {
  isa::Instruction in;
  in.op = isa::Opcode::Attention;
  in.n = 2147516409u;
  in.i0 = 2147516409u;  // one KV head per head
  in.k = 4294901775u;
  in.f0 = 1.0f;
  in.dst = isa::Operand{isa::Space::Lmem, 0, 0};
  in.a = isa::Operand{isa::Space::Lmem, 0, 0};
  in.w0 = isa::HbmRegion{0, 1u << 21, 4};
  in.w1 = isa::HbmRegion{0, 1u << 21, 4};
  const std::string msg = rejection(in);
  EXPECT_TRUE(contains(msg, "instruction 0 (ATTN)")) << msg;
}

TEST_F(HostileInstruction, IoOperandPastTheIoSegmentIsRejected) {
  isa::Instruction in;
  in.op = isa::Opcode::Argmax;
  in.n = 16;
  in.dst = isa::Operand{isa::Space::Io, 8190, 1};  // 4 bytes from 8190: past 8192
  in.a = isa::Operand{isa::Space::Lmem, 0, 16};
  const std::string msg = rejection(in);
  EXPECT_TRUE(contains(msg, "I/O offset 8190")) << msg;
}

TEST_F(HostileInstruction, RegionBaseNear2To64IsRejected) {
  isa::Instruction in = rope(4, 16);
  in.w0.base = kMax - 63;
  const std::string msg = rejection(in);
  EXPECT_TRUE(contains(msg, "HBM region w0")) << msg;
  EXPECT_TRUE(contains(msg, "past the allocation")) << msg;
}

// -- tensors whose row counts wrap when summed (the compiler's parameter writer) --------------

TEST(HostileTensors, NegativeRowCountsAreRejected) {
  const ModelSpec spec = hyperdex::testing::tiny_llama();
  const DevicePreset preset = hyperdex::testing::small_preset(4);
  const MemoryPlan plan = plan_memory(spec, preset, 16, 4);
  const Region& qkv = plan.find("blk.0.attn_qkv");
  const int64_t H = spec.hidden_size;
  std::vector<uint16_t> zeros(size_t(qkv.rows + 1) * H + size_t(spec.vocab_size) * H, 0);
  // q: -1 rows, k: rows + 1: as uint64 the sum is the region's rows.
  std::map<std::string, TensorView> tensors = {
      {"tok_embd.weight", TensorView{zeros.data(), {spec.vocab_size, H}}},
      {"blk.0.attn_norm.weight", TensorView{zeros.data(), {H}}},
      {"blk.0.attn_q.weight", TensorView{zeros.data(), {-1, H}}},
      {"blk.0.attn_k.weight", TensorView{zeros.data(), {int64_t(qkv.rows) + 1, H}}},
      {"blk.0.attn_v.weight", TensorView{zeros.data(), {0, H}}},
  };
  const std::string dir = ::testing::TempDir();
  const std::string msg = message_of<SpecError>([&] {
    write_params(spec, plan, [&](const std::string& name) {
      auto it = tensors.find(name);
      if (it == tensors.end()) throw SpecError("no tensor " + name);
      return it->second;
    }, dir);
  });
  EXPECT_TRUE(contains(msg, "blk.0.attn_q.weight")) << msg;
  EXPECT_TRUE(contains(msg, "[-1, " + std::to_string(H) + "]")) << msg;

  tensors["blk.0.attn_q.weight"] = TensorView{zeros.data(), {0, H}};
  tensors["blk.0.attn_norm.weight"] = TensorView{zeros.data(), {-3}};
  EXPECT_THROW(write_params(spec, plan, [&](const std::string& name) {
    auto it = tensors.find(name);
    if (it == tensors.end()) throw SpecError("no tensor " + name);
    return it->second;
  }, dir), SpecError);
}

}  // namespace
