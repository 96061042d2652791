// The emulator against the ISA's numerics: each instruction checked against a
// reference written from docs/isa.md, plus the run-time errors.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>

#include "common/error.h"
#include "common/fp16.h"
#include "emu/emulator.h"
#include "emu/kernels.h"
#include "test_util.h"

using namespace hyperdex;
using namespace hyperdex::emu;
using namespace hyperdex::isa;

namespace {

constexpr uint32_t kChannels = 4;

// A device with one striped table region per test, filled row by row.
class EmuTest : public ::testing::Test {
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

  // Writes fp16 rows into a striped region starting at `base`.
  HbmRegion put_rows(uint64_t base, const std::vector<std::vector<float>>& rows, uint32_t row_bytes) {
    for (uint32_t r = 0; r < rows.size(); ++r) {
      std::vector<uint16_t> h(row_bytes / 2, 0);
      for (size_t j = 0; j < rows[r].size(); ++j) h[j] = float_to_half(rows[r][j]);
      emu_->write(r % kChannels, base + (r / kChannels) * row_bytes, h.data(), row_bytes);
    }
    return HbmRegion{base, row_bytes, uint32_t(rows.size())};
  }
  void put_ids(const std::vector<int32_t>& ids) {
    emu_->write(0, io_base_, ids.data(), ids.size() * 4);
  }
  std::vector<float> lmem_row(const Operand& o, uint32_t t, uint32_t n) {
    std::vector<uint16_t> h(n);
    emu_->read_lmem(o.offset + uint64_t(t) * o.stride * 2, h.data(), n * 2);
    std::vector<float> f(n);
    for (uint32_t j = 0; j < n; ++j) f[j] = half_to_float(h[j]);
    return f;
  }
  void run(const std::vector<Instruction>& code, RunArgs args, uint32_t max_tokens = 8) {
    Program p;
    p.max_tokens = max_tokens;
    p.lmem_bytes = 1u << 16;
    p.code = code;
    emu_->load_program(ProgramSlot::Prefill, p);
    emu_->start(ProgramSlot::Prefill, args);
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
  static std::vector<std::vector<float>> random_rows(size_t rows, size_t cols, uint32_t seed, float scale = 1.0f) {
    std::mt19937 rng(seed);
    std::normal_distribution<float> d(0.0f, scale);
    std::vector<std::vector<float>> m(rows, std::vector<float>(cols));
    for (auto& r : m)
      for (auto& v : r) v = half_to_float(float_to_half(d(rng)));
    return m;
  }

  std::unique_ptr<Emulator> emu_;
  uint64_t io_base_ = 0;
};

float round16(float v) { return half_to_float(float_to_half(v)); }

}  // namespace

TEST_F(EmuTest, MatMulEpilogueRoundsAfterEachStage) {
  const uint32_t T = 3, k = 50, n = 37;
  auto x = random_rows(T, k, 1), res = random_rows(T, n, 2), w = random_rows(n, k, 3, 0.2f);
  auto bias = random_rows(1, n, 4)[0];
  HbmRegion xt = put_rows(0, x, 128), rt = put_rows(4096, res, 128), wt = put_rows(8192, w, 128);
  std::vector<std::vector<float>> bias_rows(2, std::vector<float>(32, 0.0f));
  for (uint32_t j = 0; j < n; ++j) bias_rows[j / 32][j % 32] = bias[j];
  HbmRegion bt = put_rows(16384, bias_rows, 64);
  put_ids({0, 1, 2});
  Operand X{Space::Lmem, 0, 64}, R{Space::Lmem, 1024, 64}, Y{Space::Lmem, 2048, 40};
  Instruction mm;
  mm.op = Opcode::MatMul;
  mm.flags = kFlagHasBias | kFlagHasResidual;
  mm.sub = uint8_t(ActKind::GeluTanh);
  mm.dst = Y;
  mm.a = X;
  mm.b = R;
  mm.w0 = wt;
  mm.w1 = bt;
  mm.n = n;
  mm.k = k;
  run({embed(X, xt, k), embed(R, rt, n), mm}, RunArgs{0, T});

  const Kernels& scalar = kernels_for(KernelLevel::Scalar);
  for (uint32_t t = 0; t < T; ++t) {
    auto got = lmem_row(Y, t, n);
    for (uint32_t j = 0; j < n; ++j) {
      std::vector<uint16_t> wr(k);
      for (uint32_t i = 0; i < k; ++i) wr[i] = float_to_half(w[j][i]);
      float v = round16(scalar.dot_f16(wr.data(), x[t].data(), k));
      v = round16(v + bias[j]);
      v = round16(0.5f * v * (1.0f + std::tanh(0.7978845608028654f * (v + 0.044715f * v * v * v))));
      v = round16(v + res[t][j]);
      ASSERT_EQ(got[j], v) << "t=" << t << " j=" << j;
    }
  }
}

TEST_F(EmuTest, RmsNormMatchesReference) {
  const uint32_t n = 48;
  auto x = random_rows(2, n, 5, 3.0f);
  auto gamma = random_rows(1, 64, 6)[0];
  HbmRegion xt = put_rows(0, x, 128);
  HbmRegion gt = put_rows(4096, {std::vector<float>(gamma.begin(), gamma.begin() + 32),
                                 std::vector<float>(gamma.begin() + 32, gamma.end())}, 64);
  put_ids({0, 1});
  Operand X{Space::Lmem, 0, 64}, Y{Space::Lmem, 1024, 64};
  Instruction norm;
  norm.op = Opcode::Norm;
  norm.sub = uint8_t(NormKind::RmsNorm);
  norm.dst = Y;
  norm.a = X;
  norm.w0 = gt;
  norm.n = n;
  norm.f0 = 1e-6f;
  run({embed(X, xt, n), norm}, RunArgs{0, 2});
  for (uint32_t t = 0; t < 2; ++t) {
    double ms = 0;
    for (float v : x[t]) ms += double(v) * v;
    double rstd = 1.0 / std::sqrt(ms / n + 1e-6);
    auto got = lmem_row(Y, t, n);
    for (uint32_t j = 0; j < n; ++j) EXPECT_NEAR(got[j], x[t][j] * rstd * gamma[j], 2e-3 * (1 + std::fabs(got[j])));
  }
}

TEST_F(EmuTest, AttentionIsCausalWithGroupedKv) {
  const uint32_t T = 5, heads = 4, kv = 2, hd = 16;
  auto q = random_rows(T, heads * hd, 7), k = random_rows(T, kv * hd, 8), v = random_rows(T, kv * hd, 9);
  HbmRegion qt = put_rows(0, q, 128), kt = put_rows(4096, k, 64), vt = put_rows(8192, v, 64);
  HbmRegion kc{16384, 64, 16}, vc{32768, 64, 16};
  put_ids({0, 1, 2, 3, 4});
  Operand Q{Space::Lmem, 0, 64}, K{Space::Lmem, 1024, 32}, V{Space::Lmem, 2048, 32}, O{Space::Lmem, 4096, 64};
  Instruction store;
  store.op = Opcode::KvStore;
  store.a = K;
  store.b = V;
  store.w0 = kc;
  store.w1 = vc;
  store.n = kv * hd;
  Instruction attn;
  attn.op = Opcode::Attention;
  attn.dst = O;
  attn.a = Q;
  attn.n = heads;
  attn.k = hd;
  attn.i0 = kv;
  attn.f0 = 0.25f;
  attn.w0 = kc;
  attn.w1 = vc;
  run({embed(Q, qt, heads * hd), embed(K, kt, kv * hd), embed(V, vt, kv * hd), store, attn}, RunArgs{0, T});
  for (uint32_t t = 0; t < T; ++t) {
    auto got = lmem_row(O, t, heads * hd);
    for (uint32_t h = 0; h < heads; ++h) {
      const uint32_t g = h / (heads / kv);
      std::vector<double> s(t + 1);
      double mx = -1e30, sum = 0;
      for (uint32_t j = 0; j <= t; ++j) {
        double d = 0;
        for (uint32_t i = 0; i < hd; ++i) d += double(q[t][h * hd + i]) * k[j][g * hd + i];
        s[j] = d * 0.25;
        mx = std::max(mx, s[j]);
      }
      for (auto& e : s) sum += (e = std::exp(e - mx));
      for (uint32_t i = 0; i < hd; ++i) {
        double o = 0;
        for (uint32_t j = 0; j <= t; ++j) o += s[j] / sum * v[j][g * hd + i];
        EXPECT_NEAR(got[h * hd + i], o, 2e-3 * (1 + std::fabs(o))) << "t=" << t << " h=" << h;
      }
    }
  }
}

TEST_F(EmuTest, RunTimeErrorsAreReported) {
  HbmRegion table = put_rows(0, random_rows(4, 32, 10), 64);
  Operand X{Space::Lmem, 0, 32};
  put_ids({7});
  EXPECT_THROW(run({embed(X, table, 32)}, RunArgs{0, 1}), DeviceError);  // id past the table
  put_ids({1, 2, 3});
  Instruction store;
  store.op = Opcode::KvStore;
  store.a = X;
  store.b = X;
  store.w0 = HbmRegion{16384, 64, 4};
  store.w1 = HbmRegion{32768, 64, 4};
  store.n = 32;
  EXPECT_THROW(run({embed(X, table, 32), store}, RunArgs{2, 3}), DeviceError);  // past max_length
  EXPECT_THROW(run({embed(X, table, 32)}, RunArgs{0, 9}), DeviceError);         // too many rows
}

TEST_F(EmuTest, ValidationRejectsOutOfBoundsPrograms) {
  HbmRegion table = put_rows(0, random_rows(4, 32, 11), 64);
  Instruction bad = embed(Operand{Space::Lmem, (1u << 16) - 8, 32}, table, 32);
  EXPECT_THROW(run({bad}, RunArgs{0, 1}), FormatError);
  Instruction far = embed(Operand{Space::Lmem, 0, 32}, HbmRegion{(1u << 20) - 64, 64, 8}, 32);
  EXPECT_THROW(run({far}, RunArgs{0, 1}), FormatError);
}

TEST_F(EmuTest, InterruptStopsTheRun) {
  HbmRegion table = put_rows(0, random_rows(4, 32, 12), 64);
  put_ids({1});
  emu_->set_interrupt_check([] { return true; });
  EXPECT_THROW(run({embed(Operand{Space::Lmem, 0, 32}, table, 32)}, RunArgs{0, 1}), Interrupted);
}
