// AVX2 level (AVX2 + FMA + F16C): the 16 lanes of a MAC tree are two ymm
// registers, lo = lanes 0..7 and hi = lanes 8..15, so the first reduction step
// (lane j + lane j+8) is a single lo + hi.
// Compiled with target attributes (no -march): it only runs when
// cpu_supports(KernelLevel::Avx2) said so.
#include "emu/kernels.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstring>

#include "common/fp16.h"

#define HX_AVX2 __attribute__((target("avx2,fma,f16c")))

namespace hyperdex::emu::detail {

namespace {

HX_AVX2 inline float reduce(__m256 lo, __m256 hi) {
  const __m256 s8 = _mm256_add_ps(lo, hi);
  const __m128 s4 = _mm_add_ps(_mm256_castps256_ps128(s8), _mm256_extractf128_ps(s8, 1));
  const __m128 s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
  return _mm_cvtss_f32(_mm_add_ss(s2, _mm_movehdup_ps(s2)));
}

// Masks for the first r (<= 8) lanes: kMaskTable + 8 - r.
alignas(32) constexpr int32_t kMaskTable[16] = {-1, -1, -1, -1, -1, -1, -1, -1,
                                                0,  0,  0,  0,  0,  0,  0,  0};

HX_AVX2 inline __m256i first_lanes(size_t r) {
  return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(kMaskTable + 8 - r));
}

// Floats p[0:rem] (rem < 16) as lo/hi with zeros after; never reads past p + rem.
HX_AVX2 inline void load_f_tail(const float* p, size_t rem, __m256& lo, __m256& hi) {
  const size_t rlo = std::min<size_t>(rem, 8), rhi = rem - rlo;
  lo = _mm256_maskload_ps(p, first_lanes(rlo));
  hi = _mm256_maskload_ps(p + 8, first_lanes(rhi));
}

HX_AVX2 inline void load_h(const uint16_t* p, __m256& lo, __m256& hi) {
  const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  lo = _mm256_cvtph_ps(_mm256_castsi256_si128(h));
  hi = _mm256_cvtph_ps(_mm256_extracti128_si256(h, 1));
}

// The first rem (< 16) halves at p, zeros after; never reads past p + rem.
HX_AVX2 inline void load_h_tail(const uint16_t* p, size_t rem, __m256& lo, __m256& hi) {
  alignas(32) uint16_t tmp[16] = {};
  std::memcpy(tmp, p, rem * sizeof(uint16_t));
  load_h(tmp, lo, hi);
}

HX_AVX2 void half_to_float_n(const uint16_t* src, float* dst, size_t n) {
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i));
    _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(h));
  }
  for (; i < n; ++i) dst[i] = half_to_float(src[i]);  // same bits as vcvtph2ps
}

HX_AVX2 void float_to_half_n(const float* src, uint16_t* dst, size_t n) {
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m128i h = _mm256_cvtps_ph(_mm256_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + i), h);
  }
  for (; i < n; ++i) dst[i] = float_to_half(src[i]);  // same bits as vcvtps2ph
}

HX_AVX2 float dot_f32(const float* a, const float* b, size_t n) {
  __m256 lo = _mm256_setzero_ps(), hi = _mm256_setzero_ps();
  size_t i = 0;
  for (; i + 16 <= n; i += 16) {
    lo = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), lo);
    hi = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), hi);
  }
  if (i < n) {
    __m256 alo, ahi, blo, bhi;
    load_f_tail(a + i, n - i, alo, ahi);
    load_f_tail(b + i, n - i, blo, bhi);
    lo = _mm256_fmadd_ps(alo, blo, lo);
    hi = _mm256_fmadd_ps(ahi, bhi, hi);
  }
  return reduce(lo, hi);
}

HX_AVX2 float dot_f16(const uint16_t* w, const float* x, size_t n) {
  __m256 lo = _mm256_setzero_ps(), hi = _mm256_setzero_ps();
  size_t i = 0;
  for (; i + 16 <= n; i += 16) {
    __m256 wlo, whi;
    load_h(w + i, wlo, whi);
    lo = _mm256_fmadd_ps(wlo, _mm256_loadu_ps(x + i), lo);
    hi = _mm256_fmadd_ps(whi, _mm256_loadu_ps(x + i + 8), hi);
  }
  if (i < n) {
    __m256 wlo, whi, xlo, xhi;
    load_h_tail(w + i, n - i, wlo, whi);
    load_f_tail(x + i, n - i, xlo, xhi);
    lo = _mm256_fmadd_ps(wlo, xlo, lo);
    hi = _mm256_fmadd_ps(whi, xhi, hi);
  }
  return reduce(lo, hi);
}

HX_AVX2 void axpy_f16(float a, const uint16_t* v, float* acc, size_t n) {
  const __m256 va = _mm256_set1_ps(a);
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 vv = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(v + i)));
    _mm256_storeu_ps(acc + i, _mm256_fmadd_ps(va, vv, _mm256_loadu_ps(acc + i)));
  }
  for (; i < n; ++i) acc[i] = std::fma(a, half_to_float(v[i]), acc[i]);  // one vfmadd here
}

// ---- matmul_f16 building blocks -------------------------------------------
// Every (row, token) result is still one MAC tree in the order of kernels.h;
// these only interleave several independent trees, so that the fma latency is
// hidden and each load feeds several fmas.

constexpr int kDotRows = 4;   // decode: 4 rows (8 ymm accumulators) against one token
constexpr int kTileRows = 3;  // prefill: 3 rows x 4 tokens = 12 ymm accumulators
constexpr int kTileToks = 4;

// out[i] = dot(rows[i][0:k], x) for i < R.
template <int R>
HX_AVX2 void dot_rows(const uint16_t* const* rows, size_t k, const float* x, float* out) {
  __m256 lo[R], hi[R];
  for (int r = 0; r < R; ++r) lo[r] = hi[r] = _mm256_setzero_ps();
  const size_t full = k / 16 * 16;
  for (size_t i = 0; i < full; i += 16) {
    const __m256 xlo = _mm256_loadu_ps(x + i), xhi = _mm256_loadu_ps(x + i + 8);
    for (int r = 0; r < R; ++r) {
      __m256 wlo, whi;
      load_h(rows[r] + i, wlo, whi);
      lo[r] = _mm256_fmadd_ps(wlo, xlo, lo[r]);
      hi[r] = _mm256_fmadd_ps(whi, xhi, hi[r]);
    }
  }
  if (full < k) {
    __m256 xlo, xhi;
    load_f_tail(x + full, k - full, xlo, xhi);
    for (int r = 0; r < R; ++r) {
      __m256 wlo, whi;
      load_h_tail(rows[r] + full, k - full, wlo, whi);
      lo[r] = _mm256_fmadd_ps(wlo, xlo, lo[r]);
      hi[r] = _mm256_fmadd_ps(whi, xhi, hi[r]);
    }
  }
  for (int r = 0; r < R; ++r) out[r] = reduce(lo[r], hi[r]);
}

// Elements [i0, i1) (i0 a multiple of 16, i1 one too or k) of lanes h .. h+7
// (h = 0 or 8) of the R x T trees of tile() below: the two halves of a tree
// are independent chains, so one pass does one half, and its R * T
// accumulators fit the 16 ymm registers.
template <int R, int T>
HX_AVX2 void tile_pass(const float* wb, size_t wrow, const float* x, size_t x_stride, size_t i0,
                       size_t i1, size_t h, __m256 (&acc_io)[R][T]) {
  __m256 acc[R][T];  // a local array, which GCC keeps in registers; acc_io it would not
  for (int r = 0; r < R; ++r)
    for (int t = 0; t < T; ++t) acc[r][t] = acc_io[r][t];
  const size_t full = i1 / 16 * 16;
  for (size_t i = i0 + h; i < full; i += 16) {
    __m256 wv[R];
    for (int r = 0; r < R; ++r) wv[r] = _mm256_load_ps(wb + r * wrow + i);
    for (int t = 0; t < T; ++t) {
      const __m256 xv = _mm256_loadu_ps(x + t * x_stride + i);
      for (int r = 0; r < R; ++r) acc[r][t] = _mm256_fmadd_ps(wv[r], xv, acc[r][t]);
    }
  }
  if (full < i1) {  // the last, partial chunk: x masked, widened rows zero-padded
    const size_t rem = i1 - full;
    const __m256i mask = first_lanes(h == 0 ? std::min<size_t>(rem, 8) : (rem > 8 ? rem - 8 : 0));
    __m256 wv[R];
    for (int r = 0; r < R; ++r) wv[r] = _mm256_load_ps(wb + r * wrow + full + h);
    for (int t = 0; t < T; ++t) {
      const __m256 xv = _mm256_maskload_ps(x + t * x_stride + full + h, mask);
      for (int r = 0; r < R; ++r) acc[r][t] = _mm256_fmadd_ps(wv[r], xv, acc[r][t]);
    }
  }
  for (int r = 0; r < R; ++r)
    for (int t = 0; t < T; ++t) acc_io[r][t] = acc[r][t];
}

// out[r * out_stride + t] = dot(wb[r * wrow :][0:k], x[t * x_stride :][0:k])
// for r < R, t < T; widened rows are aligned and zero-padded to 16.
template <int R, int T>
HX_AVX2 void tile(const float* wb, size_t wrow, const float* x, size_t x_stride, size_t k,
                  float* out, size_t out_stride) {
  // k in blocks whose rows and tokens stay in L1 for the second (hi) pass.
  constexpr size_t kBlock = 512;
  __m256 lo[R][T], hi[R][T];
  for (int r = 0; r < R; ++r)
    for (int t = 0; t < T; ++t) lo[r][t] = hi[r][t] = _mm256_setzero_ps();
  for (size_t i0 = 0; i0 < k; i0 += kBlock) {
    const size_t i1 = std::min(k, i0 + kBlock);
    tile_pass<R, T>(wb, wrow, x, x_stride, i0, i1, 0, lo);
    tile_pass<R, T>(wb, wrow, x, x_stride, i0, i1, 8, hi);
  }
  for (int r = 0; r < R; ++r)
    for (int t = 0; t < T; ++t) out[r * out_stride + t] = reduce(lo[r][t], hi[r][t]);
}

template <int R>
HX_AVX2 void tile_toks(size_t ntok, const float* wb, size_t wrow, const float* x,
                       size_t x_stride, size_t k, float* out, size_t out_stride) {
  static_assert(kTileToks == 4, "update the cases");
  switch (ntok) {
    case 1: return tile<R, 1>(wb, wrow, x, x_stride, k, out, out_stride);
    case 2: return tile<R, 2>(wb, wrow, x, x_stride, k, out, out_stride);
    case 3: return tile<R, 3>(wb, wrow, x, x_stride, k, out, out_stride);
    default: return tile<R, 4>(wb, wrow, x, x_stride, k, out, out_stride);
  }
}

// ---- quantized rows (isa/qmatrix.h) ---------------------------------------
// Each code becomes its exact fp16 value w' = fp16(float(q - z) * scale) as the
// scalar level computes it, in the two exact ways kernels_avx512.cpp describes:
// Veltkamp's split (round_split) when the group's scale keeps every w' finite
// (|scale| < 512 for int8, < 8192 for int4; int8's fma form also needs scale > 0),
// else vcvtps2ph + vcvtph2ps (round_half).

constexpr float kSplitLimit4 = 8192.0f, kSplitLimit8 = 512.0f;

HX_AVX2 inline __m256 round_half(__m256 v) {
  return _mm256_cvtph_ps(_mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
}

HX_AVX2 inline __m256 round_split(__m256 v) {
  __m256 t = _mm256_mul_ps(v, _mm256_set1_ps(8193.0f));
  __asm__("" : "+x"(t));  // no fusing of t's product into the subtractions (-ffp-contract)
  return _mm256_sub_ps(t, _mm256_sub_ps(t, v));
}

HX_AVX2 inline bool split_ok(uint32_t bits, float s) {
  return bits == 4 ? std::fabs(s) < kSplitLimit4 : s > 0.0f && s < kSplitLimit8;
}

// The 16 widened scales of the chunk whose scale line is at `line`.
HX_AVX2 inline void load_scales(const uint8_t* row, uint64_t line, float* out) {
  const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(row + line));
  _mm256_storeu_ps(out, _mm256_cvtph_ps(_mm256_castsi256_si128(h)));
  _mm256_storeu_ps(out + 8, _mm256_cvtph_ps(_mm256_extracti128_si256(h, 1)));
}

// An int4 group's 16 values: lo for codes 0-7, hi for codes 8-15.
struct Q4Table {
  __m256 lo, hi;
};

alignas(32) constexpr float kQ4MinusZ[16] = {-8, -7, -6, -5, -4, -3, -2, -1,
                                             0,  1,  2,  3,  4,  5,  6,  7};

HX_AVX2 inline Q4Table q4_table(float s, bool split) {
  const __m256 sv = _mm256_set1_ps(s);
  const __m256 lo = _mm256_mul_ps(_mm256_load_ps(kQ4MinusZ), sv);
  const __m256 hi = _mm256_mul_ps(_mm256_load_ps(kQ4MinusZ + 8), sv);
  if (split) return {round_split(lo), round_split(hi)};
  return {round_half(lo), round_half(hi)};
}

// Lane p shifts the broadcast dword by 4p: nibble p, elements in order.
alignas(32) constexpr int32_t kNibbleShift[8] = {0, 4, 8, 12, 16, 20, 24, 28};

// The values of the 8 int4 codes in the 4 bytes at p: vpermps reads an index's low
// 3 bits, so both halves of the table are looked up and bit 3 (moved to the sign,
// which vblendvps reads) picks one.
HX_AVX2 inline __m256 q4_values(const uint8_t* p, __m256i shift, const Q4Table& t) {
  int32_t d;
  std::memcpy(&d, p, 4);
  const __m256i q = _mm256_srlv_epi32(_mm256_set1_epi32(d), shift);
  return _mm256_blendv_ps(_mm256_permutevar8x32_ps(t.lo, q), _mm256_permutevar8x32_ps(t.hi, q),
                          _mm256_castsi256_ps(_mm256_slli_epi32(q, 28)));
}

// The values of the 8 int8 codes at p: split (s in (0, 512), c = -128 * s) ...
HX_AVX2 inline __m256 q8_split(const uint8_t* p, __m256 s, __m256 c) {
  const __m256i q = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p)));
  return round_split(_mm256_fmadd_ps(_mm256_cvtepi32_ps(q), s, c));
}
// ... or for any scale.
HX_AVX2 inline __m256 q8_any(const uint8_t* p, __m256 s) {
  const __m256i q = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p)));
  const __m256 d = _mm256_cvtepi32_ps(_mm256_sub_epi32(q, _mm256_set1_epi32(128)));
  return round_half(_mm256_mul_ps(d, s));
}

HX_AVX2 void dequant_row(const isa::QRowFormat& f, const uint8_t* row, float* out) {
  if (f.group % 16 != 0 || f.cols % 16 != 0) {  // groups straddle vectors: the scalar loop
    kernels_for(KernelLevel::Scalar).dequant_row(f, row, out);
    return;
  }
  const __m256i shift = _mm256_load_si256(reinterpret_cast<const __m256i*>(kNibbleShift));
  const uint32_t groups = f.groups();
  float scales[16];
  for (uint32_t g0 = 0; g0 < groups; g0 += isa::kQGroupsPerChunk) {
    const uint64_t line = f.chunk_offset(g0 / isa::kQGroupsPerChunk);
    load_scales(row, line, scales);
    const uint32_t ng = std::min(isa::kQGroupsPerChunk, groups - g0);
    for (uint32_t j = 0; j < ng; ++j) {
      const uint8_t* codes = row + line + isa::kQScaleLineBytes + j * f.group_code_bytes();
      float* o = out + size_t(g0 + j) * f.group;
      const bool split = split_ok(f.bits, scales[j]);
      if (f.bits == 4) {
        const Q4Table t = q4_table(scales[j], split);
        for (uint32_t i = 0; i < f.group_len(g0 + j); i += 8)
          _mm256_storeu_ps(o + i, q4_values(codes + i / 2, shift, t));
      } else {
        const __m256 s = _mm256_set1_ps(scales[j]), c = _mm256_set1_ps(-128.0f * scales[j]);
        for (uint32_t i = 0; i < f.group_len(g0 + j); i += 8)
          _mm256_storeu_ps(o + i, split ? q8_split(codes + i, s, c) : q8_any(codes + i, s));
      }
    }
  }
}

constexpr int kDotQRows = 2;  // rows x (lo, hi) accumulators; the tables need the rest
// As kernels_avx512.cpp: prefetch each row's stream this far ahead.
constexpr uint64_t kPrefetchAhead = 1024;

HX_AVX2 inline void prefetch_ahead(const uint8_t* p) {
  _mm_prefetch(reinterpret_cast<const char*>(reinterpret_cast<uintptr_t>(p) + kPrefetchAhead),
               _MM_HINT_T0);
}

// The chunk's widened scales of R rows; true for group j when every row's scale
// takes the split.
template <int R>
HX_AVX2 inline uint32_t chunk_scales(const uint8_t* const* rows, uint64_t line, uint32_t bits,
                                     uint32_t ng, float (&scales)[R][16]) {
  uint32_t split = 0;
  for (int r = 0; r < R; ++r) load_scales(rows[r], line, scales[r]);
  for (uint32_t j = 0; j < ng; ++j) {
    bool all = true;
    for (int r = 0; r < R; ++r) all = all && split_ok(bits, scales[r][j]);
    split |= uint32_t(all) << j;
  }
  return split;
}

template <int R>
HX_AVX2 void dot_q4_rows(const isa::QRowFormat& f, const uint8_t* const* rows, const float* x,
                         float* out) {
  const __m256i shift = _mm256_load_si256(reinterpret_cast<const __m256i*>(kNibbleShift));
  __m256 lo[R], hi[R];
  for (int r = 0; r < R; ++r) lo[r] = hi[r] = _mm256_setzero_ps();
  const uint32_t groups = f.groups();
  float scales[R][16];
  for (uint32_t g0 = 0; g0 < groups; g0 += isa::kQGroupsPerChunk) {
    const uint64_t line = f.chunk_offset(g0 / isa::kQGroupsPerChunk);
    const uint32_t ng = std::min(isa::kQGroupsPerChunk, groups - g0);
    const uint32_t split = chunk_scales<R>(rows, line, 4, ng, scales);
    for (uint32_t j = 0; j < ng; ++j) {
      const uint64_t at = line + isa::kQScaleLineBytes + j * f.group_code_bytes();
      Q4Table t[R];
      for (int r = 0; r < R; ++r) t[r] = q4_table(scales[r][j], (split >> j) & 1);
      const float* xg = x + size_t(g0 + j) * f.group;
      for (uint32_t i = 0; i < f.group_len(g0 + j); i += 16) {
        if (i % 128 == 0)  // once per 64 bytes of codes
          for (int r = 0; r < R; ++r) prefetch_ahead(rows[r] + at + i / 2);
        const __m256 xlo = _mm256_loadu_ps(xg + i), xhi = _mm256_loadu_ps(xg + i + 8);
        for (int r = 0; r < R; ++r) {
          const uint8_t* p = rows[r] + at + i / 2;
          lo[r] = _mm256_fmadd_ps(q4_values(p, shift, t[r]), xlo, lo[r]);
          hi[r] = _mm256_fmadd_ps(q4_values(p + 4, shift, t[r]), xhi, hi[r]);
        }
      }
    }
  }
  for (int r = 0; r < R; ++r) out[r] = reduce(lo[r], hi[r]);
}

template <int R>
HX_AVX2 void dot_q8_rows(const isa::QRowFormat& f, const uint8_t* const* rows, const float* x,
                         float* out) {
  __m256 lo[R], hi[R];
  for (int r = 0; r < R; ++r) lo[r] = hi[r] = _mm256_setzero_ps();
  const uint32_t groups = f.groups();
  float scales[R][16];
  for (uint32_t g0 = 0; g0 < groups; g0 += isa::kQGroupsPerChunk) {
    const uint64_t line = f.chunk_offset(g0 / isa::kQGroupsPerChunk);
    const uint32_t ng = std::min(isa::kQGroupsPerChunk, groups - g0);
    const uint32_t split = chunk_scales<R>(rows, line, 8, ng, scales);
    for (uint32_t j = 0; j < ng; ++j) {
      const uint64_t at = line + isa::kQScaleLineBytes + j * f.group_code_bytes();
      __m256 s[R], c[R];
      for (int r = 0; r < R; ++r) {
        s[r] = _mm256_set1_ps(scales[r][j]);
        c[r] = _mm256_set1_ps(-128.0f * scales[r][j]);
      }
      const float* xg = x + size_t(g0 + j) * f.group;
      const uint32_t len = f.group_len(g0 + j);
      const bool fast = (split >> j) & 1;
      for (uint32_t i = 0; i < len; i += 16) {
        if (i % 64 == 0)
          for (int r = 0; r < R; ++r) prefetch_ahead(rows[r] + at + i);
        const __m256 xlo = _mm256_loadu_ps(xg + i), xhi = _mm256_loadu_ps(xg + i + 8);
        for (int r = 0; r < R; ++r) {
          const uint8_t* p = rows[r] + at + i;
          if (fast) {
            lo[r] = _mm256_fmadd_ps(q8_split(p, s[r], c[r]), xlo, lo[r]);
            hi[r] = _mm256_fmadd_ps(q8_split(p + 8, s[r], c[r]), xhi, hi[r]);
          } else {
            lo[r] = _mm256_fmadd_ps(q8_any(p, s[r]), xlo, lo[r]);
            hi[r] = _mm256_fmadd_ps(q8_any(p + 8, s[r]), xhi, hi[r]);
          }
        }
      }
    }
  }
  for (int r = 0; r < R; ++r) out[r] = reduce(lo[r], hi[r]);
}

}  // namespace

const Kernels& avx2_kernels() {
  static constexpr Kernels kAvx2{"avx2",  half_to_float_n, float_to_half_n, dot_f32,
                                 dot_f16, axpy_f16,        dequant_row};
  return kAvx2;
}

bool avx2_q_fast(const isa::QRowFormat& f) { return f.group % 16 == 0 && f.cols % 16 == 0; }

HX_AVX2 void avx2_dot_q_rows(const isa::QRowFormat& f, const uint8_t* const* rows, size_t nrows,
                             const float* x, float* out) {
  static_assert(kDotQRows == 2, "update the cases");
  for (size_t r = 0; r < nrows; r += kDotQRows) {
    const bool two = nrows - r >= 2;
    if (f.bits == 4) {
      two ? dot_q4_rows<2>(f, rows + r, x, out + r) : dot_q4_rows<1>(f, rows + r, x, out + r);
    } else {
      two ? dot_q8_rows<2>(f, rows + r, x, out + r) : dot_q8_rows<1>(f, rows + r, x, out + r);
    }
  }
}

HX_AVX2 void avx2_dot_f16_rows(const uint16_t* const* rows, size_t nrows, size_t k,
                               const float* x, float* out) {
  static_assert(kDotRows == 4, "update the cases");
  for (size_t r = 0; r < nrows; r += kDotRows) {
    switch (std::min<size_t>(kDotRows, nrows - r)) {
      case 1: dot_rows<1>(rows + r, k, x, out + r); break;
      case 2: dot_rows<2>(rows + r, k, x, out + r); break;
      case 3: dot_rows<3>(rows + r, k, x, out + r); break;
      default: dot_rows<4>(rows + r, k, x, out + r); break;
    }
  }
}

HX_AVX2 void avx2_tile_f32(const float* wb, size_t wrow, size_t nrows, const float* x,
                           size_t x_stride, size_t ntok, size_t k, float* out) {
  static_assert(kTileRows == 3, "update the cases");
  for (size_t r = 0; r < nrows; r += kTileRows) {
    for (size_t t = 0; t < ntok; t += kTileToks) {
      const float* w = wb + r * wrow;
      const float* xt = x + t * x_stride;
      const size_t nt = std::min<size_t>(kTileToks, ntok - t);
      float* o = out + r * ntok + t;
      switch (std::min<size_t>(kTileRows, nrows - r)) {
        case 1: tile_toks<1>(nt, w, wrow, xt, x_stride, k, o, ntok); break;
        case 2: tile_toks<2>(nt, w, wrow, xt, x_stride, k, o, ntok); break;
        default: tile_toks<3>(nt, w, wrow, xt, x_stride, k, o, ntok); break;
      }
    }
  }
}

}  // namespace hyperdex::emu::detail

#endif  // x86
