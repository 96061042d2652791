// The instructions the passes emit compute exactly what the unfused sequences
// compute: the GLU epilogue, the fused argmax, PREFETCH (no values change) and
// the ring of one device.
#include <gtest/gtest.h>

#include <cstring>
#include <random>

#include "common/error.h"
#include "common/fp16.h"
#include "emu/emulator.h"
#include "test_util.h"

using namespace hyperdex;
using namespace hyperdex::emu;
using namespace hyperdex::isa;

namespace {

constexpr uint32_t kChannels = 4;

class PassesTest : public ::testing::Test {
 protected:
  void SetUp() override {
    DeviceLayout layout;
    layout.channel_bytes.assign(kChannels, 1u << 20);
    layout.io_base = 1u << 19;
    layout.io_bytes = 1u << 18;
    emu_ = std::make_unique<Emulator>(hyperdex::testing::small_preset(kChannels), 2);
    emu_->allocate(layout);
    io_base_ = layout.io_base;
  }
  // Random fp16 rows striped from `base`; returns the region.
  HbmRegion put_rows(uint64_t base, uint32_t rows, uint32_t cols, uint32_t row_bytes, uint32_t seed,
                     float scale) {
    std::mt19937 rng(seed);
    std::normal_distribution<float> d(0.0f, scale);
    for (uint32_t r = 0; r < rows; ++r) {
      std::vector<uint16_t> h(row_bytes / 2, 0);
      for (uint32_t j = 0; j < cols; ++j) h[j] = float_to_half(d(rng));
      emu_->write(r % kChannels, base + (r / kChannels) * row_bytes, h.data(), row_bytes);
    }
    return HbmRegion{base, row_bytes, rows};
  }
  // Copies `rows` striped rows from one region to another (to build a concatenation).
  void copy_rows(const HbmRegion& from, uint32_t first, uint32_t rows, uint64_t to_base,
                 uint32_t to_first) {
    std::vector<uint8_t> row(from.row_bytes);
    for (uint32_t r = 0; r < rows; ++r) {
      const uint32_t a = first + r, b = to_first + r;
      emu_->read(a % kChannels, from.base + (a / kChannels) * from.row_bytes, row.data(), row.size());
      emu_->write(b % kChannels, to_base + (b / kChannels) * from.row_bytes, row.data(), row.size());
    }
  }
  std::vector<uint8_t> run_and_read(const std::vector<Instruction>& code, uint32_t T,
                                    uint64_t offset, size_t bytes) {
    Program p;
    p.max_tokens = 4;
    p.lmem_bytes = 1u << 16;
    p.code = code;
    emu_->load_program(ProgramSlot::Prefill, p);
    emu_->start(ProgramSlot::Prefill, RunArgs{0, T});
    std::vector<uint8_t> out(bytes);
    emu_->read_lmem(offset, out.data(), bytes);
    return out;
  }
  static Instruction embed(Operand dst, HbmRegion table, uint32_t width) {
    Instruction in;
    in.op = Opcode::Embed;
    in.dst = dst;
    in.a = Operand{Space::Io, 0, 1};
    in.w0 = table;
    in.n = width;
    in.f0 = 1.0f;
    return in;
  }
  void put_ids(const std::vector<int32_t>& ids) { emu_->write(0, io_base_, ids.data(), ids.size() * 4); }

  std::unique_ptr<Emulator> emu_;
  uint64_t io_base_ = 0;
};

}  // namespace

TEST_F(PassesTest, GluEpilogueEqualsGateUpAndMul) {
  const uint32_t T = 3, k = 40, n = 37;  // n not a multiple of 32: biases span two rows
  HbmRegion x = put_rows(0, 4, k, 128, 1, 1.0f);
  HbmRegion gate = put_rows(8192, n, k, 128, 2, 0.3f), up = put_rows(16384, n, k, 128, 3, 0.3f);
  HbmRegion gate_b = put_rows(24576, 2, 32, 64, 4, 0.5f), up_b = put_rows(26624, 2, 32, 64, 5, 0.5f);
  // The fused region: gate rows then up rows; the fused bias: gate's n then up's n.
  HbmRegion both{32768, 128, 2 * n};
  copy_rows(gate, 0, n, both.base, 0);
  copy_rows(up, 0, n, both.base, n);
  std::vector<uint16_t> gb(64), ub(64), fb(4 * 32, 0);
  for (uint32_t r = 0; r < 2; ++r) {
    emu_->read(r % kChannels, gate_b.base + (r / kChannels) * 64, gb.data() + r * 32, 64);
    emu_->read(r % kChannels, up_b.base + (r / kChannels) * 64, ub.data() + r * 32, 64);
  }
  std::memcpy(fb.data(), gb.data(), n * 2);
  std::memcpy(fb.data() + n, ub.data(), n * 2);
  HbmRegion both_b{65536, 64, 3};
  for (uint32_t r = 0; r < 3; ++r)
    emu_->write(r % kChannels, both_b.base + (r / kChannels) * 64, fb.data() + r * 32, 64);
  put_ids({0, 1, 2});

  const Operand X{Space::Lmem, 0, 64}, F1{Space::Lmem, 1024, 96}, F2{Space::Lmem, 1024 + n * 2, 96};
  for (ActKind act : {ActKind::Silu, ActKind::GeluTanh, ActKind::Relu}) {
    Instruction g;
    g.op = Opcode::MatMul;
    g.n = n;
    g.k = k;
    g.a = X;
    g.dst = F1;
    g.w0 = gate;
    g.w1 = gate_b;
    g.flags = kFlagHasBias;
    g.sub = uint8_t(act);
    Instruction u = g;
    u.dst = F2;
    u.w0 = up;
    u.w1 = up_b;
    u.sub = 0;
    Instruction mul;
    mul.op = Opcode::Mul;
    mul.n = n;
    mul.dst = mul.a = F1;
    mul.b = F2;
    Instruction glu = g;
    glu.flags = kFlagHasBias | kFlagGlu;
    glu.w0 = both;
    glu.w1 = both_b;
    const size_t bytes = (T - 1) * 96 * 2 + n * 2;
    auto separate = run_and_read({embed(X, x, k), g, u, mul}, T, F1.offset, bytes);
    auto fused = run_and_read({embed(X, x, k), glu}, T, F1.offset, bytes);
    for (uint32_t t = 0; t < T; ++t)
      EXPECT_EQ(std::memcmp(separate.data() + t * 192, fused.data() + t * 192, n * 2), 0)
          << "row " << t << " act " << int(act);
  }
}

TEST_F(PassesTest, FusedArgmaxPrefetchAndRingOfOne) {
  const uint32_t k = 32, vocab = 100;
  HbmRegion x = put_rows(0, 4, k, 64, 6, 1.0f), head = put_rows(8192, vocab, k, 64, 7, 1.0f);
  HbmRegion bias = put_rows(20480, 1, 32, 64, 8, 1.0f);
  put_ids({2, 3});
  const Operand X{Space::Lmem, 0, 32}, Y{Space::Lmem, 512, 32};
  const Operand logits{Space::Io, 1024, vocab}, am{Space::Io, 512, 1}, am2{Space::Io, 516, 1};
  Instruction mm;
  mm.op = Opcode::MatMul;
  mm.flags = kFlagOutF32 | kFlagLogitRows | kFlagArgmax;
  mm.n = vocab;
  mm.k = k;
  mm.a = X;
  mm.dst = logits;
  mm.w0 = head;
  mm.b = am;
  Instruction argmax;
  argmax.op = Opcode::Argmax;
  argmax.flags = kFlagLogitRows;
  argmax.dst = am2;
  argmax.a = logits;
  argmax.n = vocab;
  Instruction pf;
  pf.op = Opcode::Prefetch;
  pf.w0 = head;
  // A ring of one: the sum is the device's own rows, then bias and residual.
  Instruction ar;
  ar.op = Opcode::AllReduce;
  ar.flags = kFlagHasBias | kFlagHasResidual;
  ar.n = 32;
  ar.i0 = 4;
  ar.i1 = 1;
  ar.a = X;
  ar.b = X;
  ar.dst = Y;
  ar.w1 = bias;
  Instruction add_bias;
  add_bias.op = Opcode::Bias;
  add_bias.n = 32;
  add_bias.a = X;
  add_bias.dst = Y;
  add_bias.w1 = bias;
  Instruction add;
  add.op = Opcode::Add;
  add.n = 32;
  add.dst = add.a = Y;
  add.b = X;
  auto ring = run_and_read({embed(X, x, k), pf, mm, argmax, ar}, 2, Y.offset, 128);
  int32_t fused = -1, plain = -2;
  emu_->read(0, io_base_ + am.offset, &fused, 4);
  emu_->read(0, io_base_ + am2.offset, &plain, 4);
  EXPECT_EQ(fused, plain);
  auto sequence = run_and_read({embed(X, x, k), add_bias, add}, 2, Y.offset, 128);
  EXPECT_EQ(ring, sequence);
  // A program for a ring of two is refused by the one-device emulator.
  ar.i1 = 2;
  EXPECT_THROW(run_and_read({embed(X, x, k), ar}, 2, Y.offset, 64), DeviceError);
}
