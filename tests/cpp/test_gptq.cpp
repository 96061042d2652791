// GPTQ core (csrc/quant): the fp64 kernels against naive loops (bit for bit:
// every element is one fma chain in a fixed order), RTN codes and scales on
// hand-worked numbers, dequantization exactness, and the blocked, threaded
// GPTQ against a naive unblocked version written here.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "common/error.h"
#include "common/fp16.h"
#include "common/thread_pool.h"
#include "quant/gptq.h"
#include "quant/hessian.h"
#include "quant/linalg.h"

namespace {

using namespace hyperdex;
using namespace hyperdex::quant;

std::vector<SimdLevel> levels() {
  std::vector<SimdLevel> out;
  for (SimdLevel l : {SimdLevel::Generic, SimdLevel::Avx2, SimdLevel::Avx512})
    if (simd_level_supported(l)) out.push_back(l);
  return out;
}

std::vector<double> random_matrix(size_t rows, size_t cols, uint32_t seed, double scale = 1.0) {
  std::mt19937 rng(seed);
  std::normal_distribution<double> nd(0.0, scale);
  std::vector<double> m(rows * cols);
  for (double& v : m) v = nd(rng);
  return m;
}

// A^T A / k + shift I, symmetric positive definite (A is k x n).
std::vector<double> spd(size_t n, size_t k, uint32_t seed, double shift) {
  const std::vector<double> a = random_matrix(k, n, seed);
  std::vector<double> h(n * n, 0.0);
  for (size_t i = 0; i < n; ++i)
    for (size_t j = 0; j < n; ++j) {
      double s = 0.0;
      for (size_t p = 0; p < k; ++p) s += a[p * n + i] * a[p * n + j];
      h[i * n + j] = s / double(k) + (i == j ? shift : 0.0);
    }
  return h;
}

bool same_bits(double a, double b) { return std::memcmp(&a, &b, sizeof a) == 0; }

// -- naive references ----------------------------------------------------------------------

bool naive_cholesky(std::vector<double>& a, size_t n) {
  for (size_t j = 0; j < n; ++j) {
    double d = a[j * n + j];
    for (size_t p = 0; p < j; ++p) d = std::fma(-a[j * n + p], a[j * n + p], d);
    if (!(d > 0.0)) return false;
    a[j * n + j] = std::sqrt(d);
    for (size_t i = j + 1; i < n; ++i) {
      double s = a[i * n + j];
      for (size_t p = 0; p < j; ++p) s = std::fma(-a[i * n + p], a[j * n + p], s);
      a[i * n + j] = s / a[j * n + j];
    }
  }
  return true;
}

std::vector<double> naive_invert_lower(const std::vector<double>& l, size_t n) {
  std::vector<double> x(n * n, 0.0);
  for (size_t i = 0; i < n; ++i)
    for (size_t c = 0; c <= i; ++c) {
      double t = i == c ? 1.0 : 0.0;
      for (size_t p = 0; p < i; ++p) t = std::fma(-l[i * n + p], x[p * n + c], t);
      x[i * n + c] = t / l[i * n + i];
    }
  return x;
}

// The GPTQ loop column by column, no blocks, no threads; U from the naive
// factorisation above (the same arithmetic as the library's, by construction).
QuantResult naive_gptq(const std::vector<float>& w, size_t rows, size_t cols,
                       const std::vector<double>& h, const QuantOptions& opt) {
  const size_t n = cols, gc = opt.group_size == -1 ? cols : size_t(opt.group_size);
  const size_t groups = (cols + gc - 1) / gc;  // the last group may be shorter
  std::vector<double> hh(n * n);
  for (size_t i = 0; i < n; ++i)
    for (size_t j = 0; j < n; ++j) hh[i * n + j] = h[std::max(i, j) * n + std::min(i, j)];
  std::vector<char> dead(n, 0);
  for (size_t j = 0; j < n; ++j)
    if (hh[j * n + j] == 0.0) dead[j] = 1, hh[j * n + j] = 1.0;
  std::vector<size_t> perm(n);
  std::iota(perm.begin(), perm.end(), size_t{0});
  if (opt.desc_act)
    std::stable_sort(perm.begin(), perm.end(),
                     [&](size_t a, size_t b) { return hh[a * n + a] > hh[b * n + b]; });
  double mean = 0.0;
  for (size_t j = 0; j < n; ++j) mean += hh[j * n + j];
  const double damp = opt.damp_percent * mean / double(n);
  std::vector<double> f(n * n);
  for (size_t i = 0; i < n; ++i)
    for (size_t j = 0; j < n; ++j)
      f[i * n + j] = hh[perm[n - 1 - i] * n + perm[n - 1 - j]] + (i == j ? damp : 0.0);
  EXPECT_TRUE(naive_cholesky(f, n));
  const std::vector<double> x = naive_invert_lower(f, n);
  std::vector<double> u(n * n, 0.0);
  for (size_t i = 0; i < n; ++i)
    for (size_t j = i; j < n; ++j) u[i * n + j] = x[(n - 1 - i) * n + (n - 1 - j)];

  QuantResult res;
  res.rows = rows, res.cols = cols, res.groups = groups, res.damp = damp;
  res.codes.assign(rows * cols, 0);
  res.scales.assign(rows * groups, 0);
  for (size_t r = 0; r < rows; ++r) {
    std::vector<double> wr(n);
    for (size_t k = 0; k < n; ++k) wr[k] = dead[perm[k]] ? 0.0 : double(w[r * n + perm[k]]);
    if (opt.static_groups)
      for (size_t g = 0; g < groups; ++g) {
        double absmax = 0.0;
        for (size_t c = g * gc; c < std::min(n, (g + 1) * gc); ++c)
          if (!dead[c]) absmax = std::max(absmax, std::fabs(double(w[r * n + c])));
        res.scales[r * groups + g] = group_scale(absmax, opt.bits);
      }
    uint16_t s = 0;
    for (size_t j = 0; j < n; ++j) {
      if (opt.static_groups) {
        s = res.scales[r * groups + perm[j] / gc];
      } else if (j % gc == 0) {
        double absmax = 0.0;
        for (size_t c = j; c < std::min(n, j + gc); ++c) absmax = std::max(absmax, std::fabs(wr[c]));
        s = group_scale(absmax, opt.bits);
        res.scales[r * groups + j / gc] = s;
      }
      const uint8_t q = quantize_code(wr[j], double(half_to_float(s)), opt.bits);
      const double wq = double(half_to_float(dequantize_code(q, s, opt.bits)));
      const double e = (wr[j] - wq) / u[j * n + j];
      res.loss += e * e / 2.0;
      res.codes[r * n + perm[j]] = q;
      for (size_t c = j + 1; c < n; ++c) wr[c] = std::fma(-e, u[j * n + c], wr[c]);
    }
  }
  return res;
}

// -- kernels -------------------------------------------------------------------------------

TEST(GptqLinalg, GemmIsTheFmaChainOnEveryLevel) {
  const size_t shapes[][3] = {{1, 1, 1},   {5, 7, 3},     {6, 16, 128}, {13, 37, 129},
                              {97, 300, 5}, {100, 33, 300}, {192, 520, 64}};
  for (const auto& shp : shapes) {
    const size_t m = shp[0], n = shp[1], k = shp[2];
    const auto a = random_matrix(m, k, 1), b = random_matrix(k, n, 2), c0 = random_matrix(m, n, 3);
    for (bool subtract : {false, true}) {
      std::vector<double> want = c0;
      for (size_t i = 0; i < m; ++i)
        for (size_t j = 0; j < n; ++j)
          for (size_t p = 0; p < k; ++p)
            want[i * n + j] = std::fma(subtract ? -a[i * k + p] : a[i * k + p], b[p * n + j],
                                       want[i * n + j]);
      // A as given and through a transposed copy (strided view).
      std::vector<double> at(k * m);
      for (size_t i = 0; i < m; ++i)
        for (size_t p = 0; p < k; ++p) at[p * m + i] = a[i * k + p];
      for (SimdLevel level : levels()) {
        GemmWorkspace ws;
        std::vector<double> c = c0, ct = c0;
        gemm_acc(level, m, n, k, subtract, a.data(), k, 1, b.data(), n, c.data(), n, &ws);
        gemm_acc(level, m, n, k, subtract, at.data(), 1, m, b.data(), n, ct.data(), n);
        for (size_t i = 0; i < m * n; ++i) {
          ASSERT_TRUE(same_bits(c[i], want[i])) << "level " << int(level) << " m" << m << " n" << n
                                                << " k" << k << " at " << i;
          ASSERT_TRUE(same_bits(ct[i], want[i])) << "transposed, level " << int(level);
        }
      }
    }
  }
}

TEST(GptqLinalg, CholeskyAndInverseMatchNaiveBitForBit) {
  ThreadPool pool(3);
  for (size_t n : {1, 7, 128, 129, 300}) {
    const std::vector<double> a = spd(n, n + 10, uint32_t(n), 0.1);
    std::vector<double> naive = a;
    ASSERT_TRUE(naive_cholesky(naive, n));
    const std::vector<double> xinv = naive_invert_lower(naive, n);
    for (SimdLevel level : levels()) {
      std::vector<double> l = a;
      ASSERT_TRUE(cholesky_lower(l.data(), n, n, pool, level));
      for (size_t i = 0; i < n; ++i)
        for (size_t j = 0; j <= i; ++j)
          ASSERT_TRUE(same_bits(l[i * n + j], naive[i * n + j])) << n << " " << i << "," << j;
      std::vector<double> x(n * n, 7.0);
      invert_lower(l.data(), n, n, x.data(), n, pool, level);
      for (size_t i = 0; i < n; ++i)
        for (size_t j = 0; j < n; ++j)
          ASSERT_TRUE(same_bits(x[i * n + j], j <= i ? xinv[i * n + j] : 0.0)) << i << "," << j;
    }
    // And they are what they claim: L L^T = A, X L = I.
    double err_llt = 0.0, err_inv = 0.0;
    for (size_t i = 0; i < n; ++i)
      for (size_t j = 0; j <= i; ++j) {
        double s = 0.0, t = 0.0;
        for (size_t p = 0; p <= j; ++p) s += naive[i * n + p] * naive[j * n + p];
        for (size_t p = j; p <= i; ++p) t += xinv[i * n + p] * naive[p * n + j];
        err_llt = std::max(err_llt, std::fabs(s - a[i * n + j]));
        err_inv = std::max(err_inv, std::fabs(t - (i == j ? 1.0 : 0.0)));
      }
    EXPECT_LT(err_llt, 1e-12) << n;
    EXPECT_LT(err_inv, 1e-10) << n;
  }
}

TEST(GptqLinalg, CholeskyRefusesIndefinite) {
  ThreadPool pool(2);
  const size_t n = 200;
  std::vector<double> a = spd(n, n + 10, 4, 0.1);
  a[150 * n + 150] = -1.0;
  EXPECT_FALSE(cholesky_lower(a.data(), n, n, pool, best_simd_level()));
  std::vector<double> nan = spd(n, n + 10, 4, 0.1);
  nan[3 * n + 3] = std::nan("");
  EXPECT_FALSE(cholesky_lower(nan.data(), n, n, pool, best_simd_level()));
}

// -- RTN and the number format -------------------------------------------------------------

TEST(GptqRtn, CodesAndScalesByHand) {
  ThreadPool pool(2);
  // absmax 7.5 -> scale 2 * 7.5 / 15 = 1 exactly, so w / scale = w: ties round to even,
  // 7.5 -> 8 clamps to 15, -7.5 -> -8 -> 0; an all-zero group gets scale 1.
  const std::vector<float> w = {7.5f, 2.5f, 3.5f, -0.5f, -7.5f, 1.5f, 0.49f, -2.5f,
                                0.f,  0.f,  0.f,  0.f,   0.3f,  -0.3f, 0.1f, 0.f};
  QuantOptions opt;
  opt.bits = 4;
  opt.group_size = 4;
  const QuantResult r = rtn_quantize(w.data(), 2, 8, opt, "t", pool);
  ASSERT_EQ(r.groups, 2u);
  const std::vector<uint8_t> by_hand = {15, 10, 12, 8, 0, 10, 8, 6, 8, 8, 8, 8};
  EXPECT_EQ(std::vector<uint8_t>(r.codes.begin(), r.codes.begin() + 12), by_hand);
  // The last group's scale is fp16(0.04), not a round number: codes from the formula.
  const uint16_t s3 = float_to_half(float(2.0 * double(0.3f) / 15.0));
  EXPECT_EQ(r.scales[0], 0x3c00u);
  EXPECT_EQ(r.scales[1], 0x3c00u);
  EXPECT_EQ(r.scales[2], 0x3c00u);  // all zero
  EXPECT_EQ(r.scales[3], s3);
  const double sd = half_to_float(s3);
  EXPECT_EQ(r.codes[12], uint8_t(std::nearbyint(double(0.3f) / sd) + 8));
  EXPECT_EQ(r.codes[13], uint8_t(std::nearbyint(double(-0.3f) / sd) + 8));
  EXPECT_EQ(r.codes[14], uint8_t(std::nearbyint(double(0.1f) / sd) + 8));

  // int8: absmax 127.5 -> scale 1: 127.5 -> 128 -> clamps to 255, -127.5 -> -128 -> 0.
  const std::vector<float> w8 = {127.5f, -127.5f, 0.5f, 1.5f};
  opt.bits = 8;
  opt.group_size = -1;
  const QuantResult r8 = rtn_quantize(w8.data(), 1, 4, opt, "", pool);
  EXPECT_EQ(r8.codes, (std::vector<uint8_t>{255, 0, 128, 130}));
  EXPECT_EQ(r8.scales, (std::vector<uint16_t>{0x3c00u}));
  // loss: (127.5 - 127)^2 + 0.5^2 + 0.5^2 + 0.5^2.
  EXPECT_DOUBLE_EQ(r8.loss, 1.0);
}

TEST(GptqRtn, ScaleRoundingAndGuards) {
  // The scale is rounded to fp16 before the codes are computed.
  const double absmax = 1.2345678;
  const uint16_t s = group_scale(absmax, 4);
  EXPECT_EQ(s, float_to_half(float(2.0 * absmax / 15.0)));
  EXPECT_EQ(group_scale(0.0, 4), 0x3c00u);
  EXPECT_EQ(group_scale(1e-9, 8), 0x3c00u);  // below fp16's smallest subnormal
  // Weights too large for fp16 dequantized values are refused.
  ThreadPool pool(1);
  const std::vector<float> big = {70000.f, 1.f};
  QuantOptions opt;
  opt.group_size = -1;
  try {
    rtn_quantize(big.data(), 1, 2, opt, "blk.0.attn_q.weight", pool);
    FAIL() << "no error";
  } catch (const SpecError& e) {
    EXPECT_NE(std::string(e.what()).find("blk.0.attn_q.weight"), std::string::npos);
    EXPECT_NE(std::string(e.what()).find("fp16"), std::string::npos);
  }
}

TEST(GptqDequant, ExactForEveryCodeAndManyScales) {
  ThreadPool pool(2);
  std::vector<uint16_t> scales;
  for (uint32_t h = 1; h < 0x7c00u; h += 37) scales.push_back(uint16_t(h));  // subnormals too
  for (int bits : {4, 8}) {
    const size_t cols = size_t(1) << bits, rows = scales.size();
    std::vector<uint8_t> codes(rows * cols);
    for (size_t r = 0; r < rows; ++r)
      for (size_t c = 0; c < cols; ++c) codes[r * cols + c] = uint8_t(c);
    const std::vector<uint16_t> out =
        dequantize(codes.data(), scales.data(), rows, cols, bits, -1, pool);
    for (size_t r = 0; r < rows; ++r)
      for (size_t c = 0; c < cols; ++c) {
        const double z = double(1 << (bits - 1));
        const double exact = (double(c) - z) * double(half_to_float(scales[r]));
        const float prod = float(double(c) - z) * half_to_float(scales[r]);
        ASSERT_EQ(double(prod), exact);  // the product is exact in fp32
        ASSERT_EQ(out[r * cols + c], float_to_half(prod)) << bits << " " << r << " " << c;
      }
  }
  const std::vector<uint8_t> bad = {3, 16};
  const std::vector<uint16_t> one = {0x3c00u};
  try {
    dequantize(bad.data(), one.data(), 1, 2, 4, -1, pool);
    FAIL() << "no error";
  } catch (const SpecError& e) {
    EXPECT_NE(std::string(e.what()).find("code 16"), std::string::npos) << e.what();
  }
}

// -- GPTQ ----------------------------------------------------------------------------------

struct GptqCase {
  size_t rows, cols;
  int bits;
  int64_t group_size, block_size;
  bool desc_act, static_groups;
  const char* what;
};

TEST(GptqCore, BlockedThreadedEqualsNaiveUnblocked) {
  const GptqCase cases[] = {
      {50, 256, 4, 128, 128, false, false, "g128 b128"},
      {37, 192, 4, 32, 128, false, false, "groups inside blocks"},
      {61, 256, 4, 64, 48, false, false, "groups longer than blocks"},
      {40, 200, 8, -1, 64, false, false, "per row, int8"},
      {40, 192, 4, 48, 128, false, true, "static groups"},
      {97, 256, 4, 64, 32, true, true, "desc_act + static groups"},
      {12, 130, 8, 14, 7, true, true, "odd sizes, a short last group"},
      {50, 200, 4, 128, 64, false, false, "a short last group (200 = 128 + 72)"},
  };
  for (const GptqCase& tc : cases) {
    SCOPED_TRACE(tc.what);
    const size_t n = tc.cols;
    // Correlated inputs with per-feature scales (so desc_act reorders) and one dead input.
    std::vector<double> x = random_matrix(n + 64, n, 11);
    const std::vector<double> mix = random_matrix(n, n, 12, 1.0 / std::sqrt(double(n)));
    std::vector<float> xf((n + 64) * n);
    for (size_t t = 0; t < n + 64; ++t)
      for (size_t j = 0; j < n; ++j) {
        double s = 0.0;
        for (size_t p = 0; p < n; ++p) s += x[t * n + p] * mix[p * n + j];
        xf[t * n + j] = j == 5 ? 0.f : float(s * (1.0 + double(j % 7)));
      }
    HessianAccumulator acc(n, 2);
    acc.add(xf.data(), n + 64, n);
    const std::vector<double> h = acc.hessian();
    const std::vector<double> wd = random_matrix(tc.rows, n, 13, 0.05);
    std::vector<float> w(wd.begin(), wd.end());
    QuantOptions opt;
    opt.bits = tc.bits;
    opt.group_size = tc.group_size;
    opt.block_size = tc.block_size;
    opt.desc_act = tc.desc_act;
    opt.static_groups = tc.static_groups;
    const QuantResult want = naive_gptq(w, tc.rows, n, h, opt);
    for (size_t threads : {1, 3}) {
      ThreadPool pool(threads);
      const QuantResult got = gptq_quantize(w.data(), tc.rows, n, h.data(), opt, "t", pool);
      EXPECT_EQ(got.codes, want.codes);
      EXPECT_EQ(got.scales, want.scales);
      EXPECT_NEAR(got.loss, want.loss, 1e-9 * want.loss);
      EXPECT_EQ(got.damp, want.damp);
      EXPECT_EQ(got.retries, 0);
      // The dead input column quantizes to zero.
      for (size_t r = 0; r < tc.rows; ++r) EXPECT_EQ(got.codes[r * n + 5], 1 << (tc.bits - 1));
    }
  }
}

TEST(GptqCore, BeatsRtnOnTheLayerOutput) {
  const size_t rows = 64, n = 256, t = 1024;
  const std::vector<double> z = random_matrix(t, n, 21), mix = random_matrix(n, n, 22);
  std::vector<float> x(t * n);
  for (size_t i = 0; i < t; ++i)
    for (size_t j = 0; j < n; ++j) {
      double s = 0.0;
      for (size_t p = 0; p < n; ++p) s += z[i * n + p] * mix[p * n + j];
      x[i * n + j] = float(s);
    }
  HessianAccumulator acc(n);
  acc.add(x.data(), t, n);
  const std::vector<double> h = acc.hessian();
  const std::vector<double> wd = random_matrix(rows, n, 23, 0.05);
  const std::vector<float> w(wd.begin(), wd.end());
  ThreadPool pool(2);
  QuantOptions opt;
  const QuantResult g = gptq_quantize(w.data(), rows, n, h.data(), opt, "t", pool);
  const QuantResult r = rtn_quantize(w.data(), rows, n, opt, "t", pool);
  auto output_error = [&](const QuantResult& q) {
    const std::vector<uint16_t> wq =
        dequantize(q.codes.data(), q.scales.data(), rows, n, 4, 128, pool);
    double e = 0.0;  // ||(W - W') X^T||^2 = sum_r d_r^T (X^T X) d_r
    for (size_t i = 0; i < rows; ++i) {
      std::vector<double> d(n);
      for (size_t j = 0; j < n; ++j)
        d[j] = double(w[i * n + j]) - double(half_to_float(wq[i * n + j]));
      for (size_t a = 0; a < n; ++a)
        for (size_t b = 0; b < n; ++b) e += d[a] * h[a * n + b] * d[b];
    }
    return e;
  };
  EXPECT_LT(output_error(g), 0.6 * output_error(r));
}

TEST(GptqCore, RetriesWithMoreDampingThenNamesTheLayer) {
  ThreadPool pool(2);
  const size_t n = 64, rows = 8;
  const std::vector<double> wd = random_matrix(rows, n, 31, 0.05);
  const std::vector<float> w(wd.begin(), wd.end());
  QuantOptions opt;
  opt.group_size = 32;
  // H = I - c v v^T (v a unit vector): eigenvalues 1 and 1 - c = -0.05, mean(diag) = 1 - c / n.
  // Damping 0.01 * mean does not make it definite, 10x that does.
  std::vector<double> v = random_matrix(1, n, 32);
  double norm = 0.0;
  for (double x : v) norm += x * x;
  for (double& x : v) x /= std::sqrt(norm);
  auto rank_one = [&](double c) {
    std::vector<double> h(n * n);
    for (size_t i = 0; i < n; ++i)
      for (size_t j = 0; j < n; ++j) h[i * n + j] = (i == j ? 1.0 : 0.0) - c * v[i] * v[j];
    return h;
  };
  const double c = 1.05;
  const QuantResult ok = gptq_quantize(w.data(), rows, n, rank_one(c).data(), opt, "t", pool);
  EXPECT_EQ(ok.retries, 1);
  EXPECT_NEAR(ok.damp, 0.1 * (1.0 - c / double(n)), 1e-12);

  // Hugely indefinite: no damping helps.
  const std::vector<double> bad = rank_one(1e6);
  try {
    gptq_quantize(w.data(), rows, n, bad.data(), opt, "blk.3.ffn_down.weight", pool);
    FAIL() << "no error";
  } catch (const SpecError& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("blk.3.ffn_down.weight"), std::string::npos) << msg;
    EXPECT_NE(msg.find("damp_percent"), std::string::npos) << msg;
    EXPECT_NE(msg.find("calibrat"), std::string::npos) << msg;
  }
}

TEST(GptqCore, ValidationErrorsSayWhatToDo) {
  ThreadPool pool(1);
  const size_t n = 64;
  const std::vector<double> h = spd(n, 2 * n, 41, 0.1);
  std::vector<float> w(4 * n, 0.01f);
  auto message = [&](const QuantOptions& opt, const std::vector<float>& ww,
                     const std::vector<double>& hh) {
    try {
      gptq_quantize(ww.data(), 4, n, hh.data(), opt, "L", pool);
    } catch (const SpecError& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  QuantOptions base;
  base.group_size = 32;
  QuantOptions o = base;
  o.bits = 3;
  EXPECT_NE(message(o, w, h).find("bits must be 4 or 8"), std::string::npos);
  o = base;
  o.sym = false;
  EXPECT_NE(message(o, w, h).find("sym=True"), std::string::npos);
  o = base;
  o.desc_act = true;
  EXPECT_NE(message(o, w, h).find("static_groups=True"), std::string::npos);
  o = base;
  o.group_size = 47;
  EXPECT_NE(message(o, w, h).find("group_size must be a positive even number"),
            std::string::npos);
  o = base;
  o.damp_percent = 0.0;
  EXPECT_NE(message(o, w, h).find("damp_percent"), std::string::npos);
  std::vector<float> wn = w;
  wn[70] = std::nanf("");
  EXPECT_NE(message(base, wn, h).find("weights contain NaN"), std::string::npos);
  std::vector<double> hn = h;
  hn[9 * n + 3] = INFINITY;
  EXPECT_NE(message(base, w, hn).find("Hessian contains NaN or infinity"), std::string::npos);
  EXPECT_NE(message(base, w, hn).find("layer 'L'"), std::string::npos);
}

TEST(GptqCore, InterruptStops) {
  ThreadPool pool(2);
  const size_t n = 128;
  const std::vector<double> h = spd(n, 2 * n, 61, 0.1);
  const std::vector<float> w(64 * n, 0.01f);
  QuantOptions opt;
  int calls = 0;
  EXPECT_THROW(gptq_quantize(w.data(), 64, n, h.data(), opt, "L", pool,
                             [&] { return ++calls > 0; }),
               Interrupted);
  EXPECT_GE(calls, 1);
  // A check that never fires changes nothing.
  const QuantResult a =
      gptq_quantize(w.data(), 64, n, h.data(), opt, "L", pool, [] { return false; });
  const QuantResult b = gptq_quantize(w.data(), 64, n, h.data(), opt, "L", pool);
  EXPECT_EQ(a.codes, b.codes);
}

TEST(GptqHessian, BatchingDoesNotChangeTheSum) {
  const size_t n = 200, t = 700;
  const std::vector<double> xd = random_matrix(t, n, 51);
  std::vector<float> x(xd.begin(), xd.end());
  std::vector<uint16_t> x16(t * n);
  for (size_t i = 0; i < t * n; ++i) {
    x16[i] = float_to_half(x[i]);
    x[i] = half_to_float(x16[i]);  // the same values in both dtypes
  }
  HessianAccumulator all(n, 1), parts(n, 3), halves(n, 2), half_parts(n, 1);
  all.add(x.data(), t, n);
  parts.add(x.data(), 1, n);
  parts.add(x.data() + n, 300, n);
  parts.add(x.data() + 301 * n, t - 301, n);
  // fp16 rows are summed in fp32 per 512 rows (counted across calls), then in fp64.
  halves.add_f16(x16.data(), t, n);
  half_parts.add_f16(x16.data(), 511, n);
  half_parts.add_f16(x16.data() + 511 * n, 2, n);
  half_parts.add_f16(x16.data() + 513 * n, t - 513, n);
  EXPECT_EQ(all.count(), t);
  const auto ha = all.hessian(), hp = parts.hessian(), hh = halves.hessian();
  EXPECT_EQ(ha, hp);
  EXPECT_EQ(hh, half_parts.hessian());
  double big = 0.0;
  for (double v : ha) big = std::max(big, std::fabs(v));
  for (size_t i = 0; i < n * n; ++i) ASSERT_NEAR(hh[i], ha[i], 1e-5 * big) << i;
  for (size_t i = 0; i < n; i += 7)
    for (size_t j = 0; j < n; j += 5) {
      double s = 0.0;
      for (size_t k = 0; k < t; ++k) s = std::fma(double(x[k * n + i]), double(x[k * n + j]), s);
      ASSERT_EQ(ha[i * n + j], 2.0 / double(t) * s) << i << "," << j;
      ASSERT_EQ(ha[i * n + j], ha[j * n + i]);
    }
  HessianAccumulator empty(3);
  EXPECT_THROW(empty.hessian(), SpecError);
}

}  // namespace
