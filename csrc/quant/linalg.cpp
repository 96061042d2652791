// fp64 kernels for GPTQ. The multiply-accumulate is GotoBLAS-shaped: A and B
// are packed into micro-panels, and an MR x NR register tile of C accumulates
// with std::fma. The same template is compiled three times (plain, AVX2+FMA,
// AVX-512) through target attributes, so no -march flag is needed; std::fma
// keeps the plain build bit-identical to the SIMD ones (and slow only on CPUs
// without FMA hardware).
#include "quant/linalg.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "emu/kernels.h"

#if defined(__GNUC__)
#define HXQ_INLINE inline __attribute__((always_inline))
#define HXQ_UNROLL _Pragma("GCC unroll 16")
#else
#define HXQ_INLINE inline
#define HXQ_UNROLL
#endif

#if (defined(__x86_64__) || defined(__i386__)) && defined(__GNUC__)
#define HXQ_X86 1
#define HXQ_AVX2 __attribute__((target("avx2,fma")))
#define HXQ_AVX512 __attribute__((target("avx512f,avx2,fma")))
#endif

namespace hyperdex::quant {
namespace {

// Blocking: a kc x NR panel of B stays in L1, an mc x kc block of A in L2.
constexpr size_t kKc = 128;
constexpr size_t kMc = 96;   // a multiple of every MR below
constexpr size_t kNc = 256;  // a multiple of every NR below

template <int MR, int NR>
HXQ_INLINE void micro_kernel(size_t k, const double* ap, const double* bp, double* c, size_t ldc,
                             size_t mr, size_t nr) {
  double acc[MR][NR];
  const bool full = mr == size_t(MR) && nr == size_t(NR);
  if (full) {
    HXQ_UNROLL for (int r = 0; r < MR; ++r) {
      HXQ_UNROLL for (int j = 0; j < NR; ++j) acc[r][j] = c[r * ldc + j];
    }
  } else {
    for (int r = 0; r < MR; ++r)
      for (int j = 0; j < NR; ++j)
        acc[r][j] = (size_t(r) < mr && size_t(j) < nr) ? c[r * ldc + j] : 0.0;
  }
  // The next tile down (the usual next call) is loaded meanwhile: C comes from
  // L3 or memory, once per call, and its latency would otherwise show.
  for (int r = 0; r < MR; ++r) {
    __builtin_prefetch(c + (MR + r) * ldc, 1);
    __builtin_prefetch(c + (MR + r) * ldc + NR - 1, 1);
  }
  for (size_t p = 0; p < k; ++p) {
    const double* a = ap + p * MR;
    const double* b = bp + p * NR;
    HXQ_UNROLL for (int r = 0; r < MR; ++r) {
      const double av = a[r];
      HXQ_UNROLL for (int j = 0; j < NR; ++j) acc[r][j] = std::fma(av, b[j], acc[r][j]);
    }
  }
  if (full) {
    HXQ_UNROLL for (int r = 0; r < MR; ++r) {
      HXQ_UNROLL for (int j = 0; j < NR; ++j) c[r * ldc + j] = acc[r][j];
    }
  } else {
    for (size_t r = 0; r < mr; ++r)
      for (size_t j = 0; j < nr; ++j) c[r * ldc + j] = acc[r][j];
  }
}

template <int MR, int NR>
HXQ_INLINE void gemm_body(size_t m, size_t n, size_t k, bool subtract, const double* a,
                          size_t a_rs, size_t a_cs, const double* b, size_t ldb, double* c,
                          size_t ldc, GemmWorkspace& ws) {
  if (m == 0 || n == 0 || k == 0) return;
  const size_t mc_max = std::min(m, kMc), nc_max = std::min(n, kNc), kc_max = std::min(k, kKc);
  double* apack = ws.get(0, (mc_max + MR - 1) / MR * MR * kc_max);
  double* bpack = ws.get(1, (nc_max + NR - 1) / NR * NR * kc_max);
  const double sign = subtract ? -1.0 : 1.0;
  for (size_t pc = 0; pc < k; pc += kKc) {
    const size_t kc = std::min(kKc, k - pc);
    for (size_t jc = 0; jc < n; jc += kNc) {
      const size_t nc = std::min(kNc, n - jc);
      // B micro-panels: kc rows of NR values each, zero padded on the right.
      for (size_t jr = 0; jr < nc; jr += NR) {
        double* dst = bpack + jr * kc;
        const size_t w = std::min<size_t>(NR, nc - jr);
        for (size_t p = 0; p < kc; ++p) {
          const double* src = b + (pc + p) * ldb + jc + jr;
          size_t j = 0;
          for (; j < w; ++j) dst[p * NR + j] = src[j];
          for (; j < size_t(NR); ++j) dst[p * NR + j] = 0.0;
        }
      }
      for (size_t ic = 0; ic < m; ic += kMc) {
        const size_t mc = std::min(kMc, m - ic);
        // A micro-panels: kc columns of MR values each (sign applied), zero padded below.
        for (size_t ir = 0; ir < mc; ir += MR) {
          double* dst = apack + ir * kc;
          const size_t h = std::min<size_t>(MR, mc - ir);
          for (size_t p = 0; p < kc; ++p) {
            const double* src = a + (ic + ir) * a_rs + (pc + p) * a_cs;
            size_t r = 0;
            for (; r < h; ++r) dst[p * MR + r] = sign * src[r * a_rs];
            for (; r < size_t(MR); ++r) dst[p * MR + r] = 0.0;
          }
        }
        for (size_t jr = 0; jr < nc; jr += NR) {
          for (size_t ir = 0; ir < mc; ir += MR) {
            micro_kernel<MR, NR>(kc, apack + ir * kc, bpack + jr * kc,
                                 c + (ic + ir) * ldc + jc + jr, ldc,
                                 std::min<size_t>(MR, mc - ir), std::min<size_t>(NR, nc - jr));
          }
        }
      }
    }
  }
}

// B (k x n, row-major) as panels of NR columns, each k x NR contiguous, zero
// padded on the right: panel q at out + q * k * NR. Panels [q0, q1) only.
template <int NR>
HXQ_INLINE void pack_b_body(size_t k, size_t n, const double* b, size_t ldb, size_t q0, size_t q1,
                            double* out) {
  for (size_t q = q0; q < q1; ++q) {
    double* dst = out + q * k * NR;
    const size_t j0 = q * NR, w = std::min<size_t>(NR, n - j0);
    for (size_t p = 0; p < k; ++p) {
      const double* src = b + p * ldb + j0;
      size_t j = 0;
      for (; j < w; ++j) dst[p * NR + j] = src[j];
      for (; j < size_t(NR); ++j) dst[p * NR + j] = 0.0;
    }
  }
}

// gemm_body with B packed beforehand (pack_b_body, shared by every caller):
// each B micro-panel is read once per block of A rows and reused from L1.
template <int MR, int NR>
HXQ_INLINE void gemm_packed_body(size_t m, size_t n, size_t k, bool subtract, const double* a,
                                 size_t a_rs, size_t a_cs, const double* bp, double* c,
                                 size_t ldc, GemmWorkspace& ws) {
  if (m == 0 || n == 0 || k == 0) return;
  const size_t mc_max = std::min(m, kMc), kc_max = std::min(k, kKc);
  double* apack = ws.get(0, (mc_max + MR - 1) / MR * MR * kc_max);
  const double sign = subtract ? -1.0 : 1.0;
  for (size_t pc = 0; pc < k; pc += kKc) {
    const size_t kc = std::min(kKc, k - pc);
    for (size_t ic = 0; ic < m; ic += kMc) {
      const size_t mc = std::min(kMc, m - ic);
      for (size_t ir = 0; ir < mc; ir += MR) {
        double* dst = apack + ir * kc;
        const size_t h = std::min<size_t>(MR, mc - ir);
        for (size_t p = 0; p < kc; ++p) {
          const double* src = a + (ic + ir) * a_rs + (pc + p) * a_cs;
          size_t r = 0;
          for (; r < h; ++r) dst[p * MR + r] = sign * src[r * a_rs];
          for (; r < size_t(MR); ++r) dst[p * MR + r] = 0.0;
        }
      }
      for (size_t jr = 0; jr < n; jr += NR) {
        const double* bpanel = bp + (jr / NR) * k * NR + pc * NR;
        for (size_t ir = 0; ir < mc; ir += MR) {
          micro_kernel<MR, NR>(kc, apack + ir * kc, bpanel, c + (ic + ir) * ldc + jr, ldc,
                               std::min<size_t>(MR, mc - ir), std::min<size_t>(NR, n - jr));
        }
      }
    }
  }
}

// Unblocked Cholesky of the kb x kb diagonal block at a (already updated by the
// blocks to its left).
HXQ_INLINE bool factor_diagonal_body(double* a, size_t kb, size_t lda) {
  for (size_t j = 0; j < kb; ++j) {
    double* rj = a + j * lda;
    double d = rj[j];
    for (size_t p = 0; p < j; ++p) d = std::fma(-rj[p], rj[p], d);
    if (!(d > 0.0) || !std::isfinite(d)) return false;
    const double ljj = std::sqrt(d);
    rj[j] = ljj;
    for (size_t i = j + 1; i < kb; ++i) {
      double* ri = a + i * lda;
      double s = ri[j];
      for (size_t p = 0; p < j; ++p) s = std::fma(-ri[p], rj[p], s);
      ri[j] = s / ljj;
    }
  }
  return true;
}

// Rows below the diagonal block: row := row * L11^-T (forward substitution).
// Rows go kRowsAtOnce at a time, transposed, so that the loops run across rows
// (independent chains, vectorisable) instead of along one row's dot product.
constexpr size_t kCholNb = 128;  // Cholesky panel width
constexpr size_t kRowsAtOnce = 32;

HXQ_INLINE void solve_rows_body(double* rows, size_t count, const double* l11, size_t kb,
                                size_t lda) {
  double t[kCholNb][kRowsAtOnce];
  for (size_t i0 = 0; i0 < count; i0 += kRowsAtOnce) {
    const size_t v = std::min(kRowsAtOnce, count - i0);
    for (size_t p = 0; p < kb; ++p)
      for (size_t r = 0; r < kRowsAtOnce; ++r) t[p][r] = r < v ? rows[(i0 + r) * lda + p] : 0.0;
    for (size_t j = 0; j < kb; ++j) {
      const double* lj = l11 + j * lda;
      double s[kRowsAtOnce];
      for (size_t r = 0; r < kRowsAtOnce; ++r) s[r] = t[j][r];
      for (size_t p = 0; p < j; ++p) {
        const double nl = -lj[p];
        HXQ_UNROLL for (size_t r = 0; r < kRowsAtOnce; ++r) s[r] = std::fma(nl, t[p][r], s[r]);
      }
      for (size_t r = 0; r < kRowsAtOnce; ++r) t[j][r] = s[r] / lj[j];
    }
    for (size_t r = 0; r < v; ++r)
      for (size_t p = 0; p < kb; ++p) rows[(i0 + r) * lda + p] = t[p][r];
  }
}

// y[i] = fma(a, x[i], y[i]) for i < n.
HXQ_INLINE void axpy_body(size_t n, double a, const double* x, double* y) {
  for (size_t i = 0; i < n; ++i) y[i] = std::fma(a, x[i], y[i]);
}

// C[i, j] (fp32, ldc) += sum_p a[p * ld + i] * b[p * ld + j] for i < m, j < n, p < k:
// a Gram tile of rows that are already in memory (a and b point into the same rows), no
// packing. Each element is one fp32 FMA chain in p order, whatever the level.
template <int MR, int NR>
HXQ_INLINE void gram_f32_body(size_t m, size_t n, size_t k, const float* a, const float* b,
                              size_t ld, float* c, size_t ldc) {
  for (size_t i0 = 0; i0 < m; i0 += MR) {
    const size_t mr = std::min<size_t>(MR, m - i0);
    for (size_t j0 = 0; j0 < n; j0 += NR) {
      const size_t nr = std::min<size_t>(NR, n - j0);
      float* ct = c + i0 * ldc + j0;
      if (mr == size_t(MR) && nr == size_t(NR)) {
        float acc[MR][NR];
        HXQ_UNROLL for (int r = 0; r < MR; ++r) {
          HXQ_UNROLL for (int j = 0; j < NR; ++j) acc[r][j] = ct[r * ldc + j];
        }
        for (size_t p = 0; p < k; ++p) {
          const float* ap = a + p * ld + i0;
          const float* bp = b + p * ld + j0;
          HXQ_UNROLL for (int r = 0; r < MR; ++r) {
            const float av = ap[r];
            HXQ_UNROLL for (int j = 0; j < NR; ++j) acc[r][j] = std::fma(av, bp[j], acc[r][j]);
          }
        }
        HXQ_UNROLL for (int r = 0; r < MR; ++r) {
          HXQ_UNROLL for (int j = 0; j < NR; ++j) ct[r * ldc + j] = acc[r][j];
        }
      } else {  // an edge tile
        for (size_t r = 0; r < mr; ++r)
          for (size_t j = 0; j < nr; ++j) {
            float v = ct[r * ldc + j];
            for (size_t p = 0; p < k; ++p) v = std::fma(a[p * ld + i0 + r], b[p * ld + j0 + j], v);
            ct[r * ldc + j] = v;
          }
      }
    }
  }
}

// sum over c < len of (w[c] - (q(c) - z) * sd)^2, q(c) the code of w[c] with scale sd
// (as quantize_code, up to ties: x * (1 / sd) instead of x / sd). Lane c % 8
// keeps its own partial sum, combined in a fixed order, so every level gives the
// same bits; the product (q - z) * sd is exact in fp64.
HXQ_INLINE double group_sq_error_body(const double* w, size_t len, double sd, int bits) {
  const double z = double(1 << (bits - 1)), maxq = double((1 << bits) - 1);
  const double inv = 1.0 / sd;  // a search heuristic: x * inv may round a tie differently
  double part[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  auto one = [&](double x, double& acc) {
    const double q = std::min(std::max(std::nearbyint(x * inv) + z, 0.0), maxq);
    const double d = std::fma(z - q, sd, x);
    acc = std::fma(d, d, acc);
  };
  size_t c = 0;
  for (; c + 8 <= len; c += 8) {
    HXQ_UNROLL for (int l = 0; l < 8; ++l) one(w[c + l], part[l]);
  }
  for (; c < len; ++c) one(w[c], part[c % 8]);
  return ((part[0] + part[1]) + (part[2] + part[3])) + ((part[4] + part[5]) + (part[6] + part[7]));
}

struct Kernels64 {
  size_t nr;  // columns per packed B panel
  void (*gemm)(size_t, size_t, size_t, bool, const double*, size_t, size_t, const double*,
               size_t, double*, size_t, GemmWorkspace&);
  void (*pack_b)(size_t, size_t, const double*, size_t, size_t, size_t, double*);
  void (*gemm_packed)(size_t, size_t, size_t, bool, const double*, size_t, size_t, const double*,
                      double*, size_t, GemmWorkspace&);
  bool (*factor_diagonal)(double*, size_t, size_t);
  void (*solve_rows)(double*, size_t, const double*, size_t, size_t);
  void (*axpy)(size_t, double, const double*, double*);
  void (*gram_f32)(size_t, size_t, size_t, const float*, const float*, size_t, float*, size_t);
  double (*group_sq_error)(const double*, size_t, double, int);
};

// One set of entry points per level; the bodies above are inlined into each.
#define HXQ_DEFINE_LEVEL(SUFFIX, ATTR, MR, NR, NR32)                                           \
  ATTR void gemm_##SUFFIX(size_t m, size_t n, size_t k, bool subtract, const double* a,         \
                          size_t a_rs, size_t a_cs, const double* b, size_t ldb, double* c,     \
                          size_t ldc, GemmWorkspace& ws) {                                      \
    gemm_body<MR, NR>(m, n, k, subtract, a, a_rs, a_cs, b, ldb, c, ldc, ws);                    \
  }                                                                                             \
  ATTR void pack_b_##SUFFIX(size_t k, size_t n, const double* b, size_t ldb, size_t q0,          \
                            size_t q1, double* out) {                                           \
    pack_b_body<NR>(k, n, b, ldb, q0, q1, out);                                                 \
  }                                                                                             \
  ATTR void gemm_packed_##SUFFIX(size_t m, size_t n, size_t k, bool subtract, const double* a,  \
                                 size_t a_rs, size_t a_cs, const double* bp, double* c,         \
                                 size_t ldc, GemmWorkspace& ws) {                               \
    gemm_packed_body<MR, NR>(m, n, k, subtract, a, a_rs, a_cs, bp, c, ldc, ws);                 \
  }                                                                                             \
  ATTR bool factor_diagonal_##SUFFIX(double* a, size_t kb, size_t lda) {                        \
    return factor_diagonal_body(a, kb, lda);                                                    \
  }                                                                                             \
  ATTR void solve_rows_##SUFFIX(double* rows, size_t count, const double* l11, size_t kb,       \
                                size_t lda) {                                                   \
    solve_rows_body(rows, count, l11, kb, lda);                                                 \
  }                                                                                             \
  ATTR void axpy_##SUFFIX(size_t n, double a, const double* x, double* y) {                     \
    axpy_body(n, a, x, y);                                                                      \
  }                                                                                             \
  ATTR void gram_f32_##SUFFIX(size_t m, size_t n, size_t k, const float* a, const float* b,     \
                              size_t ld, float* c, size_t ldc) {                                \
    gram_f32_body<MR, NR32>(m, n, k, a, b, ld, c, ldc);                                         \
  }                                                                                             \
  ATTR double group_sq_error_##SUFFIX(const double* w, size_t len, double sd, int bits) {       \
    return group_sq_error_body(w, len, sd, bits);                                               \
  }                                                                                             \
  constexpr Kernels64 kKernels_##SUFFIX = {NR,                                                  \
                                           gemm_##SUFFIX,                                       \
                                           pack_b_##SUFFIX,                                     \
                                           gemm_packed_##SUFFIX,                                \
                                           factor_diagonal_##SUFFIX,                            \
                                           solve_rows_##SUFFIX,                                 \
                                           axpy_##SUFFIX,                                       \
                                           gram_f32_##SUFFIX,                                   \
                                           group_sq_error_##SUFFIX};

#define HXQ_NO_ATTR
HXQ_DEFINE_LEVEL(generic, HXQ_NO_ATTR, 4, 4, 4)
#ifdef HXQ_X86
// AVX2: 6 x 8 doubles (6 x 16 floats), 12 ymm accumulators + 2 for B + 1 broadcast.
HXQ_DEFINE_LEVEL(avx2, HXQ_AVX2, 6, 8, 16)
// AVX-512: 6 x 16 doubles (6 x 32 floats), 12 zmm accumulators.
HXQ_DEFINE_LEVEL(avx512, HXQ_AVX512, 6, 16, 32)
#endif

const Kernels64& kernels64(SimdLevel level) {
#ifdef HXQ_X86
  if (level == SimdLevel::Avx512) return kKernels_avx512;
  if (level == SimdLevel::Avx2) return kKernels_avx2;
#endif
  (void)level;
  return kKernels_generic;
}

}  // namespace

bool simd_level_supported(SimdLevel level) {
  switch (level) {
    case SimdLevel::Generic:
      return true;
#ifdef HXQ_X86
    case SimdLevel::Avx2:
      return emu::cpu_supports(emu::KernelLevel::Avx2);
    case SimdLevel::Avx512:
      return emu::cpu_supports(emu::KernelLevel::Avx512);
#endif
    default:
      return false;
  }
}

SimdLevel best_simd_level() {
#ifdef HXQ_X86
  const std::string name = emu::best_kernels().name;
  if (name == "avx512") return SimdLevel::Avx512;
  if (name == "avx2") return SimdLevel::Avx2;
#endif
  return SimdLevel::Generic;
}

double* GemmWorkspace::get(int which, size_t size) {
  Buffer& b = which == 0 ? a_ : b_;
  if (b.size < size) {
    b.data = std::make_unique<double[]>(size);  // value-initialised once, reused after
    b.size = size;
  }
  return b.data.get();
}

void gemm_acc(SimdLevel level, size_t m, size_t n, size_t k, bool subtract, const double* a,
              size_t a_rs, size_t a_cs, const double* b, size_t ldb, double* c, size_t ldc,
              GemmWorkspace* ws) {
  if (ws) return kernels64(level).gemm(m, n, k, subtract, a, a_rs, a_cs, b, ldb, c, ldc, *ws);
  GemmWorkspace own;
  kernels64(level).gemm(m, n, k, subtract, a, a_rs, a_cs, b, ldb, c, ldc, own);
}

void pack_b(SimdLevel level, size_t k, size_t n, const double* b, size_t ldb, PackedB& out,
            ThreadPool& pool) {
  const Kernels64& kern = kernels64(level);
  const size_t panels = (n + kern.nr - 1) / kern.nr;
  out.k = k, out.n = n, out.level = level;
  if (out.data.size() < panels * k * kern.nr) out.data.resize(panels * k * kern.nr);
  double* dst = out.data.data();
  pool.parallel_for(0, panels, 16, [&](size_t q0, size_t q1) {
    kern.pack_b(k, n, b, ldb, q0, q1, dst);
  });
}

void gemm_acc_packed(size_t m, bool subtract, const double* a, size_t a_rs, size_t a_cs,
                     const PackedB& b, double* c, size_t ldc, GemmWorkspace& ws) {
  kernels64(b.level).gemm_packed(m, b.n, b.k, subtract, a, a_rs, a_cs, b.data.data(), c, ldc, ws);
}

void axpy(SimdLevel level, size_t n, double a, const double* x, double* y) {
  kernels64(level).axpy(n, a, x, y);
}

double group_sq_error(SimdLevel level, const double* w, size_t len, double scale, int bits) {
  return kernels64(level).group_sq_error(w, len, scale, bits);
}

void gram_acc_f32(SimdLevel level, size_t m, size_t n, size_t k, const float* a, const float* b,
                  size_t ld, float* c, size_t ldc) {
  kernels64(level).gram_f32(m, n, k, a, b, ld, c, ldc);
}

bool cholesky_lower(double* a, size_t n, size_t lda, ThreadPool& pool, SimdLevel level) {
  const Kernels64& kern = kernels64(level);
  constexpr size_t kNb = kCholNb;  // panel width: the trailing update's inner dimension
  constexpr size_t kTile = 192;
  std::vector<double> panel_t;  // the panel transposed: B of the trailing update
  for (size_t k0 = 0; k0 < n; k0 += kNb) {
    const size_t kb = std::min(kNb, n - k0);
    double* a11 = a + k0 * lda + k0;
    if (!kern.factor_diagonal(a11, kb, lda)) return false;
    const size_t r0 = k0 + kb, rest = n - r0;
    if (rest == 0) break;
    pool.parallel_for(r0, n, 16, [&](size_t lo, size_t hi) {
      kern.solve_rows(a + lo * lda + k0, hi - lo, a11, kb, lda);
    });
    panel_t.assign(kb * rest, 0.0);
    for (size_t i = 0; i < rest; ++i)
      for (size_t p = 0; p < kb; ++p) panel_t[p * rest + i] = a[(r0 + i) * lda + k0 + p];
    // A22 -= L21 L21^T on the lower block triangle of tiles.
    const size_t tiles = (rest + kTile - 1) / kTile;
    const size_t tasks = tiles * (tiles + 1) / 2;
    pool.parallel_for(0, tasks, 1, [&](size_t lo, size_t hi) {
      GemmWorkspace ws;
      for (size_t t = lo; t < hi; ++t) {
        size_t ti = 0;  // task t is tile (ti, tj), tj <= ti, row by row
        while ((ti + 1) * (ti + 2) / 2 <= t) ++ti;
        const size_t tj = t - ti * (ti + 1) / 2;
        const size_t i0 = ti * kTile, j0 = tj * kTile;
        const size_t mi = std::min(kTile, rest - i0), nj = std::min(kTile, rest - j0);
        gemm_acc(level, mi, nj, kb, true, a + (r0 + i0) * lda + k0, lda, 1, panel_t.data() + j0,
                 rest, a + (r0 + i0) * lda + r0 + j0, lda, &ws);
      }
    });
  }
  return true;
}

void invert_lower(const double* l, size_t n, size_t lda, double* x, size_t ldx, ThreadPool& pool,
                  SimdLevel level) {
  const Kernels64& kern = kernels64(level);
  constexpr size_t kNb = 128;
  const size_t blocks = (n + kNb - 1) / kNb;
  for (size_t i = 0; i < n; ++i) std::fill(x + i * ldx + std::min(i + 1, n), x + i * ldx + n, 0.0);
  // Row i of L X = I: X[i, :] = (e_i - sum_{p < i} L[i, p] X[p, :]) / L[i, i]. Column
  // blocks of X are independent; tasks are dealt big, small, big, ... (block 0
  // has the most rows below it) so that contiguous chunks balance.
  pool.parallel_for(0, blocks, 1, [&](size_t lo, size_t hi) {
    std::vector<double> t;
    GemmWorkspace ws;
    for (size_t task = lo; task < hi; ++task) {
      const size_t jb = (task % 2 == 0) ? task / 2 : blocks - 1 - task / 2;
      const size_t j0 = jb * kNb, j1 = std::min(n, j0 + kNb), w = j1 - j0;
      for (size_t i0 = j0; i0 < n; i0 += kNb) {
        const size_t i1 = std::min(n, i0 + kNb), h = i1 - i0;
        t.assign(h * w, 0.0);
        if (i0 == j0) {
          for (size_t i = 0; i < h; ++i) t[i * w + i] = 1.0;
        } else {  // the rows of X above this row block, in one multiply
          kern.gemm(h, w, i0 - j0, true, l + i0 * lda + j0, lda, 1, x + j0 * ldx + j0, ldx,
                    t.data(), w, ws);
        }
        for (size_t i = i0; i < i1; ++i) {
          double* ti = t.data() + (i - i0) * w;
          for (size_t p = i0; p < i; ++p) kern.axpy(w, -l[i * lda + p], x + p * ldx + j0, ti);
          const double lii = l[i * lda + i];
          double* xi = x + i * ldx + j0;
          for (size_t c = 0; c < w; ++c) xi[c] = ti[c] / lii;
        }
      }
    }
  });
}

}  // namespace hyperdex::quant
