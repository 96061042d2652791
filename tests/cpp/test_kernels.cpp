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
#include "test_util.h"

namespace {

namespace emu = hyperdex::emu;
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
                              {9, 100, 6},   {13, 31, 13}, {2000, 48, 3}, {70, 1000, 1}};
  for (const auto& c : cases) {
    check_matmul(c, rng);
    if (HasFatalFailure()) return;
  }
}

}  // namespace
