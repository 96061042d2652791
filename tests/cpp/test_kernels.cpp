// The emulator's numeric kernels: the scalar level follows the normative MAC
// tree of kernels.h, and every SIMD level gives the scalar level's bits.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "common/fp16.h"
#include "common/thread_pool.h"
#include "emu/kernels.h"
#include "isa/qmatrix.h"
#include "test_util.h"

namespace {

namespace emu = hyperdex::emu;
namespace isa = hyperdex::isa;
using emu::KernelLevel;
using emu::Kernels;

const Kernels& scalar() { return emu::kernels_for(KernelLevel::Scalar); }

uint32_t bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}

// The MAC tree of kernels.h, written out independently: zero-pad to a multiple
// of 16, lane i % 16 accumulates with fma, then the pairwise halving.
float reference_tree(const std::vector<float>& a, const std::vector<float>& b) {
  const size_t n = a.size(), padded = (n + 15) / 16 * 16;
  float lane[16] = {};
  for (size_t i = 0; i < padded; ++i) {
    lane[i % 16] = std::fma(i < n ? a[i] : 0.0f, i < n ? b[i] : 0.0f, lane[i % 16]);
  }
  for (size_t width = 8; width >= 1; width /= 2) {
    for (size_t j = 0; j < width; ++j) lane[j] = lane[j] + lane[j + width];
  }
  return lane[0];
}

// Floats over a wide range of magnitudes, with zeros of both signs and some
// subnormals, so that cancellations, underflows and -0 all occur.
std::vector<float> random_floats(std::mt19937& rng, size_t n) {
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::uniform_int_distribution<int> kind(0, 31), exp(-30, 30);
  std::vector<float> v(n);
  for (auto& f : v) {
    switch (kind(rng)) {
      case 0: f = 0.0f; break;
      case 1: f = -0.0f; break;
      case 2: f = std::ldexp(normal(rng), -135); break;  // fp32 subnormal
      default: f = std::ldexp(normal(rng), exp(rng)); break;
    }
  }
  return v;
}

// Finite halves: every exponent but 31, every mantissa.
std::vector<uint16_t> random_halves(std::mt19937& rng, size_t n) {
  std::vector<uint16_t> v(n);
  for (auto& h : v) {
    do {
      h = static_cast<uint16_t>(rng());
    } while ((h & 0x7c00) == 0x7c00);
  }
  return v;
}

std::vector<float> widen(const std::vector<uint16_t>& h) {
  std::vector<float> f(h.size());
  for (size_t i = 0; i < h.size(); ++i) f[i] = hyperdex::half_to_float(h[i]);
  return f;
}

TEST(Kernels, LevelSelection) {
  EXPECT_TRUE(emu::cpu_supports(KernelLevel::Scalar));
  EXPECT_STREQ(scalar().name, "scalar");
  const std::pair<KernelLevel, const char*> levels[] = {{KernelLevel::Avx2, "avx2"},
                                                        {KernelLevel::Avx512, "avx512"}};
  for (const auto& [level, name] : levels) {
    if (emu::cpu_supports(level)) {
      EXPECT_STREQ(emu::kernels_for(level).name, name);
    } else {
      EXPECT_THROW(emu::kernels_for(level), std::runtime_error);
    }
  }
  const std::string best = emu::best_kernels().name;
  EXPECT_TRUE(best == "scalar" || best == "avx2" || best == "avx512") << best;
  if (std::getenv("HYPERDEX_KERNELS") == nullptr) {
    const char* want = emu::cpu_supports(KernelLevel::Avx512) ? "avx512"
                       : emu::cpu_supports(KernelLevel::Avx2) ? "avx2"
                                                              : "scalar";
    EXPECT_EQ(best, want);
  }
}

// best_kernels() caches its choice, so the cap is checked in fresh processes
// (the threadsafe death-test style re-executes the test binary).
void expect_cap(const char* value, const char* want) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_EXIT(
      {
        setenv("HYPERDEX_KERNELS", value, 1);
        std::exit(std::string(emu::best_kernels().name) == want ? 0 : 1);
      },
      testing::ExitedWithCode(0), "")
      << "HYPERDEX_KERNELS=" << value;
}

TEST(Kernels, EnvironmentCapsTheLevel) {
  expect_cap("scalar", "scalar");
  if (emu::cpu_supports(KernelLevel::Avx2)) expect_cap("avx2", "avx2");
  if (emu::cpu_supports(KernelLevel::Avx512)) expect_cap("avx512", "avx512");
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_EXIT(
      {
        setenv("HYPERDEX_KERNELS", "sse9", 1);
        try {
          emu::best_kernels();
        } catch (const std::runtime_error&) {
          std::exit(0);
        }
        std::exit(1);
      },
      testing::ExitedWithCode(0), "");
}

TEST(Kernels, ScalarFollowsTheNormativeTree) {
  std::mt19937 rng(1);
  for (size_t n = 0; n <= 300; ++n) {
    for (int trial = 0; trial < 4; ++trial) {
      const auto a = random_floats(rng, n), b = random_floats(rng, n);
      ASSERT_EQ(bits(scalar().dot_f32(a.data(), b.data(), n)), bits(reference_tree(a, b))) << n;
      const auto h = random_halves(rng, n);
      ASSERT_EQ(bits(scalar().dot_f16(h.data(), b.data(), n)), bits(reference_tree(widen(h), b)))
          << n;
    }
  }
}

TEST(Kernels, PaddingTurnsNegativeZeroLanesPositive) {
  // Every product underflows to -0, so after 16 elements every lane holds -0.
  // With n = 32 no lane sees padding and the sum stays -0; with n = 31 lane 15
  // gets fma(0, 0, -0) = +0 and the sum is +0.
  const std::vector<float> a(32, -1e-30f), b(32, 1e-30f);
  EXPECT_EQ(bits(scalar().dot_f32(a.data(), b.data(), 16)), 0x80000000u);
  EXPECT_EQ(bits(scalar().dot_f32(a.data(), b.data(), 32)), 0x80000000u);
  EXPECT_EQ(bits(scalar().dot_f32(a.data(), b.data(), 31)), 0x00000000u);
  EXPECT_EQ(bits(scalar().dot_f32(a.data(), b.data(), 15)), 0x00000000u);
  EXPECT_EQ(bits(scalar().dot_f32(a.data(), b.data(), 0)), 0x00000000u);
  EXPECT_EQ(bits(reference_tree(std::vector<float>(31, -1e-30f), std::vector<float>(31, 1e-30f))),
            0x00000000u);
}

TEST(Kernels, DotMatchesDoublePrecision) {
  std::mt19937 rng(2);
  std::uniform_real_distribution<float> uni(-2.0f, 2.0f);
  for (KernelLevel level : {KernelLevel::Scalar, KernelLevel::Avx2, KernelLevel::Avx512}) {
    if (!emu::cpu_supports(level)) continue;
    const Kernels& kern = emu::kernels_for(level);
    for (size_t n = 1; n <= 1000; n += (n < 40 ? 1 : 37)) {
      std::vector<float> a(n), x(n);
      std::vector<uint16_t> h(n);
      for (size_t i = 0; i < n; ++i) {
        a[i] = uni(rng);
        x[i] = uni(rng);
        h[i] = hyperdex::float_to_half(uni(rng));
      }
      const auto w = widen(h);
      double ref32 = 0, ref16 = 0, mag32 = 0, mag16 = 0;
      for (size_t i = 0; i < n; ++i) {
        ref32 += double(a[i]) * x[i];
        mag32 += std::fabs(double(a[i]) * x[i]);
        ref16 += double(w[i]) * x[i];
        mag16 += std::fabs(double(w[i]) * x[i]);
      }
      // Each result is at most (n/16 + 4) roundings away from the exact sum.
      const double gamma = std::ldexp(1.0, -24) * double((n + 15) / 16 + 4) * 1.01;
      EXPECT_NEAR(kern.dot_f32(a.data(), x.data(), n), ref32, gamma * mag32) << kern.name << n;
      EXPECT_NEAR(kern.dot_f16(h.data(), x.data(), n), ref16, gamma * mag16) << kern.name << n;
    }
  }
}

// ---- SIMD levels against the scalar one, bit for bit ------------------------

class SimdLevel : public testing::TestWithParam<KernelLevel> {
 protected:
  void SetUp() override {
    if (!emu::cpu_supports(GetParam())) GTEST_SKIP() << "this CPU lacks the level";
  }
  const Kernels& kern() const { return emu::kernels_for(GetParam()); }
};

INSTANTIATE_TEST_SUITE_P(Levels, SimdLevel, testing::Values(KernelLevel::Avx2, KernelLevel::Avx512),
                         [](const testing::TestParamInfo<KernelLevel>& info) {
                           return std::string(info.param == KernelLevel::Avx2 ? "avx2" : "avx512");
                         });

TEST_P(SimdLevel, ConversionsBitIdentical) {
  // Every half, NaNs included, at every alignment of the tails.
  std::vector<uint16_t> all(65536 + 40);
  for (size_t i = 0; i < all.size(); ++i) all[i] = static_cast<uint16_t>(i * 40503u);
  for (size_t off = 0; off < 3; ++off) {
    const size_t n = all.size() - off - (off * 7) % 16;
    std::vector<float> got(n), want(n);
    kern().half_to_float_n(all.data() + off, got.data(), n);
    scalar().half_to_float_n(all.data() + off, want.data(), n);
    ASSERT_EQ(std::memcmp(got.data(), want.data(), n * sizeof(float)), 0);
  }
  std::mt19937 rng(3);
  for (size_t n = 0; n <= 300; ++n) {
    std::vector<float> f(n + 1);
    for (auto& v : f) {
      uint32_t u = rng();  // every bit pattern: NaNs, infs, subnormals
      if (n % 2) u = (u & 0x807fffffu) | ((102u + u % 42u) << 23);  // the half range
      std::memcpy(&v, &u, 4);
    }
    std::vector<uint16_t> got(n), want(n);
    kern().float_to_half_n(f.data() + 1, got.data(), n);
    scalar().float_to_half_n(f.data() + 1, want.data(), n);
    ASSERT_EQ(got, want) << n;
  }
}

TEST_P(SimdLevel, DotsBitIdentical) {
  std::mt19937 rng(4);
  for (size_t n = 0; n <= 300; ++n) {
    for (int trial = 0; trial < 8; ++trial) {
      // Offsets make the operands unaligned.
      const size_t off = trial % 3;
      const auto a = random_floats(rng, n + off), b = random_floats(rng, n + off);
      const auto h = random_halves(rng, n + off);
      const float got32 = kern().dot_f32(a.data() + off, b.data() + off, n);
      const float want32 = scalar().dot_f32(a.data() + off, b.data() + off, n);
      ASSERT_EQ(bits(got32), bits(want32)) << "dot_f32 n=" << n << " " << got32 << " vs " << want32;
      const float got16 = kern().dot_f16(h.data() + off, b.data() + off, n);
      const float want16 = scalar().dot_f16(h.data() + off, b.data() + off, n);
      ASSERT_EQ(bits(got16), bits(want16)) << "dot_f16 n=" << n << " " << got16 << " vs " << want16;
    }
  }
  // All products -0: the sign of the zero result depends on the padding.
  const std::vector<float> a(48, -1e-30f), b(48, 1e-30f);
  for (size_t n = 0; n <= 48; ++n) {
    const float got = kern().dot_f32(a.data(), b.data(), n);
    ASSERT_EQ(bits(got), bits(scalar().dot_f32(a.data(), b.data(), n))) << n;
  }
}

TEST_P(SimdLevel, AxpyBitIdentical) {
  std::mt19937 rng(5);
  for (size_t n = 0; n <= 300; ++n) {
    const size_t off = n % 3;
    const auto v = random_halves(rng, n + off);
    const auto acc0 = random_floats(rng, n + off + 1);
    const float a = random_floats(rng, 1)[0];
    auto got = acc0, want = acc0;
    kern().axpy_f16(a, v.data() + off, got.data() + off, n);
    scalar().axpy_f16(a, v.data() + off, want.data() + off, n);
    ASSERT_EQ(std::memcmp(got.data(), want.data(), got.size() * sizeof(float)), 0) << n;
  }
}

TEST_P(SimdLevel, AttentionBlocksEqualTheScalarCallsRowByRow) {
  // dot_f16_many and axpy_f16_many against one scalar call per row: every row count
  // around the kernels' blocks of 8, widths around their register blocks of 16-128.
  std::mt19937 rng(6);
  for (size_t n : {1, 15, 16, 17, 48, 64, 100, 128, 130, 192, 256, 300}) {
    for (size_t nrows = 0; nrows <= 20; ++nrows) {
      std::vector<std::vector<uint16_t>> store;
      std::vector<const uint16_t*> rows;
      for (size_t j = 0; j < nrows; ++j) store.push_back(random_halves(rng, n + j % 3));
      for (size_t j = 0; j < nrows; ++j) rows.push_back(store[j].data() + j % 3);
      const auto x = random_floats(rng, n), a = random_floats(rng, nrows);
      std::vector<float> got(nrows), want(nrows);
      emu::dot_f16_many(kern(), rows.data(), nrows, n, x.data(), got.data());
      for (size_t j = 0; j < nrows; ++j) want[j] = scalar().dot_f16(rows[j], x.data(), n);
      ASSERT_TRUE(nrows == 0 || std::memcmp(got.data(), want.data(), nrows * sizeof(float)) == 0)
          << n << " " << nrows;
      const auto acc0 = random_floats(rng, n);
      auto acc = acc0, ref = acc0;
      emu::axpy_f16_many(kern(), a.data(), rows.data(), nrows, acc.data(), n);
      for (size_t j = 0; j < nrows; ++j) scalar().axpy_f16(a[j], rows[j], ref.data(), n);
      ASSERT_EQ(std::memcmp(acc.data(), ref.data(), n * sizeof(float)), 0) << n << " " << nrows;
    }
  }
}

// ---- matmul_f16 ------------------------------------------------------------

// A weight matrix striped over pseudo-channels the way the emulator lays it
// out: 64-byte aligned rows, zero-padded to a multiple of 32 halves.
class StripedMatrix {
 public:
  StripedMatrix(const std::vector<uint16_t>& w, size_t m, size_t k, uint32_t channels)
      // base 192: the region does not start at the channel's start
      : buf_((k + 31) / 32 * 32 * 2, 192, m, channels) {
    for (size_t r = 0; r < m; ++r) std::memcpy(buf_.row(r), w.data() + r * k, k * 2);
  }
  const emu::StripedRows& rows() const { return buf_.rows(); }

 private:
  hyperdex::testing::StripedBuffer buf_;
};

struct MatmulCase {
  size_t m, k, n;
};

// Runs matmul_f16 for every available level, channel count and pool size and
// checks each output against dot_f16 of the scalar level, bit for bit.
void check_matmul(const MatmulCase& c, std::mt19937& rng) {
  const size_t x_stride = c.k + 3, y_stride = c.m + 2;
  const auto w = random_halves(rng, c.m * c.k);
  std::vector<float> x(c.n * x_stride);
  for (size_t t = 0; t < c.n; ++t) {
    const auto xt = random_floats(rng, c.k);
    std::copy(xt.begin(), xt.end(), x.begin() + t * x_stride);
    // Between tokens: NaNs that must never reach a result.
    for (size_t i = c.k; i < x_stride; ++i) x[t * x_stride + i] = NAN;
  }
  x.resize((c.n - 1) * x_stride + c.k);  // the last token ends the buffer
  std::vector<float> want(c.n * y_stride);
  for (size_t t = 0; t < c.n; ++t) {
    for (size_t r = 0; r < c.m; ++r) {
      want[t * y_stride + r] = scalar().dot_f16(w.data() + r * c.k, x.data() + t * x_stride, c.k);
    }
  }
  constexpr uint32_t kSentinel = 0x7fc0dead;  // y between rows must stay untouched
  for (KernelLevel level : {KernelLevel::Scalar, KernelLevel::Avx2, KernelLevel::Avx512}) {
    if (!emu::cpu_supports(level)) continue;
    const Kernels& kern = emu::kernels_for(level);
    for (uint32_t channels : {1u, 3u, 32u}) {
      const StripedMatrix sm(w, c.m, c.k, channels);
      for (size_t threads : {1, 2, 4}) {
        hyperdex::ThreadPool pool(threads);
        std::vector<uint32_t> y(c.n * y_stride, kSentinel);
        emu::matmul_f16(kern, sm.rows(), c.m, c.k, x.data(), x_stride, c.n,
                        reinterpret_cast<float*>(y.data()), y_stride, pool);
        for (size_t t = 0; t < c.n; ++t) {
          for (size_t i = 0; i < y_stride; ++i) {
            const uint32_t expect = i < c.m ? bits(want[t * y_stride + i]) : kSentinel;
            ASSERT_EQ(y[t * y_stride + i], expect)
                << kern.name << " m=" << c.m << " k=" << c.k << " n=" << c.n << " channels="
                << channels << " threads=" << threads << " token " << t << " row " << i;
          }
        }
      }
    }
  }
}

TEST(Matmul, EqualsDotF16ForEveryLevelLayoutAndPoolSize) {
  std::mt19937 rng(6);
  for (size_t k : {1, 17, 64, 768}) {
    for (size_t n : {1, 2, 7, 128}) {
      // Enough rows that the pool splits them (except for the smallest k at n = 1).
      const size_t m = k >= 768 ? 100 : 300;
      check_matmul({m, k, n}, rng);
      if (HasFatalFailure()) return;
    }
  }
}

TEST(Matmul, ManyRowsAndOddShapes) {
  std::mt19937 rng(7);
  const MatmulCase cases[] = {{5000, 17, 1}, {5000, 1, 2}, {1, 1, 1},    {3, 33, 5},
                              {9, 100, 6},   {13, 31, 13}, {2000, 48, 3}, {70, 1000, 1},
                              // more results than the driver holds in memory order at a
                              // time (1 Mi floats): two slices of tokens, 64 and 3
                              {17000, 9, 67}};
  for (const auto& c : cases) {
    check_matmul(c, rng);
    if (HasFatalFailure()) return;
  }
}

// ---- quantized rows: matmul_q and dequant_row --------------------------------
// Every level against the definition (docs/isa.md, "Quantized weights"): the scalar
// fp16 MAC tree over isa::dequantize_qrow's exact fp16 values.

constexpr KernelLevel kAllLevels[] = {KernelLevel::Scalar, KernelLevel::Avx2, KernelLevel::Avx512};

TEST(QKernels, DequantRowGivesEveryScaleAndCodeItsExactValue) {
  // Every fp16 bit pattern as a scale (both zeros, subnormals, the scales whose
  // values overflow to inf, infs, NaNs) with every code: one group per scale.
  for (const uint32_t wbits : {4u, 8u}) {
    const uint32_t codes_per_group = 1u << wbits;
    const isa::QRowFormat f{wbits, codes_per_group, codes_per_group * isa::kQGroupsPerChunk};
    std::vector<uint8_t> codes(f.cols);
    for (uint32_t i = 0; i < f.cols; ++i) codes[i] = uint8_t(i % codes_per_group);
    std::vector<uint8_t> row(f.data_bytes());
    std::vector<uint16_t> want(f.cols);
    std::vector<float> got(f.cols);
    for (uint32_t first = 0; first < 0x10000; first += isa::kQGroupsPerChunk) {
      uint16_t scales[isa::kQGroupsPerChunk];
      for (uint32_t j = 0; j < isa::kQGroupsPerChunk; ++j) scales[j] = uint16_t(first + j);
      isa::pack_qrow(f, codes.data(), scales, row.data());
      isa::dequantize_qrow(f, row.data(), want.data());
      for (KernelLevel level : kAllLevels) {
        if (!emu::cpu_supports(level)) continue;
        const Kernels& kern = emu::kernels_for(level);
        kern.dequant_row(f, row.data(), got.data());
        for (uint32_t i = 0; i < f.cols; ++i) {
          ASSERT_EQ(bits(got[i]), bits(hyperdex::half_to_float(want[i])))
              << kern.name << " int" << f.bits << " scale 0x" << std::hex << scales[i / f.group]
              << std::dec << " code " << uint32_t(codes[i]);
        }
      }
    }
  }
}

// Scales of every kind the kernels treat differently.
enum class Scales {
  Usual,       // positive, over a wide range of magnitudes
  Large,       // half of them past the range of the fast rounding (int4: 8192, int8: 512)
  SignsZeros,  // some zeros of both signs, negative ones and fp16 subnormals
};

// n scales of the kind, and the codes that go with them: with Large, codes within
// z -+ 7 (int4) or z -+ 64 (int8), so that every |q - z| * scale stays below fp16's
// 65504 (an inf would make NaNs, whose bits are no business of these tests).
struct ScaleMix {
  uint32_t codes_lo, codes_hi;
  std::vector<uint16_t> scales;
};

ScaleMix scale_mix(std::mt19937& rng, uint32_t bits, size_t n, Scales kind) {
  const uint32_t z = 1u << (bits - 1);
  ScaleMix out{0, 2 * z - 1, std::vector<uint16_t>(n)};
  std::uniform_real_distribution<float> mant(1.0f, 2.0f);
  std::uniform_int_distribution<int> exp(-20, bits == 4 ? 9 : 5), pick(0, 9);
  if (kind == Scales::Large) {
    out.codes_lo = bits == 4 ? 1 : z - 64;
    out.codes_hi = bits == 4 ? 15 : z + 63;
  }
  for (auto& s : out.scales) {
    float v = std::ldexp(mant(rng), exp(rng));
    if (kind == Scales::Large && pick(rng) < 5)
      v = bits == 4 ? 8192.0f + 1000.0f * (mant(rng) - 1.0f) : 512.0f + 500.0f * (mant(rng) - 1.0f);
    if (kind == Scales::SignsZeros) {
      switch (pick(rng)) {
        case 0: v = 0.0f; break;
        case 1: v = -0.0f; break;
        case 2: v = -v; break;
        case 3: v = std::ldexp(mant(rng), -20); break;  // an fp16 subnormal
        default: break;
      }
    }
    s = hyperdex::float_to_half(v);
  }
  return out;
}

// m quantized rows of format f, striped as the emulator lays out a QMatrix region.
class StripedQRows {
 public:
  StripedQRows(const isa::QRowFormat& f, const std::vector<uint8_t>& codes,
               const std::vector<uint16_t>& scales, size_t m, uint32_t channels)
      : buf_((f.data_bytes() + 63) / 64 * 64, 128, m, channels) {
    for (size_t r = 0; r < m; ++r)
      isa::pack_qrow(f, codes.data() + r * f.cols, scales.data() + r * f.groups(), buf_.row(r));
  }
  const emu::StripedRows& rows() const { return buf_.rows(); }

 private:
  hyperdex::testing::StripedBuffer buf_;
};

// matmul_q of every level, layout and pool size against the definition, bit for bit.
void check_matmul_q(const isa::QRowFormat& f, size_t m, size_t n, Scales kind, std::mt19937& rng) {
  ASSERT_EQ(f.check(), "");
  const size_t k = f.cols, x_stride = k + 3, y_stride = m + 2;
  const ScaleMix sm = scale_mix(rng, f.bits, m * f.groups(), kind);
  std::uniform_int_distribution<uint32_t> code(sm.codes_lo, sm.codes_hi);
  std::vector<uint8_t> codes(m * k);
  for (auto& c : codes) c = uint8_t(code(rng));
  std::vector<uint16_t> deq(m * k);
  std::vector<uint8_t> row(f.data_bytes());
  for (size_t r = 0; r < m; ++r) {
    isa::pack_qrow(f, codes.data() + r * k, sm.scales.data() + r * f.groups(), row.data());
    isa::dequantize_qrow(f, row.data(), deq.data() + r * k);
  }
  std::vector<float> x(n * x_stride, NAN);  // NaN between tokens must never reach a result
  for (size_t t = 0; t < n; ++t) {
    // Activations of fp16 magnitude, so that the dots stay finite.
    std::normal_distribution<float> normal(0.0f, 1.0f);
    for (size_t i = 0; i < k; ++i)
      x[t * x_stride + i] = hyperdex::half_to_float(hyperdex::float_to_half(normal(rng)));
  }
  x.resize((n - 1) * x_stride + k);  // the last token ends the buffer
  std::vector<float> want(n * y_stride);
  for (size_t t = 0; t < n; ++t)
    for (size_t r = 0; r < m; ++r)
      want[t * y_stride + r] = scalar().dot_f16(deq.data() + r * k, x.data() + t * x_stride, k);
  constexpr uint32_t kSentinel = 0x7fc0beef;  // y between rows must stay untouched
  for (KernelLevel level : kAllLevels) {
    if (!emu::cpu_supports(level)) continue;
    const Kernels& kern = emu::kernels_for(level);
    for (uint32_t channels : {1u, 3u, 32u}) {
      const StripedQRows rows(f, codes, sm.scales, m, channels);
      for (size_t threads : {1, 2}) {
        hyperdex::ThreadPool pool(threads);
        std::vector<uint32_t> y(n * y_stride, kSentinel);
        emu::matmul_q(kern, rows.rows(), f, m, x.data(), x_stride, n,
                      reinterpret_cast<float*>(y.data()), y_stride, pool);
        for (size_t t = 0; t < n; ++t)
          for (size_t i = 0; i < y_stride; ++i) {
            const uint32_t expect = i < m ? bits(want[t * y_stride + i]) : kSentinel;
            ASSERT_EQ(y[t * y_stride + i], expect)
                << kern.name << " int" << f.bits << " g=" << f.group << " k=" << k << " m=" << m
                << " n=" << n << " scales " << int(kind) << " channels=" << channels
                << " threads=" << threads << " token " << t << " row " << i;
          }
      }
    }
  }
}

TEST(QKernels, MatmulBitIdenticalAtEveryLevelForOddShapes) {
  std::mt19937 rng(11);
  // k a multiple of the group and of 16; a last short group (k % group != 0, still
  // a multiple of 16); more than one chunk of 16 groups, the last one partial; k
  // not a multiple of 16 (the kernels' generic path); groups not a multiple of 16.
  const isa::QRowFormat formats[] = {
      {4, 128, 4096}, {8, 128, 4096}, {4, 128, 576}, {8, 128, 576}, {4, 32, 4128},
      {8, 64, 2112},  {4, 16, 272},   {8, 16, 16},   {4, 128, 16},  {8, 128, 1536},
      {4, 128, 40},   {8, 32, 100},   {4, 8, 40},    {8, 24, 72},   {4, 2, 6},
  };
  for (const auto& f : formats) {
    // Rows: fewer than, not a multiple of, and many times the kernels' row blocks.
    for (const size_t m : {1, 7, 13, 97}) {
      if (m * f.cols > 200000 && m > 13) continue;
      for (Scales kind : {Scales::Usual, Scales::Large, Scales::SignsZeros}) {
        check_matmul_q(f, m, 1, kind, rng);
        if (HasFatalFailure()) return;
      }
    }
    check_matmul_q(f, 9, 3, Scales::SignsZeros, rng);  // prefill
    if (HasFatalFailure()) return;
  }
}

TEST(QKernels, RowsAreNotReadPastTheirData) {
  // Each row alone in a buffer of exactly its data bytes (no padding to 64), so that
  // AddressSanitizer sees any read past it.
  std::mt19937 rng(12);
  for (const isa::QRowFormat f : {isa::QRowFormat{4, 128, 576}, isa::QRowFormat{8, 128, 576},
                                  isa::QRowFormat{4, 32, 80}, isa::QRowFormat{8, 16, 48},
                                  isa::QRowFormat{4, 128, 1040}}) {
    const size_t m = 5;
    std::vector<std::vector<uint8_t>> bufs(m, std::vector<uint8_t>(f.data_bytes()));
    std::vector<uint8_t*> channels;
    std::vector<float> want(m);
    const auto x = random_floats(rng, f.cols);
    for (size_t r = 0; r < m; ++r) {
      const ScaleMix sm = scale_mix(rng, f.bits, f.groups(), Scales::Usual);
      std::vector<uint8_t> codes(f.cols);
      for (auto& c : codes) c = uint8_t(rng() % (1u << f.bits));
      isa::pack_qrow(f, codes.data(), sm.scales.data(), bufs[r].data());
      std::vector<uint16_t> deq(f.cols);
      isa::dequantize_qrow(f, bufs[r].data(), deq.data());
      want[r] = scalar().dot_f16(deq.data(), x.data(), f.cols);
      channels.push_back(bufs[r].data());
    }
    emu::StripedRows rows;
    rows.channels = channels.data();
    rows.num_channels = uint32_t(m);
    rows.row_bytes = f.data_bytes();
    for (KernelLevel level : kAllLevels) {
      if (!emu::cpu_supports(level)) continue;
      hyperdex::ThreadPool pool(1);
      std::vector<float> y(m);
      emu::matmul_q(emu::kernels_for(level), rows, f, m, x.data(), f.cols, 1, y.data(), m, pool);
      for (size_t r = 0; r < m; ++r)
        ASSERT_EQ(bits(y[r]), bits(want[r])) << emu::kernels_for(level).name << " row " << r;
    }
  }
}

TEST(QKernels, ForcedScalarLevelRunsTheQuantizedMatmul) {
  // What a CPU without AVX2 runs: HYPERDEX_KERNELS=scalar makes best_kernels() the
  // scalar level (checked in a fresh process, as best_kernels() caches its choice),
  // and its quantized MATMUL gives the definition's bits.
  std::mt19937 rng(13);
  for (const isa::QRowFormat f : {isa::QRowFormat{4, 128, 576}, isa::QRowFormat{8, 64, 1536}}) {
    const size_t m = 21;
    const ScaleMix sm = scale_mix(rng, f.bits, m * f.groups(), Scales::SignsZeros);
    std::vector<uint8_t> codes(m * f.cols);
    for (auto& c : codes) c = uint8_t(rng() % (1u << f.bits));
    const StripedQRows rows(f, codes, sm.scales, m, 4);
    std::vector<float> want(m);
    const auto x = random_floats(rng, f.cols);
    std::vector<uint16_t> deq(f.cols);
    std::vector<uint8_t> row(f.data_bytes());
    for (size_t r = 0; r < m; ++r) {
      isa::pack_qrow(f, codes.data() + r * f.cols, sm.scales.data() + r * f.groups(), row.data());
      isa::dequantize_qrow(f, row.data(), deq.data());
      want[r] = scalar().dot_f16(deq.data(), x.data(), f.cols);
    }
    GTEST_FLAG_SET(death_test_style, "threadsafe");
    EXPECT_EXIT(
        {
          setenv("HYPERDEX_KERNELS", "scalar", 1);
          const Kernels& kern = emu::best_kernels();
          if (std::string(kern.name) != "scalar") std::exit(2);
          hyperdex::ThreadPool pool(2);
          std::vector<float> y(m);
          emu::matmul_q(kern, rows.rows(), f, m, x.data(), f.cols, 1, y.data(), m, pool);
          for (size_t r = 0; r < m; ++r)
            if (bits(y[r]) != bits(want[r])) std::exit(3);
          std::exit(0);
        },
        testing::ExitedWithCode(0), "")
        << "int" << f.bits;
  }
}

}  // namespace
