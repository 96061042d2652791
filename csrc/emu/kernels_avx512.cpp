// AVX-512 level (F + F16C): one zmm register holds the 16 lanes of a MAC tree,
// so a dot product is one fma per 16 elements and a 4-step reduction.
// Compiled with target attributes (no -march): it only runs when
// cpu_supports(KernelLevel::Avx512) said so.
#include "emu/kernels.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>

#include <algorithm>
#include <cstring>

#include "common/fp16.h"

#define HX_AVX512 __attribute__((target("avx512f,avx2,fma,f16c")))

// GCC 12's AVX-512 intrinsics self-initialise their "undefined" pass-through
// operands, which -Wall reports (falsely) once they are inlined here.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

namespace hyperdex::emu::detail {

namespace {

// The pairwise tree of kernels.h: s8 = lanes j + j+8, s4, s2, then s2[0] + s2[1].
HX_AVX512 inline float reduce(__m512 acc) {
  const __m256 lo = _mm512_castps512_ps256(acc);
  const __m256 hi = _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(acc), 1));
  const __m256 s8 = _mm256_add_ps(lo, hi);
  const __m128 s4 = _mm_add_ps(_mm256_castps256_ps128(s8), _mm256_extractf128_ps(s8, 1));
  const __m128 s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
  return _mm_cvtss_f32(_mm_add_ss(s2, _mm_movehdup_ps(s2)));
}

HX_AVX512 inline __m512 load_h(const uint16_t* p) {
  return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
}

// The first rem (< 16) halves at p, zeros after; never reads past p + rem.
HX_AVX512 inline __m512 load_h_tail(const uint16_t* p, size_t rem) {
  alignas(32) uint16_t tmp[16] = {};
  std::memcpy(tmp, p, rem * sizeof(uint16_t));
  return _mm512_cvtph_ps(_mm256_load_si256(reinterpret_cast<const __m256i*>(tmp)));
}

HX_AVX512 inline __mmask16 tail_mask(size_t rem) {
  return static_cast<__mmask16>((1u << rem) - 1u);
}

HX_AVX512 void half_to_float_n(const uint16_t* src, float* dst, size_t n) {
  size_t i = 0;
  for (; i + 16 <= n; i += 16) _mm512_storeu_ps(dst + i, load_h(src + i));
  for (; i < n; ++i) dst[i] = half_to_float(src[i]);  // same bits as vcvtph2ps
}

HX_AVX512 void float_to_half_n(const float* src, uint16_t* dst, size_t n) {
  size_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const __m256i h = _mm512_cvtps_ph(_mm512_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + i), h);
  }
  for (; i < n; ++i) dst[i] = float_to_half(src[i]);  // same bits as vcvtps2ph
}

HX_AVX512 float dot_f32(const float* a, const float* b, size_t n) {
  __m512 acc = _mm512_setzero_ps();
  size_t i = 0;
  for (; i + 16 <= n; i += 16) {
    acc = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), acc);
  }
  if (i < n) {
    const __mmask16 m = tail_mask(n - i);
    acc = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, a + i), _mm512_maskz_loadu_ps(m, b + i), acc);
  }
  return reduce(acc);
}

HX_AVX512 float dot_f16(const uint16_t* w, const float* x, size_t n) {
  __m512 acc = _mm512_setzero_ps();
  size_t i = 0;
  for (; i + 16 <= n; i += 16) acc = _mm512_fmadd_ps(load_h(w + i), _mm512_loadu_ps(x + i), acc);
  if (i < n) {
    const __mmask16 m = tail_mask(n - i);
    acc = _mm512_fmadd_ps(load_h_tail(w + i, n - i), _mm512_maskz_loadu_ps(m, x + i), acc);
  }
  return reduce(acc);
}

HX_AVX512 void axpy_f16(float a, const uint16_t* v, float* acc, size_t n) {
  const __m512 va = _mm512_set1_ps(a);
  size_t i = 0;
  for (; i + 16 <= n; i += 16) {
    _mm512_storeu_ps(acc + i, _mm512_fmadd_ps(va, load_h(v + i), _mm512_loadu_ps(acc + i)));
  }
  if (i < n) {
    const __mmask16 m = tail_mask(n - i);
    const __m512 old = _mm512_maskz_loadu_ps(m, acc + i);
    _mm512_mask_storeu_ps(acc + i, m, _mm512_fmadd_ps(va, load_h_tail(v + i, n - i), old));
  }
}

// ---- matmul_f16 building blocks -------------------------------------------
// Every (row, token) result is still one MAC tree in the order of kernels.h;
// these only interleave several independent trees, so that the fma latency is
// hidden and each load feeds several fmas.

constexpr int kDotRows = 8;   // decode: 8 rows against one token
constexpr int kTileRows = 4;  // prefill: 4 rows x 6 tokens = 24 zmm accumulators
constexpr int kTileToks = 6;

// out[i] = dot(rows[i][0:k], x) for i < R.
template <int R>
HX_AVX512 void dot_rows(const uint16_t* const* rows, size_t k, const float* x, float* out) {
  __m512 acc[R];
  for (int r = 0; r < R; ++r) acc[r] = _mm512_setzero_ps();
  const size_t full = k / 16 * 16;
  for (size_t i = 0; i < full; i += 16) {
    const __m512 xv = _mm512_loadu_ps(x + i);
    for (int r = 0; r < R; ++r) acc[r] = _mm512_fmadd_ps(load_h(rows[r] + i), xv, acc[r]);
  }
  if (full < k) {
    const __m512 xv = _mm512_maskz_loadu_ps(tail_mask(k - full), x + full);
    for (int r = 0; r < R; ++r) {
      acc[r] = _mm512_fmadd_ps(load_h_tail(rows[r] + full, k - full), xv, acc[r]);
    }
  }
  for (int r = 0; r < R; ++r) out[r] = reduce(acc[r]);
}

// out[r * out_stride + t] = dot(wb[r * wrow :][0:k], x[t * x_stride :][0:k])
// for r < R, t < T; widened rows are aligned and zero-padded to 16.
template <int R, int T>
HX_AVX512 void tile(const float* wb, size_t wrow, const float* x, size_t x_stride, size_t k,
                    float* out, size_t out_stride) {
  __m512 acc[R][T];
  for (int r = 0; r < R; ++r)
    for (int t = 0; t < T; ++t) acc[r][t] = _mm512_setzero_ps();
  const size_t full = k / 16 * 16;
  for (size_t i = 0; i < full; i += 16) {
    __m512 wv[R];
    for (int r = 0; r < R; ++r) wv[r] = _mm512_load_ps(wb + r * wrow + i);
    for (int t = 0; t < T; ++t) {
      const __m512 xv = _mm512_loadu_ps(x + t * x_stride + i);
      for (int r = 0; r < R; ++r) acc[r][t] = _mm512_fmadd_ps(wv[r], xv, acc[r][t]);
    }
  }
  if (full < k) {
    const __mmask16 m = tail_mask(k - full);
    __m512 wv[R];
    for (int r = 0; r < R; ++r) wv[r] = _mm512_load_ps(wb + r * wrow + full);
    for (int t = 0; t < T; ++t) {
      const __m512 xv = _mm512_maskz_loadu_ps(m, x + t * x_stride + full);
      for (int r = 0; r < R; ++r) acc[r][t] = _mm512_fmadd_ps(wv[r], xv, acc[r][t]);
    }
  }
  for (int r = 0; r < R; ++r)
    for (int t = 0; t < T; ++t) out[r * out_stride + t] = reduce(acc[r][t]);
}

template <int R>
HX_AVX512 void tile_toks(size_t ntok, const float* wb, size_t wrow, const float* x,
                         size_t x_stride, size_t k, float* out, size_t out_stride) {
  static_assert(kTileToks == 6, "update the cases");
  switch (ntok) {
    case 1: return tile<R, 1>(wb, wrow, x, x_stride, k, out, out_stride);
    case 2: return tile<R, 2>(wb, wrow, x, x_stride, k, out, out_stride);
    case 3: return tile<R, 3>(wb, wrow, x, x_stride, k, out, out_stride);
    case 4: return tile<R, 4>(wb, wrow, x, x_stride, k, out, out_stride);
    case 5: return tile<R, 5>(wb, wrow, x, x_stride, k, out, out_stride);
    default: return tile<R, 6>(wb, wrow, x, x_stride, k, out, out_stride);
  }
}

}  // namespace

const Kernels& avx512_kernels() {
  static constexpr Kernels kAvx512{"avx512", half_to_float_n, float_to_half_n,
                                   dot_f32,  dot_f16,         axpy_f16};
  return kAvx512;
}

HX_AVX512 void avx512_dot_f16_rows(const uint16_t* const* rows, size_t nrows, size_t k,
                                   const float* x, float* out) {
  static_assert(kDotRows == 8, "update the cases");
  for (size_t r = 0; r < nrows; r += kDotRows) {
    const uint16_t* const* rr = rows + r;
    float* o = out + r;
    switch (std::min<size_t>(kDotRows, nrows - r)) {
      case 1: dot_rows<1>(rr, k, x, o); break;
      case 2: dot_rows<2>(rr, k, x, o); break;
      case 3: dot_rows<3>(rr, k, x, o); break;
      case 4: dot_rows<4>(rr, k, x, o); break;
      case 5: dot_rows<5>(rr, k, x, o); break;
      case 6: dot_rows<6>(rr, k, x, o); break;
      case 7: dot_rows<7>(rr, k, x, o); break;
      default: dot_rows<8>(rr, k, x, o); break;
    }
  }
}

HX_AVX512 void avx512_tile_f32(const float* wb, size_t wrow, size_t nrows, const float* x,
                               size_t x_stride, size_t ntok, size_t k, float* out) {
  static_assert(kTileRows == 4, "update the cases");
  for (size_t r = 0; r < nrows; r += kTileRows) {
    for (size_t t = 0; t < ntok; t += kTileToks) {
      const float* w = wb + r * wrow;
      const float* xt = x + t * x_stride;
      const size_t nt = std::min<size_t>(kTileToks, ntok - t);
      float* o = out + r * ntok + t;
      switch (std::min<size_t>(kTileRows, nrows - r)) {
        case 1: tile_toks<1>(nt, w, wrow, xt, x_stride, k, o, ntok); break;
        case 2: tile_toks<2>(nt, w, wrow, xt, x_stride, k, o, ntok); break;
        case 3: tile_toks<3>(nt, w, wrow, xt, x_stride, k, o, ntok); break;
        default: tile_toks<4>(nt, w, wrow, xt, x_stride, k, o, ntok); break;
      }
    }
  }
}

}  // namespace hyperdex::emu::detail

#endif  // x86
