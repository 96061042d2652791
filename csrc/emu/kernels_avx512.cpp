// AVX-512 level (F + F16C): one zmm register holds the 16 lanes of a MAC tree,
// so a dot product is one fma per 16 elements and a 4-step reduction.
// Compiled with target attributes (no -march): it only runs when
// cpu_supports(KernelLevel::Avx512) said so.
#include "emu/kernels.h"

#if defined(__x86_64__) || defined(__i386__)
// GCC 12's AVX-512 intrinsics self-initialise their "undefined" pass-through
// operands (`__m512 __Y = __Y;` in avx512fintrin.h, GCC bug 105593), which -Wall
// reports (falsely) once they are inlined here, even though the header is a system
// one. The warnings are located in the header, so ignoring them around its
// #include only is enough; our own code keeps the warnings.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include <immintrin.h>
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif

#include <algorithm>
#include <cstring>

#include "common/fp16.h"

#define HX_AVX512 __attribute__((target("avx512f,avx2,fma,f16c")))

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

// reduce() of N accumulators at once (N <= 16), out[i] = reduce(a[i]): the same
// additions of the same pairs, so the same bits, but the trees of 16 accumulators
// share 15 vector additions (and 30 shuffles) where one by one they took 4 each.
// Stage by stage, two vectors' halves (then quarters, pairs, lanes) are brought
// side by side and added; after the last stage lane 4b + m holds tree b + 4m.
template <int N>
HX_AVX512 inline void reduce_many(const __m512 (&a)[N], float* out) {
  static_assert(N >= 1 && N <= 16, "16 trees at most");
  constexpr int N1 = (N + 1) / 2, N2 = (N1 + 1) / 2, N3 = (N2 + 1) / 2;
  const __m512 zero = _mm512_setzero_ps();
  __m512 b[N1], c[N2], e[N3];
  // s8: blocks 0-1 + 2-3 of trees 2i (lanes 0-7) and 2i + 1 (lanes 8-15).
  for (int i = 0; i < N1; ++i) {
    const __m512 x = a[2 * i], y = 2 * i + 1 < N ? a[2 * i + 1] : zero;
    b[i] = _mm512_add_ps(_mm512_shuffle_f32x4(x, y, _MM_SHUFFLE(1, 0, 1, 0)),
                         _mm512_shuffle_f32x4(x, y, _MM_SHUFFLE(3, 2, 3, 2)));
  }
  // s4: block q of c[i] is tree 4i + q.
  for (int i = 0; i < N2; ++i) {
    const __m512 x = b[2 * i], y = 2 * i + 1 < N1 ? b[2 * i + 1] : zero;
    c[i] = _mm512_add_ps(_mm512_shuffle_f32x4(x, y, _MM_SHUFFLE(2, 0, 2, 0)),
                         _mm512_shuffle_f32x4(x, y, _MM_SHUFFLE(3, 1, 3, 1)));
  }
  // s2: block q of e[i] holds trees 8i + q (lanes 0-1) and 8i + 4 + q (lanes 2-3).
  for (int i = 0; i < N3; ++i) {
    const __m512d x = _mm512_castps_pd(c[2 * i]);
    const __m512d y = _mm512_castps_pd(2 * i + 1 < N2 ? c[2 * i + 1] : zero);
    e[i] = _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(x, y)),
                         _mm512_castpd_ps(_mm512_unpackhi_pd(x, y)));
  }
  const __m512 e1 = N3 > 1 ? e[N3 - 1] : zero;
  const __m512 r = _mm512_add_ps(_mm512_shuffle_ps(e[0], e1, _MM_SHUFFLE(2, 0, 2, 0)),
                                 _mm512_shuffle_ps(e[0], e1, _MM_SHUFFLE(3, 1, 3, 1)));
  alignas(64) float lanes[16];
  _mm512_store_ps(lanes, r);
  for (int i = 0; i < N; ++i) out[i] = lanes[4 * (i % 4) + i / 4];
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

// acc[off + i] = fma(a[j], widen(v[j][off + i]), acc[off + i]) for j < nrows in
// order, i < 16 V: axpy_f16 row after row, with that slice of acc in registers.
template <int V>
HX_AVX512 void axpy_rows(const float* a, const uint16_t* const* v, size_t nrows, float* acc,
                         size_t off) {
  __m512 r[V];
  for (int q = 0; q < V; ++q) r[q] = _mm512_loadu_ps(acc + off + 16 * q);
  for (size_t j = 0; j < nrows; ++j) {
    const __m512 va = _mm512_set1_ps(a[j]);
    for (int q = 0; q < V; ++q) r[q] = _mm512_fmadd_ps(va, load_h(v[j] + off + 16 * q), r[q]);
  }
  for (int q = 0; q < V; ++q) _mm512_storeu_ps(acc + off + 16 * q, r[q]);
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
  reduce_many(acc, out);
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
  // The R x T trees, 16 at a time.
  constexpr int N = R * T, N0 = N < 16 ? N : 16;
  __m512 first[N0];
  float sums[N];
  for (int i = 0; i < N0; ++i) first[i] = acc[i / T][i % T];
  reduce_many(first, sums);
  if constexpr (N > 16) {
    __m512 rest[N - 16];
    for (int i = 16; i < N; ++i) rest[i - 16] = acc[i / T][i % T];
    reduce_many(rest, sums + 16);
  }
  for (int r = 0; r < R; ++r)
    for (int t = 0; t < T; ++t) out[r * out_stride + t] = sums[r * T + t];
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

// ---- quantized rows (isa/qmatrix.h) ---------------------------------------
// A code's value w' = fp16(float(q - z) * scale) is computed as the scalar level
// does: the product is exact in fp32 (so is its sign of zero, which q * s - z * s
// would lose), then it is rounded once to fp16's precision, to nearest even. Two
// exact ways to round:
//  - round_half: vcvtps2ph then vcvtph2ps, right for every scale, but slow on some
//    cores (on Zen 4 it costs more than the rest of an int8 block's work);
//  - round_split: Veltkamp's split t = v * (2^13 + 1), w = t - (t - v), three cheap
//    operations. It rounds to 11 significant bits, ties to even, which is fp16's
//    rounding whenever the result is finite: |scale| < 512 for int8, < 8192 for int4
//    (checked for every finite scale and every code; products that land among fp16's
//    subnormals are exact multiples of 2^-24 already).
// A group whose scale is outside the range (or NaN) takes round_half.

// q - z for the 16 int4 codes: the table index is the code.
alignas(64) constexpr float kQ4MinusZ[16] = {-8, -7, -6, -5, -4, -3, -2, -1,
                                             0,  1,  2,  3,  4,  5,  6,  7};
constexpr float kSplitLimit4 = 8192.0f, kSplitLimit8 = 512.0f;

HX_AVX512 inline __m512 round_half(__m512 v) {
  return _mm512_cvtph_ps(_mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
}

HX_AVX512 inline __m512 round_split(__m512 v) {
  __m512 t = _mm512_mul_ps(v, _mm512_set1_ps(8193.0f));
  // Opaque to the optimiser: with -ffp-contract=fast GCC would otherwise fuse t's
  // product into both subtractions, and the split would no longer round.
  __asm__("" : "+v"(t));
  return _mm512_sub_ps(t, _mm512_sub_ps(t, v));
}

// Bit j set: scale j of the 16 in `s` takes round_split.
HX_AVX512 inline __mmask16 split_ok4(__m512 s) {
  return _mm512_cmp_ps_mask(_mm512_abs_ps(s), _mm512_set1_ps(kSplitLimit4), _CMP_LT_OQ);
}
// int8 also forms (q - 128) * s as fma(q, s, -128 * s), exact and of the right sign
// of zero only for s > 0.
HX_AVX512 inline __mmask16 split_ok8(__m512 s) {
  return _mm512_cmp_ps_mask(s, _mm512_setzero_ps(), _CMP_GT_OQ) &
         _mm512_cmp_ps_mask(s, _mm512_set1_ps(kSplitLimit8), _CMP_LT_OQ);
}

// The 16 values of an int4 group of scale s, indexed by code.
HX_AVX512 inline __m512 q4_table(float s, bool split) {
  const __m512 v = _mm512_mul_ps(_mm512_load_ps(kQ4MinusZ), _mm512_set1_ps(s));
  return split ? round_split(v) : round_half(v);
}

// The values of 16 int8 codes at p: split, with s in (0, 512) and c = -128 * s ...
HX_AVX512 inline __m512 q8_split(const uint8_t* p, __m512 s, __m512 c) {
  const __m512i q = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  return round_split(_mm512_fmadd_ps(_mm512_cvtepi32_ps(q), s, c));
}
// ... or for any scale.
HX_AVX512 inline __m512 q8_any(const uint8_t* p, __m512 s) {
  const __m512i q = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  const __m512 d = _mm512_cvtepi32_ps(_mm512_sub_epi32(q, _mm512_set1_epi32(128)));
  return round_half(_mm512_mul_ps(d, s));
}

HX_AVX512 inline uint64_t load_u64(const uint8_t* p) {
  uint64_t v;
  std::memcpy(&v, p, 8);
  return v;
}

// Natural order: lane i takes nibble i of the 8 bytes at p (lanes 0-7 from the low
// dword, 8-15 from the high one); vpermps reads only an index's low 4 bits.
alignas(64) constexpr int32_t kSpreadDword[16] = {0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1};
alignas(64) constexpr int32_t kSpreadShift[16] = {0, 4, 8, 12, 16, 20, 24, 28,
                                                  0, 4, 8, 12, 16, 20, 24, 28};

// The widened scales of a chunk (scale line at `line`): rows x 16.
HX_AVX512 inline __m512 load_scales(const uint8_t* row, uint64_t line) {
  return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(row + line)));
}

HX_AVX512 void dequant_row(const isa::QRowFormat& f, const uint8_t* row, float* out) {
  const uint32_t groups = f.groups();
  if (f.group % 16 != 0 || f.cols % 16 != 0) {  // groups straddle vectors: the scalar loop
    kernels_for(KernelLevel::Scalar).dequant_row(f, row, out);
    return;
  }
  const __m512i spread = _mm512_load_si512(kSpreadDword), shift = _mm512_load_si512(kSpreadShift);
  alignas(64) float scales[16];
  for (uint32_t g0 = 0; g0 < groups; g0 += isa::kQGroupsPerChunk) {
    const uint64_t line = f.chunk_offset(g0 / isa::kQGroupsPerChunk);
    const __m512 sv = load_scales(row, line);
    _mm512_store_ps(scales, sv);
    const __mmask16 split = f.bits == 4 ? split_ok4(sv) : split_ok8(sv);
    const uint32_t ng = std::min(isa::kQGroupsPerChunk, groups - g0);
    for (uint32_t j = 0; j < ng; ++j) {
      const uint8_t* codes = row + line + isa::kQScaleLineBytes + j * f.group_code_bytes();
      float* o = out + size_t(g0 + j) * f.group;
      const bool fast = (split >> j) & 1;
      if (f.bits == 4) {
        const __m512 table = q4_table(scales[j], fast);
        for (uint32_t i = 0; i < f.group_len(g0 + j); i += 16) {
          const __m512i q = _mm512_permutexvar_epi32(
              spread, _mm512_set1_epi64(int64_t(load_u64(codes + i / 2))));
          _mm512_storeu_ps(o + i, _mm512_permutexvar_ps(_mm512_srlv_epi32(q, shift), table));
        }
      } else {
        const __m512 s = _mm512_set1_ps(scales[j]), c = _mm512_set1_ps(-128.0f * scales[j]);
        for (uint32_t i = 0; i < f.group_len(g0 + j); i += 16)
          _mm512_storeu_ps(o + i, fast ? q8_split(codes + i, s, c) : q8_any(codes + i, s));
      }
    }
  }
}

// Decode, int4: the 8 bytes of 16 codes are broadcast to every lane and lane p
// shifted by kSigmaShift[p], so lane p holds code sigma(p) = {0, 8, 1, 9, ...}[p]
// with no cross-lane move; x is permuted the same way once per call
// (prep_q_x), so lane p runs MAC-tree lane sigma(p)'s exact fma sequence, and the
// lanes are put back in order before the tree's reduction.
alignas(64) constexpr int32_t kSigma[16] = {0, 8, 1, 9, 2, 10, 3, 11, 4, 12, 5, 13, 6, 14, 7, 15};
alignas(64) constexpr int32_t kSigmaInverse[16] = {0, 2, 4, 6, 8, 10, 12, 14,
                                                   1, 3, 5, 7, 9, 11, 13, 15};
alignas(64) constexpr int32_t kSigmaShift[16] = {0, 0, 4, 4, 8, 8, 12, 12,
                                                 16, 16, 20, 20, 24, 24, 28, 28};

// Rows per decode kernel call: each row's codes are a stream of its own (the driver
// hands over rows from independent runs), and their fmas are independent chains.
constexpr int kDotQRows = 8;
// Software prefetch distance in each row's stream (into the next row of its run, which
// follows in memory, near a row's end). The hardware prefetchers follow the streams
// well on their own; this keeps a few more lines in flight when both cores stream.
constexpr uint64_t kPrefetchAhead = 1024;

// Prefetches the line kPrefetchAhead bytes past p: integer arithmetic, since that
// may lie past the row's buffer (a prefetch never faults).
HX_AVX512 inline void prefetch_ahead(const uint8_t* p) {
  _mm_prefetch(reinterpret_cast<const char*>(reinterpret_cast<uintptr_t>(p) + kPrefetchAhead),
               _MM_HINT_T0);
}

// Prefetches the lines ahead of a group's codes (`bytes` from c[r]) in each row: the
// first line always (a group smaller than a line asks again for the same one, which
// costs little), any further ones when a group spans several lines.
template <int R>
HX_AVX512 inline void prefetch_group(const uint8_t* const (&c)[R], uint64_t bytes) {
  for (int r = 0; r < R; ++r) prefetch_ahead(c[r]);
  for (uint64_t o = 64; o < bytes; o += 64)
    for (int r = 0; r < R; ++r) prefetch_ahead(c[r] + o);
}

// The chunk's scales of R rows, widened to scales[r][16]; returns the groups whose
// scales take the split in every row.
template <int R>
HX_AVX512 inline __mmask16 chunk_scales(const uint8_t* const* rows, uint64_t line, uint32_t bits,
                                        float (&scales)[R][16]) {
  __mmask16 split = 0xFFFF;
  for (int r = 0; r < R; ++r) {
    const __m512 s = load_scales(rows[r], line);
    _mm512_store_ps(scales[r], s);
    split &= bits == 4 ? split_ok4(s) : split_ok8(s);
  }
  return split;
}

template <int R>
HX_AVX512 void dot_q4_rows(const isa::QRowFormat& f, const uint8_t* const* rows, const float* xp,
                           float* out) {
  const __m512i shift = _mm512_load_si512(kSigmaShift);
  __m512 acc[R];
  for (int r = 0; r < R; ++r) acc[r] = _mm512_setzero_ps();
  const uint32_t groups = f.groups();
  const uint64_t gbytes = f.group_code_bytes();
  alignas(64) float scales[R][16];
  for (uint32_t g0 = 0; g0 < groups; g0 += isa::kQGroupsPerChunk) {
    const uint64_t line = f.chunk_offset(g0 / isa::kQGroupsPerChunk);
    const __mmask16 split = chunk_scales<R>(rows, line, 4, scales);
    const uint32_t ng = std::min(isa::kQGroupsPerChunk, groups - g0);
    const uint64_t codes = line + isa::kQScaleLineBytes;
    for (uint32_t j = 0; j < ng; ++j) {
      const uint64_t at = codes + uint64_t(j) * gbytes;
      const bool fast = (split >> j) & 1;
      __m512 table[R];  // the group's 16 values, indexed by code
      for (int r = 0; r < R; ++r) table[r] = q4_table(scales[r][j], fast);
      const uint8_t* c[R];  // the group's codes in each row
      for (int r = 0; r < R; ++r) c[r] = rows[r] + at;
      prefetch_group<R>(c, gbytes);
      const float* xg = xp + size_t(g0 + j) * f.group;
      const uint64_t end = f.group_len(g0 + j) / 2;
      for (uint64_t o = 0; o < end; o += 8, xg += 16) {  // o: bytes into the group's codes
        const __m512 xv = _mm512_load_ps(xg);
        for (int r = 0; r < R; ++r) {
          const __m512i q =
              _mm512_srlv_epi32(_mm512_set1_epi64(int64_t(load_u64(c[r] + o))), shift);
          acc[r] = _mm512_fmadd_ps(_mm512_permutexvar_ps(q, table[r]), xv, acc[r]);
        }
      }
    }
  }
  const __m512i inverse = _mm512_load_si512(kSigmaInverse);
  for (int r = 0; r < R; ++r) acc[r] = _mm512_permutexvar_ps(inverse, acc[r]);
  reduce_many(acc, out);
}

template <int R>
HX_AVX512 void dot_q8_rows(const isa::QRowFormat& f, const uint8_t* const* rows, const float* x,
                           float* out) {
  __m512 acc[R];
  for (int r = 0; r < R; ++r) acc[r] = _mm512_setzero_ps();
  const uint32_t groups = f.groups();
  const uint64_t gbytes = f.group_code_bytes();
  alignas(64) float scales[R][16];
  for (uint32_t g0 = 0; g0 < groups; g0 += isa::kQGroupsPerChunk) {
    const uint64_t line = f.chunk_offset(g0 / isa::kQGroupsPerChunk);
    const __mmask16 split = chunk_scales<R>(rows, line, 8, scales);
    const uint32_t ng = std::min(isa::kQGroupsPerChunk, groups - g0);
    const uint64_t codes = line + isa::kQScaleLineBytes;
    for (uint32_t j = 0; j < ng; ++j) {
      const uint64_t at = codes + uint64_t(j) * gbytes;
      __m512 s[R];
      for (int r = 0; r < R; ++r) s[r] = _mm512_set1_ps(scales[r][j]);
      const uint8_t* q[R];  // the group's codes in each row
      for (int r = 0; r < R; ++r) q[r] = rows[r] + at;
      prefetch_group<R>(q, gbytes);
      const float* xg = x + size_t(g0 + j) * f.group;
      const uint32_t len = f.group_len(g0 + j);
      if ((split >> j) & 1) {
        __m512 c[R];
        for (int r = 0; r < R; ++r) c[r] = _mm512_set1_ps(-128.0f * scales[r][j]);
        for (uint32_t i = 0; i < len; i += 16) {
          const __m512 xv = _mm512_loadu_ps(xg + i);
          for (int r = 0; r < R; ++r)
            acc[r] = _mm512_fmadd_ps(q8_split(q[r] + i, s[r], c[r]), xv, acc[r]);
        }
      } else {
        for (uint32_t i = 0; i < len; i += 16) {
          const __m512 xv = _mm512_loadu_ps(xg + i);
          for (int r = 0; r < R; ++r) acc[r] = _mm512_fmadd_ps(q8_any(q[r] + i, s[r]), xv, acc[r]);
        }
      }
    }
  }
  reduce_many(acc, out);
}

}  // namespace

const Kernels& avx512_kernels() {
  static constexpr Kernels kAvx512{"avx512", half_to_float_n, float_to_half_n, dot_f32,
                                   dot_f16,  axpy_f16,        dequant_row};
  return kAvx512;
}

bool avx512_q_fast(const isa::QRowFormat& f) { return f.group % 16 == 0 && f.cols % 16 == 0; }

HX_AVX512 const float* avx512_prep_q_x(const isa::QRowFormat& f, const float* x, float* xp) {
  if (f.bits != 4) return x;
  const __m512i sigma = _mm512_load_si512(kSigma);
  for (uint32_t i = 0; i < f.cols; i += 16)
    _mm512_store_ps(xp + i, _mm512_permutexvar_ps(sigma, _mm512_loadu_ps(x + i)));
  return xp;
}

HX_AVX512 void avx512_dot_q_rows(const isa::QRowFormat& f, const uint8_t* const* rows,
                                 size_t nrows, const float* x, float* out) {
  static_assert(kDotQRows == 8, "update the cases");
  for (size_t r = 0; r < nrows; r += kDotQRows) {
    const uint8_t* const* rr = rows + r;
    float* o = out + r;
    const size_t take = std::min<size_t>(kDotQRows, nrows - r);
    if (f.bits == 4) {
      switch (take) {
        case 1: dot_q4_rows<1>(f, rr, x, o); break;
        case 2: dot_q4_rows<2>(f, rr, x, o); break;
        case 3: dot_q4_rows<3>(f, rr, x, o); break;
        case 4: dot_q4_rows<4>(f, rr, x, o); break;
        case 5: dot_q4_rows<5>(f, rr, x, o); break;
        case 6: dot_q4_rows<6>(f, rr, x, o); break;
        case 7: dot_q4_rows<7>(f, rr, x, o); break;
        default: dot_q4_rows<8>(f, rr, x, o); break;
      }
    } else {
      switch (take) {
        case 1: dot_q8_rows<1>(f, rr, x, o); break;
        case 2: dot_q8_rows<2>(f, rr, x, o); break;
        case 3: dot_q8_rows<3>(f, rr, x, o); break;
        case 4: dot_q8_rows<4>(f, rr, x, o); break;
        case 5: dot_q8_rows<5>(f, rr, x, o); break;
        case 6: dot_q8_rows<6>(f, rr, x, o); break;
        case 7: dot_q8_rows<7>(f, rr, x, o); break;
        default: dot_q8_rows<8>(f, rr, x, o); break;
      }
    }
  }
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

HX_AVX512 void avx512_axpy_f16_rows(const float* a, const uint16_t* const* v, size_t nrows,
                                    float* acc, size_t n) {
  size_t off = 0;
  for (; off + 128 <= n; off += 128) axpy_rows<8>(a, v, nrows, acc, off);
  if (off + 64 <= n) axpy_rows<4>(a, v, nrows, acc, off), off += 64;
  if (off + 32 <= n) axpy_rows<2>(a, v, nrows, acc, off), off += 32;
  if (off + 16 <= n) axpy_rows<1>(a, v, nrows, acc, off), off += 16;
  if (off < n)
    for (size_t j = 0; j < nrows; ++j) axpy_f16(a[j], v[j] + off, acc + off, n - off);
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
