// The emulator against the ISA's numerics: each instruction checked against a
// reference written from docs/isa.md, plus the run-time errors.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <limits>
#include <numeric>
#include <random>
#include <string>

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
  // n values in 32-element rows (NORM gamma and beta, biases), as docs/isa.md stripes them.
  HbmRegion put_vector(uint64_t base, const std::vector<float>& v) {
    std::vector<std::vector<float>> rows((v.size() + 31) / 32, std::vector<float>(32, 0.0f));
    for (size_t j = 0; j < v.size(); ++j) rows[j / 32][j % 32] = v[j];
    return put_rows(base, rows, 64);
  }
  std::vector<uint16_t> lmem_bits(const Operand& o, uint32_t t, uint32_t n) {
    std::vector<uint16_t> h(n);
    emu_->read_lmem(o.offset + uint64_t(t) * o.stride * 2, h.data(), n * 2);
    return h;
  }
  // The FormatError message loading `code` gives, or "" when the program is accepted.
  std::string rejection(const std::vector<Instruction>& code) {
    Program p;
    p.max_tokens = 8;
    p.lmem_bytes = 1u << 16;
    p.code = code;
    try {
      emu_->load_program(ProgramSlot::Prefill, p);
    } catch (const FormatError& e) {
      return e.what();
    }
    return "";
  }
  std::vector<float> lmem_row(const Operand& o, uint32_t t, uint32_t n) {
    std::vector<uint16_t> h(n);
    emu_->read_lmem(o.offset + uint64_t(t) * o.stride * 2, h.data(), n * 2);
    std::vector<float> f(n);
    for (uint32_t j = 0; j < n; ++j) f[j] = half_to_float(h[j]);
    return f;
  }
  void run(const std::vector<Instruction>& code, RunArgs args, uint32_t max_tokens = 8) {
    load(code, max_tokens);
    emu_->start(ProgramSlot::Prefill, args);
  }
  // Loads `code` (which allocates on-chip memory, so a test can fill it before the run).
  void load(const std::vector<Instruction>& code, uint32_t max_tokens = 8) {
    Program p;
    p.max_tokens = max_tokens;
    p.lmem_bytes = 1u << 16;
    p.code = code;
    emu_->load_program(ProgramSlot::Prefill, p);
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

  // The index of the first largest value.
  static int32_t first_max(const std::vector<float>& row) {
    int32_t best = 0;
    for (size_t j = 1; j < row.size(); ++j)
      if (row[j] > row[size_t(best)]) best = int32_t(j);
    return best;
  }
  // An LM head for the OUT_F32 MATMUL tests: T tokens of k random inputs (seed, x_scale),
  // n random weight rows (seed + 1, w_scale) and a bias (seed + 2) in tables, token ids 0..T-1,
  // and acc, each logit's dot + bias in fp32 by the scalar kernel.
  struct LmHead {
    uint32_t T, k, n;
    HbmRegion xt, wt, bt;
    std::vector<std::vector<float>> acc;
  };
  LmHead lm_head(uint32_t T, uint32_t k, uint32_t n, uint32_t seed, float x_scale, float w_scale) {
    auto x = random_rows(T, k, seed, x_scale), w = random_rows(n, k, seed + 1, w_scale);
    auto bias = random_rows(1, n, seed + 2)[0];
    LmHead h{T, k, n, put_rows(0, x, 128), put_rows(8192, w, 128), put_vector(16384, bias), {}};
    std::vector<int32_t> ids(T);
    std::iota(ids.begin(), ids.end(), 0);
    put_ids(ids);
    const Kernels& scalar = kernels_for(KernelLevel::Scalar);
    h.acc.assign(T, std::vector<float>(n));
    for (uint32_t t = 0; t < T; ++t)
      for (uint32_t j = 0; j < n; ++j) {
        std::vector<uint16_t> wr(k);
        for (uint32_t i = 0; i < k; ++i) wr[i] = float_to_half(w[j][i]);
        h.acc[t][j] = scalar.dot_f16(wr.data(), x[t].data(), k) + bias[j];
      }
    return h;
  }
  // Runs `h` as one OUT_F32 | HAS_BIAS | ARGMAX MATMUL with logit scale f0, soft cap f1 and
  // activation act; checks every logit bit for bit against want(acc) and the fused argmax
  // against the first maximum of the last token's wanted logits, which it returns.
  std::vector<float> run_lm_head(const LmHead& h, float f0, float f1, ActKind act,
                                 const std::function<float(float)>& want) {
    const Operand X{Space::Lmem, 0, 64}, Y{Space::Io, 8192, 64}, A{Space::Io, 4096, 1};
    Instruction mm;
    mm.op = Opcode::MatMul;
    mm.flags = kFlagOutF32 | kFlagHasBias | kFlagArgmax;
    mm.sub = uint8_t(act);
    mm.dst = Y;
    mm.a = X;
    mm.b = A;
    mm.w0 = h.wt;
    mm.w1 = h.bt;
    mm.n = h.n;
    mm.k = h.k;
    mm.f0 = f0;
    mm.f1 = f1;
    run({embed(X, h.xt, h.k), mm}, RunArgs{0, h.T});
    std::vector<float> last(h.n);
    for (uint32_t t = 0; t < h.T; ++t) {
      std::vector<float> got(h.n);
      emu_->read(0, io_base_ + Y.offset + uint64_t(t) * Y.stride * 4, got.data(), h.n * 4);
      for (uint32_t j = 0; j < h.n; ++j) {
        last[j] = want(h.acc[t][j]);
        uint32_t a, b;
        std::memcpy(&a, &got[j], 4);
        std::memcpy(&b, &last[j], 4);
        EXPECT_EQ(a, b) << "f0=" << f0 << " f1=" << f1 << " act=" << int(act) << " t=" << t
                        << " j=" << j << ": " << got[j] << " vs " << last[j];
      }
    }
    int32_t arg = -1;
    emu_->read(0, io_base_ + A.offset, &arg, 4);
    EXPECT_EQ(arg, first_max(last)) << "f0=" << f0 << " f1=" << f1 << " act=" << int(act);
    return last;
  }

  std::unique_ptr<Emulator> emu_;
  uint64_t io_base_ = 0;
};

float round16(float v) { return half_to_float(float_to_half(v)); }

bool has(const std::string& text, const std::string& part) { return text.find(part) != std::string::npos; }

// NORM of one row as docs/isa.md writes it, group by group (g = the group width, n for the
// whole row): MAC-tree sums (the scalar kernel), one fp32 operation per step, one rounding.
std::vector<uint16_t> norm_reference(const std::vector<float>& x, uint32_t g, bool rms, float eps,
                                     const std::vector<float>& gamma, const std::vector<float>* beta) {
  const Kernels& scalar = kernels_for(KernelLevel::Scalar);
  const std::vector<float> ones(g, 1.0f);
  std::vector<uint16_t> out(x.size());
  for (size_t j0 = 0; j0 < x.size(); j0 += g) {
    std::vector<float> d(x.data() + j0, x.data() + j0 + g);
    if (!rms) {
      const float mean = scalar.dot_f32(d.data(), ones.data(), g) / float(g);
      for (float& v : d) v -= mean;
    }
    const float r = 1.0f / std::sqrt(scalar.dot_f32(d.data(), d.data(), g) / float(g) + eps);
    for (uint32_t i = 0; i < g; ++i) {
      float y = (d[i] * r) * gamma[j0 + i];
      if (beta) y += (*beta)[j0 + i];
      out[j0 + i] = float_to_half(y);
    }
  }
  return out;
}

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

// ROPE against docs/isa.md computed here with the scalar conversions, bit for bit: both
// styles, a partial rotation (the dims past i0 stay as they are), rows from start_pos on.
TEST_F(EmuTest, RopeRotatesAsTheIsaSays) {
  const uint32_t heads = 3, k = 16, rot = 12, tokens = 3, start = 5, positions = 12;
  const uint32_t table_bytes = 64;  // rot / 2 (cos, sin) fp32 pairs, padded
  std::mt19937 rng(11);
  std::uniform_real_distribution<float> angle(-3.2f, 3.2f);
  std::vector<std::vector<float>> table(positions, std::vector<float>(table_bytes / 4, 0.0f));
  for (auto& row : table)
    for (uint32_t i = 0; i < rot / 2; ++i) {
      const float a = angle(rng);
      row[2 * i] = std::cos(a);
      row[2 * i + 1] = std::sin(a);
    }
  const uint64_t table_base = 8192;
  for (uint32_t r = 0; r < positions; ++r)
    emu_->write(r % kChannels, table_base + (r / kChannels) * table_bytes, table[r].data(),
                table_bytes);
  for (RopeStyle style : {RopeStyle::Neox, RopeStyle::Gptj}) {
    auto x = random_rows(tokens, heads * k, 12 + uint32_t(style), 4.0f);
    put_rows(0, x, 128);
    put_ids({0, 1, 2});
    Operand X{Space::Lmem, 0, 64};
    Instruction rope;
    rope.op = Opcode::Rope;
    rope.sub = uint8_t(style);
    rope.dst = X;
    rope.n = heads;
    rope.k = k;
    rope.i0 = rot;
    rope.w0 = HbmRegion{table_base, table_bytes, positions};
    run({embed(X, HbmRegion{0, 128, tokens}, heads * k), rope}, RunArgs{start, tokens});
    for (uint32_t t = 0; t < tokens; ++t) {
      const auto got = lmem_bits(X, t, heads * k);
      const std::vector<float>& cs = table[start + t];
      for (uint32_t h = 0; h < heads; ++h) {
        std::vector<uint16_t> want(k);
        for (uint32_t d = 0; d < k; ++d) want[d] = float_to_half(x[t][h * k + d]);
        for (uint32_t i = 0; i < rot / 2; ++i) {
          const uint32_t i1 = style == RopeStyle::Neox ? i : 2 * i;
          const uint32_t i2 = style == RopeStyle::Neox ? i + rot / 2 : 2 * i + 1;
          const float x1 = x[t][h * k + i1], x2 = x[t][h * k + i2];
          want[i1] = float_to_half(x1 * cs[2 * i] - x2 * cs[2 * i + 1]);
          want[i2] = float_to_half(x2 * cs[2 * i] + x1 * cs[2 * i + 1]);
        }
        for (uint32_t d = 0; d < k; ++d)
          ASSERT_EQ(got[h * k + d], want[d]) << "style " << int(style) << " token " << t
                                             << " head " << h << " dim " << d;
      }
    }
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

// ISA v4: NORM with k != 0 normalises each group of k elements (a head) on its own, with
// gamma and beta over all n (per-head weights); k = 0 and k = n are the whole row.
TEST_F(EmuTest, NormByGroupsNormalisesEachGroupOnItsOwn) {
  const uint32_t T = 3, n = 64, k = 16;
  auto x = random_rows(T, n, 21, 2.0f);
  // Groups of very different scale and offset, so a whole-row norm gives other numbers.
  for (auto& row : x)
    for (uint32_t j = 0; j < n; ++j) row[j] = round16(row[j] * float(1 + j / k) + float(j / k) - 1.5f);
  auto gamma = random_rows(1, n, 22)[0], beta = random_rows(1, n, 23)[0];
  HbmRegion xt = put_rows(0, x, 128), gt = put_vector(4096, gamma), bt = put_vector(8192, beta);
  put_ids({0, 1, 2});
  const Operand X{Space::Lmem, 0, 64};
  const Operand out[5] = {{Space::Lmem, 2048, 64}, {Space::Lmem, 4096, 64}, {Space::Lmem, 6144, 64},
                          {Space::Lmem, 8192, 64}, {Space::Lmem, 10240, 64}};
  auto norm = [&](Operand dst, NormKind kind, uint32_t group, bool bias) {
    Instruction in;
    in.op = Opcode::Norm;
    in.sub = uint8_t(kind);
    in.dst = dst;
    in.a = X;
    in.w0 = gt;
    if (bias) {
      in.flags = kFlagHasBias;
      in.w1 = bt;
    }
    in.n = n;
    in.k = group;
    in.f0 = 1e-5f;
    return in;
  };
  run({embed(X, xt, n), norm(out[0], NormKind::LayerNorm, k, true),
       norm(out[1], NormKind::RmsNorm, k, false), norm(out[2], NormKind::LayerNorm, 0, true),
       norm(out[3], NormKind::LayerNorm, n, true), norm(out[4], NormKind::RmsNorm, 32, false)},
      RunArgs{0, T});
  size_t differ = 0;
  for (uint32_t t = 0; t < T; ++t) {
    const auto ln = lmem_bits(out[0], t, n), rms = lmem_bits(out[1], t, n);
    const auto whole = lmem_bits(out[2], t, n), all = lmem_bits(out[3], t, n);
    const auto rms32 = lmem_bits(out[4], t, n);
    EXPECT_EQ(ln, norm_reference(x[t], k, false, 1e-5f, gamma, &beta)) << "t=" << t;
    EXPECT_EQ(rms, norm_reference(x[t], k, true, 1e-5f, gamma, nullptr)) << "t=" << t;
    EXPECT_EQ(rms32, norm_reference(x[t], 32, true, 1e-5f, gamma, nullptr)) << "t=" << t;
    EXPECT_EQ(whole, norm_reference(x[t], n, false, 1e-5f, gamma, &beta)) << "t=" << t;
    EXPECT_EQ(all, whole) << "k = n is the whole row, t=" << t;
    for (uint32_t j = 0; j < n; ++j) differ += ln[j] != whole[j];
    // Each group has mean beta and unit RMS before gamma: check one group's statistics in double.
    for (uint32_t g = 0; g < n / k; ++g) {
      double m = 0, v = 0;
      for (uint32_t j = g * k; j < (g + 1) * k; ++j) m += x[t][j];
      m /= k;
      for (uint32_t j = g * k; j < (g + 1) * k; ++j) v += (x[t][j] - m) * (x[t][j] - m);
      const double rstd = 1.0 / std::sqrt(v / k + 1e-5);
      for (uint32_t j = g * k; j < (g + 1) * k; ++j) {
        const double want = (x[t][j] - m) * rstd * gamma[j] + beta[j];
        EXPECT_NEAR(half_to_float(ln[j]), want, 4e-3 * (1 + std::fabs(want))) << "t=" << t << " j=" << j;
      }
    }
  }
  EXPECT_GT(differ, size_t(T) * n / 2);  // by groups is not the whole row
}

TEST_F(EmuTest, NormGroupWidthMustDivideN) {
  HbmRegion gt = put_vector(4096, std::vector<float>(64, 1.0f));
  Instruction in;
  in.op = Opcode::Norm;
  in.sub = uint8_t(NormKind::RmsNorm);
  in.dst = Operand{Space::Lmem, 2048, 64};
  in.a = Operand{Space::Lmem, 0, 64};
  in.w0 = gt;
  in.n = 64;
  in.k = 24;
  const Instruction ok = embed(in.a, put_rows(0, random_rows(1, 64, 24), 128), 64);
  std::string msg = rejection({ok, in});
  EXPECT_TRUE(has(msg, "instruction 1 (NORM)")) << msg;
  EXPECT_TRUE(has(msg, "not a multiple of its group width k = 24")) << msg;
  in.k = 128;  // wider than the row
  EXPECT_TRUE(has(rejection({ok, in}), "instruction 1 (NORM)"));
  in.k = 32;
  EXPECT_EQ(rejection({ok, in}), "");
}

// ISA v4: an OUT_F32 MATMUL scales its fp32 results by f0 (0 and 1: not at all) after the
// bias and before the activation, and its fused argmax sees the scaled values.
TEST_F(EmuTest, LogitScaleScalesTheFp32ResultsBeforeActivationAndArgmax) {
  const LmHead head = lm_head(2, 40, 50, 31, 1.0f, 0.3f);
  // Runs the LM head with scale f0 (no cap) and activation act; checks every logit bit for
  // bit against `want(v, f0)` of the reference and the argmax against the reference's.
  auto check = [&](float f0, ActKind act, float (*want)(float, float)) {
    return first_max(run_lm_head(head, f0, 0.0f, act, [&](float v) { return want(v, f0); }));
  };
  auto plain = [](float v, float) { return v; };
  auto scaled = [](float v, float s) { return v * s; };
  auto silu_scaled = [](float v, float s) {
    v = v * s;
    return v / (1.0f + std::exp(-v));
  };
  const int32_t unscaled = check(0.0f, ActKind::None, plain);
  EXPECT_EQ(check(1.0f, ActKind::None, plain), unscaled);
  check(0.37f, ActKind::None, scaled);
  check(30.0f, ActKind::Silu, silu_scaled);  // silu(v * s), not silu(v) * s
  // Scaled past fp32, every positive logit is +inf: the argmax is the first of them, which
  // the unscaled logits' argmax is not.
  const int32_t overflowed = check(3e38f, ActKind::None, scaled);
  EXPECT_NE(overflowed, unscaled);
}

TEST_F(EmuTest, LogitScaleAndClipAreChecked) {
  Instruction mm;
  mm.op = Opcode::MatMul;
  mm.dst = Operand{Space::Lmem, 4096, 64};
  mm.a = Operand{Space::Lmem, 0, 64};
  mm.w0 = put_rows(8192, random_rows(8, 32, 34), 64);
  mm.n = 8;
  mm.k = 32;
  EXPECT_EQ(rejection({mm}), "");
  mm.f0 = 0.5f;  // a scale without fp32 results
  std::string msg = rejection({mm});
  EXPECT_TRUE(has(msg, "instruction 0 (MATMUL)") && has(msg, "without OUT_F32")) << msg;
  mm.flags = kFlagOutF32;
  EXPECT_EQ(rejection({mm}), "");
  for (float bad : {-1.0f, std::numeric_limits<float>::infinity(),
                    std::numeric_limits<float>::quiet_NaN()}) {
    mm.f0 = bad;
    msg = rejection({mm});
    EXPECT_TRUE(has(msg, "instruction 0 (MATMUL)") && has(msg, "logit scale")) << msg;
  }
  mm.f0 = 0.0f;
  mm.flags = 0;
  mm.sub = uint8_t(ActKind::Clip);
  msg = rejection({mm});
  EXPECT_TRUE(has(msg, "instruction 0 (MATMUL)") && has(msg, "clip is an ACT-only activation")) << msg;
  mm.sub = uint8_t(ActKind::Clip) + 1;
  EXPECT_TRUE(has(rejection({mm}), "unknown activation 6"));

  Instruction act;
  act.op = Opcode::Act;
  act.sub = uint8_t(ActKind::Clip);
  act.dst = act.a = Operand{Space::Lmem, 0, 64};
  act.n = 64;
  act.f0 = 6.0f;
  EXPECT_EQ(rejection({act}), "");
  for (float bad : {0.0f, -2.0f, std::numeric_limits<float>::infinity(),
                    std::numeric_limits<float>::quiet_NaN()}) {
    act.f0 = bad;
    msg = rejection({act});
    EXPECT_TRUE(has(msg, "instruction 0 (ACT)") && has(msg, "clip bound")) << msg;
  }
  act.sub = 200;
  EXPECT_TRUE(has(rejection({act}), "unknown activation 200"));
}

// GELU, tanh-GELU and SiLU come from a table of every fp16 input (Emulator::act_table): the
// same bits as the formulas of docs/isa.md in fp32, for all 65536 inputs (NaNs, infinities,
// subnormals), so the table changes the emulator's speed and nothing else.
TEST_F(EmuTest, TabledActivationsEqualTheFormulasForEveryHalf) {
  const uint32_t T = 8, n = 1024;
  const Operand X{Space::Lmem, 0, n}, Y{Space::Lmem, T * n * 2, n};
  auto formula = [](ActKind act, float x) -> float {
    if (act == ActKind::Gelu) return 0.5f * x * (1.0f + std::erf(x * 0.70710678118654752f));
    if (act == ActKind::GeluTanh) {
      const float k = 0.7978845608028654f;
      return 0.5f * x * (1.0f + std::tanh(k * (x + 0.044715f * x * x * x)));
    }
    return x / (1.0f + std::exp(-x));
  };
  for (ActKind act : {ActKind::Gelu, ActKind::GeluTanh, ActKind::Silu}) {
    Instruction in;
    in.op = Opcode::Act;
    in.sub = uint8_t(act);
    in.dst = Y;
    in.a = X;
    in.n = n;
    size_t mismatches = 0, changed = 0;
    for (uint32_t base = 0; base < 65536; base += T * n) {
      load({in}, T);
      std::vector<uint16_t> h(T * n);
      for (uint32_t i = 0; i < T * n; ++i) h[i] = uint16_t(base + i);
      emu_->write_lmem(0, h.data(), h.size() * 2);
      emu_->start(ProgramSlot::Prefill, RunArgs{0, T});
      for (uint32_t t = 0; t < T; ++t) {
        const auto got = lmem_bits(Y, t, n);
        for (uint32_t j = 0; j < n; ++j) {
          const uint16_t x = uint16_t(base + t * n + j);
          const uint16_t want = float_to_half(formula(act, half_to_float(x)));
          mismatches += got[j] != want;
          changed += got[j] != x;
        }
      }
    }
    EXPECT_EQ(mismatches, 0u) << "activation " << int(act);
    EXPECT_GT(changed, 30000u) << "activation " << int(act);  // not the identity
  }
}

// ISA v4: ACT clip: dst = round(min(max(a, -f0), f0)); NaN stays NaN, -0 stays -0.
TEST_F(EmuTest, ClipClampsToTheBound) {
  const uint32_t T = 2, n = 48;
  const float inf = std::numeric_limits<float>::infinity();
  auto x = random_rows(T, n, 41, 3.0f);
  const float special[] = {inf, -inf, std::numeric_limits<float>::quiet_NaN(), -0.0f, 0.0f,
                           1.2998046875f, 1.30078125f, -1.2998046875f, -1.30078125f, 65504.0f};
  for (size_t i = 0; i < sizeof(special) / sizeof(special[0]); ++i) x[0][i] = special[i];
  HbmRegion xt = put_rows(0, x, 128);
  put_ids({0, 1});
  const Operand X{Space::Lmem, 0, 64}, Y{Space::Lmem, 4096, 64};
  const float bound = 1.3f;  // not an fp16 value: a clamped input becomes round(1.3)
  Instruction act;
  act.op = Opcode::Act;
  act.sub = uint8_t(ActKind::Clip);
  act.dst = Y;
  act.a = X;
  act.n = n;
  act.f0 = bound;
  Instruction in_place = act;  // dst = a
  in_place.dst = X;
  run({embed(X, xt, n), act, in_place}, RunArgs{0, T});
  size_t clamped = 0;
  for (uint32_t t = 0; t < T; ++t) {
    const auto got = lmem_bits(Y, t, n), again = lmem_bits(X, t, n);
    for (uint32_t j = 0; j < n; ++j) {
      const float a = half_to_float(float_to_half(x[t][j]));
      const float c = std::isnan(a) ? a : a > bound ? bound : a < -bound ? -bound : a;
      clamped += c != a;
      EXPECT_EQ(got[j], float_to_half(c)) << "t=" << t << " j=" << j << " a=" << a;
      EXPECT_EQ(again[j], got[j]) << "in place, t=" << t << " j=" << j;
    }
  }
  EXPECT_EQ(lmem_bits(Y, 0, 10)[0], float_to_half(1.2998046875f));  // +inf -> round(1.3)
  EXPECT_EQ(lmem_bits(Y, 0, 10)[3], 0x8000);                       // -0 stays -0
  EXPECT_EQ(lmem_bits(Y, 0, 10)[5], float_to_half(1.2998046875f)); // below the bound: as is
  EXPECT_GT(clamped, size_t(10));
}

// ISA v4: an OUT_F32 MATMUL soft-caps its fp32 results with f1 > 0, v = f1 * tanh(v / f1),
// after the bias and the f0 logit scale and before the activation; the fused argmax sees
// the capped values. Every logit is checked bit for bit against a scalar reference.
TEST_F(EmuTest, LogitSoftCapFollowsTheScaleAndPrecedesActivationAndArgmax) {
  const uint32_t T = 3, n = 50;
  const LmHead head = lm_head(T, 40, n, 51, 2.0f, 0.5f);
  // The reference of docs/isa.md: bias (in acc), scale, cap, activation; all fp32.
  auto reference = [](float v, float f0, float f1, ActKind act) {
    if (f0 != 0.0f && f0 != 1.0f) v = v * f0;
    if (f1 > 0.0f) v = f1 * std::tanh(v / f1);
    if (act == ActKind::Silu) v = v / (1.0f + std::exp(-v));
    return v;
  };
  // Runs the head with (f0, f1, act); checks every logit's bits and the fused argmax, and
  // returns the last row.
  auto check = [&](float f0, float f1, ActKind act) {
    return run_lm_head(head, f0, f1, act, [&](float v) { return reference(v, f0, f1, act); });
  };
  float spread = 0.0f;  // the logits are well away from 0: a cap of 2 bends them
  for (float v : head.acc[T - 1]) spread = std::max(spread, std::fabs(v));
  ASSERT_GT(spread, 4.0f);

  const auto plain = check(0.0f, 0.0f, ActKind::None);
  const auto capped = check(0.0f, 2.0f, ActKind::None);
  size_t bent = 0;
  for (uint32_t j = 0; j < n; ++j) {
    EXPECT_LE(std::fabs(capped[j]), 2.0f) << j;
    EXPECT_EQ(capped[j] > 0.0f, plain[j] > 0.0f) << j;  // odd and monotone
    bent += std::fabs(capped[j] - plain[j]) > 0.1f;
  }
  EXPECT_GT(bent, size_t(n) / 4);
  // The scale comes first: cap(v * 4) is not cap(v) * 4 (the latter could reach 8).
  const auto scaled = check(4.0f, 2.0f, ActKind::None);
  for (uint32_t j = 0; j < n; ++j) EXPECT_LE(std::fabs(scaled[j]), 2.0f) << j;
  // The activation comes last: silu(cap(v * s)), not cap(silu(v * s)).
  check(0.5f, 3.0f, ActKind::Silu);
  // A tiny cap saturates tanh to exactly +-1: every clearly positive logit becomes the cap,
  // and the argmax is the first of them, not the uncapped argmax.
  const auto saturated = check(0.0f, 1e-3f, ActKind::None);
  const int32_t uncapped_arg = first_max(plain), saturated_arg = first_max(saturated);
  EXPECT_FLOAT_EQ(saturated[size_t(uncapped_arg)], 1e-3f);
  EXPECT_NE(saturated_arg, uncapped_arg);
  EXPECT_FLOAT_EQ(saturated[size_t(saturated_arg)], 1e-3f);
}

// ATTN with f1 > 0 soft-caps each scaled score, s = f1 * tanh(s / f1), before the softmax:
// bit for bit against the scalar kernels, and within rounding of a double reference.
TEST_F(EmuTest, AttentionSoftCapsTheScoresBeforeTheSoftmax) {
  const uint32_t T = 6, heads = 4, kv = 2, hd = 16;
  auto q = random_rows(T, heads * hd, 61, 2.0f), k = random_rows(T, kv * hd, 62, 2.0f),
       v = random_rows(T, kv * hd, 63);
  HbmRegion qt = put_rows(0, q, 128), kt = put_rows(4096, k, 64), vt = put_rows(8192, v, 64);
  HbmRegion kc{16384, 64, 16}, vc{32768, 64, 16};
  put_ids({0, 1, 2, 3, 4, 5});
  const Operand Q{Space::Lmem, 0, 64}, K{Space::Lmem, 1024, 32}, V{Space::Lmem, 2048, 32};
  const Operand O{Space::Lmem, 4096, 64}, P{Space::Lmem, 6144, 64};  // capped, uncapped
  Instruction store;
  store.op = Opcode::KvStore;
  store.a = K;
  store.b = V;
  store.w0 = kc;
  store.w1 = vc;
  store.n = kv * hd;
  const float scale = 0.25f, cap = 1.5f;
  Instruction attn;
  attn.op = Opcode::Attention;
  attn.dst = O;
  attn.a = Q;
  attn.n = heads;
  attn.k = hd;
  attn.i0 = kv;
  attn.f0 = scale;
  attn.f1 = cap;
  attn.w0 = kc;
  attn.w1 = vc;
  Instruction plain = attn;
  plain.dst = P;
  plain.f1 = 0.0f;
  run({embed(Q, qt, heads * hd), embed(K, kt, kv * hd), embed(V, vt, kv * hd), store, attn, plain},
      RunArgs{0, T});

  const Kernels& scalar = kernels_for(KernelLevel::Scalar);
  size_t capped_scores = 0, differ = 0;
  for (uint32_t t = 0; t < T; ++t) {
    const auto got = lmem_bits(O, t, heads * hd), uncapped = lmem_bits(P, t, heads * hd);
    for (uint32_t h = 0; h < heads; ++h) {
      const uint32_t g = h / (heads / kv);
      // As docs/isa.md: the MAC-tree dot, * f0, the cap, max-subtracted exp, a sequential
      // sum, p_j = e_j / sum, fused multiply-adds in ascending j, one rounding.
      std::vector<float> s(t + 1);
      std::vector<double> sd(t + 1);
      float best = -std::numeric_limits<float>::infinity();
      for (uint32_t j = 0; j <= t; ++j) {
        std::vector<uint16_t> key(hd);
        for (uint32_t i = 0; i < hd; ++i) key[i] = float_to_half(k[j][g * hd + i]);
        const float raw = scalar.dot_f16(key.data(), q[t].data() + h * hd, hd) * scale;
        s[j] = cap * std::tanh(raw / cap);
        capped_scores += std::fabs(raw) > cap;
        best = std::max(best, s[j]);
        double d = 0;
        for (uint32_t i = 0; i < hd; ++i) d += double(q[t][h * hd + i]) * k[j][g * hd + i];
        sd[j] = cap * std::tanh(d * scale / cap);
      }
      float sum = 0.0f;
      for (float& e : s) {
        e = std::exp(e - best);
        sum += e;
      }
      std::vector<float> acc(hd, 0.0f);
      for (uint32_t j = 0; j <= t; ++j)
        for (uint32_t i = 0; i < hd; ++i)
          acc[i] = std::fma(s[j] / sum, round16(v[j][g * hd + i]), acc[i]);
      double mx = -1e30, dsum = 0;
      for (double e : sd) mx = std::max(mx, e);
      for (double& e : sd) dsum += (e = std::exp(e - mx));
      for (uint32_t i = 0; i < hd; ++i) {
        EXPECT_EQ(got[h * hd + i], float_to_half(acc[i])) << "t=" << t << " h=" << h << " i=" << i;
        double o = 0;
        for (uint32_t j = 0; j <= t; ++j) o += sd[j] / dsum * v[j][g * hd + i];
        EXPECT_NEAR(half_to_float(got[h * hd + i]), o, 2e-3 * (1 + std::fabs(o)));
        differ += got[h * hd + i] != uncapped[h * hd + i];
      }
    }
  }
  EXPECT_GT(capped_scores, size_t(10));  // the cap bends many scores
  EXPECT_GT(differ, size_t(T) * heads * hd / 4);  // and changes the output
}

// The loader refuses a soft-cap that is negative or not finite (ATTN, OUT_F32 MATMUL) and
// any f1 on a MATMUL without OUT_F32, naming the instruction and the field.
TEST_F(EmuTest, SoftCapsAreChecked) {
  Instruction mm;
  mm.op = Opcode::MatMul;
  mm.dst = Operand{Space::Lmem, 4096, 64};
  mm.a = Operand{Space::Lmem, 0, 64};
  mm.w0 = put_rows(8192, random_rows(8, 32, 64), 64);
  mm.n = 8;
  mm.k = 32;
  mm.f1 = 30.0f;  // a soft-cap without fp32 results
  std::string msg = rejection({mm});
  EXPECT_TRUE(has(msg, "instruction 0 (MATMUL)") && has(msg, "f1 = 30") && has(msg, "without OUT_F32"))
      << msg;
  mm.flags = kFlagOutF32;
  EXPECT_EQ(rejection({mm}), "");
  for (float bad : {-1.0f, std::numeric_limits<float>::infinity(),
                    std::numeric_limits<float>::quiet_NaN()}) {
    mm.f1 = bad;
    msg = rejection({mm});
    EXPECT_TRUE(has(msg, "instruction 0 (MATMUL)") && has(msg, "logit soft-cap")) << msg;
  }

  Instruction attn;
  attn.op = Opcode::Attention;
  attn.dst = Operand{Space::Lmem, 4096, 64};
  attn.a = Operand{Space::Lmem, 0, 64};
  attn.n = 4;
  attn.k = 16;
  attn.i0 = 2;
  attn.f0 = 0.25f;
  attn.w0 = HbmRegion{16384, 64, 16};
  attn.w1 = HbmRegion{32768, 64, 16};
  for (float ok : {0.0f, 50.0f}) {
    attn.f1 = ok;
    EXPECT_EQ(rejection({attn}), "") << ok;
  }
  for (float bad : {-50.0f, std::numeric_limits<float>::infinity(),
                    std::numeric_limits<float>::quiet_NaN()}) {
    attn.f1 = bad;
    msg = rejection({attn});
    EXPECT_TRUE(has(msg, "instruction 0 (ATTN)") && has(msg, "score soft-cap")) << msg;
  }
}

// TOPK (ISA v5): fp32 softmax over n logits, the k largest first (ties to the lower index),
// each weighted by its probability or by its share of the picks' (Routing::Renormalize).
TEST_F(EmuTest, TopKPicksTheLargestSoftmaxProbabilities) {
  const uint32_t n = 6, k = 3, stride = 8;  // logits row stride (fp32 elements)
  const std::vector<std::vector<float>> logits = {{0.5f, 2.0f, -1.0f, 2.0f, 1.5f, 0.0f},
                                                  {-3.0f, -1.0f, 4.0f, 0.0f, 0.25f, 3.5f}};
  load({});
  for (uint32_t t = 0; t < 2; ++t) emu_->write_lmem(t * stride * 4, logits[t].data(), n * 4);
  for (const Routing routing : {Routing::Softmax, Routing::Renormalize}) {
    Instruction in;
    in.op = Opcode::TopK;
    in.sub = uint8_t(routing);
    in.a = Operand{Space::Lmem, 0, stride};
    in.dst = Operand{Space::Lmem, 1024, 2 * k};
    in.n = n;
    in.k = k;
    run({in}, RunArgs{0, 2, false, true});
    for (uint32_t t = 0; t < 2; ++t) {
      std::vector<double> p(n);
      double sum = 0;
      const double mx = *std::max_element(logits[t].begin(), logits[t].end());
      for (uint32_t j = 0; j < n; ++j) sum += p[j] = std::exp(double(logits[t][j]) - mx);
      std::vector<uint32_t> order(n);
      std::iota(order.begin(), order.end(), 0u);
      std::stable_sort(order.begin(), order.end(), [&](uint32_t a, uint32_t b) { return p[a] > p[b]; });
      double picked = 0;
      for (uint32_t i = 0; i < k; ++i) picked += p[order[i]] / sum;
      std::vector<uint8_t> out(8 * k);
      emu_->read_lmem(1024 + uint64_t(t) * 2 * k * 4, out.data(), out.size());
      for (uint32_t i = 0; i < k; ++i) {
        int32_t e;
        float w;
        std::memcpy(&e, out.data() + 8 * i, 4);
        std::memcpy(&w, out.data() + 8 * i + 4, 4);
        EXPECT_EQ(uint32_t(e), order[i]) << "row " << t << " pick " << i;
        const double want = p[order[i]] / sum / (routing == Routing::Renormalize ? picked : 1.0);
        EXPECT_NEAR(w, want, 1e-6) << "row " << t << " pick " << i;
      }
    }
  }
  // Row 0 ties experts 1 and 3: the lower index is picked first.
  std::vector<int32_t> first(1);
  emu_->read_lmem(1024, first.data(), 4);
  EXPECT_EQ(first[0], 1);
}

// An expert MATMUL (ISA v5) multiplies each token row by the block of w0 its pick names,
// scales by the pick's weight (ROUTE_SCALE) and streams each picked block once.
TEST_F(EmuTest, ExpertMatMulUsesThePickedBlockOnly) {
  const uint32_t E = 3, n = 6, k = 32, block = 8;  // block: n rows padded to 2 rows/channel
  std::vector<std::vector<float>> rows(size_t(E) * block, std::vector<float>(k, 0.0f));
  const auto w = random_rows(size_t(E) * n, k, 5, 0.3f);
  for (uint32_t e = 0; e < E; ++e)
    for (uint32_t r = 0; r < n; ++r) rows[e * block + r] = w[e * n + r];
  const HbmRegion region = put_rows(0, rows, 64);
  const auto x = random_rows(3, k, 6);
  const Operand a{Space::Lmem, 0, k}, dst{Space::Lmem, 4096, 32}, c{Space::Lmem, 8192, 4};
  load({});
  for (uint32_t t = 0; t < 3; ++t) {
    std::vector<uint16_t> h(k);
    for (uint32_t j = 0; j < k; ++j) h[j] = float_to_half(x[t][j]);
    emu_->write_lmem(a.offset + t * k * 2, h.data(), k * 2);
  }
  // Token rows 0 and 2 pick expert 2, row 1 expert 0; expert 1 is never read.
  const std::vector<std::pair<int32_t, float>> picks = {{2, 0.75f}, {0, 0.5f}, {2, 0.25f}};
  for (uint32_t t = 0; t < 3; ++t) {
    emu_->write_lmem(c.offset + t * 16, &picks[t].first, 4);
    emu_->write_lmem(c.offset + t * 16 + 4, &picks[t].second, 4);
  }
  Instruction in;
  in.op = Opcode::MatMul;
  in.dst = dst;
  in.a = a;
  in.c = c;
  in.w0 = region;
  in.n = n;
  in.k = k;
  in.i2 = E;
  in.flags2 = kFlag2RouteScale;
  run({in}, RunArgs{0, 3, false, true});
  EXPECT_EQ(emu_->weight_bytes_read(), 2u * n * 64) << "two experts' rows, once each";
  for (uint32_t t = 0; t < 3; ++t) {
    const auto got = lmem_row(dst, t, n);
    for (uint32_t r = 0; r < n; ++r) {
      const auto& wr = w[size_t(picks[t].first) * n + r];
      const float y = kernels_for(KernelLevel::Scalar).dot_f32(wr.data(), x[t].data(), k);
      const float want = half_to_float(float_to_half(
          half_to_float(float_to_half(y)) * picks[t].second));
      EXPECT_EQ(got[r], want) << "row " << t << " output " << r;
    }
  }
  // A pick outside the experts is a run-time error, not a read past the region.
  const int32_t bad = 3;
  emu_->write_lmem(c.offset, &bad, 4);
  EXPECT_THROW(run({in}, RunArgs{0, 1, false, true}), DeviceError);
  // Blocks must start on channel 0: 3 blocks of 6 rows (not a multiple of 4 channels) are refused.
  Instruction unpadded = in;
  unpadded.w0.rows = E * n;
  EXPECT_NE(rejection({unpadded}).find("multiple of the 4 pseudo-channels"), std::string::npos)
      << rejection({unpadded});
  Instruction uneven = in;
  uneven.w0.rows = E * block + 1;
  EXPECT_NE(rejection({uneven}).find("equal expert blocks"), std::string::npos);
}
