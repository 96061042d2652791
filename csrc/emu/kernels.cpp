// Numeric kernels: the scalar level (the reference every SIMD level must match
// bit for bit), run-time level selection, and the matmul_f16 driver.
//
// Bit-exactness: the scalar code below contains no a*b+c expression, only
// explicit std::fma and plain additions, so -ffp-contract (GCC defaults to
// "fast") cannot fuse anything and the results do not depend on the compiler.
#include "emu/kernels.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#include "common/fp16.h"

#if defined(__x86_64__) || defined(__i386__)
#define HYPERDEX_X86 1
#include <cpuid.h>
#endif

namespace hyperdex::emu {
namespace detail {

#ifdef HYPERDEX_X86
// Defined in kernels_avx2.cpp and kernels_avx512.cpp:
//   *_dot_f16_rows: out[i] = dot_f16(rows[i], x, k) for i < nrows.
//   *_tile_f32: out[r * ntok + t] = dot_f32(wb + r * wrow, x + t * x_stride, k)
//     for r < nrows, t < ntok; wb is 64-byte aligned, wrow a multiple of 16 and
//     each widened row zero-padded from k up to a multiple of 16.
const Kernels& avx2_kernels();
void avx2_dot_f16_rows(const uint16_t* const* rows, size_t nrows, size_t k, const float* x,
                       float* out);
void avx2_tile_f32(const float* wb, size_t wrow, size_t nrows, const float* x, size_t x_stride,
                   size_t ntok, size_t k, float* out);
//   *_q_fast(f): whether *_dot_q_rows handles rows of format f (else the driver
//     dequantizes rows with dequant_row and uses dot_f32);
//   *_dot_q_rows: out[i] = dot(w'(rows[i]), x) for i < nrows, x as *_prep_q_x made it.
bool avx2_q_fast(const isa::QRowFormat& f);
void avx2_dot_q_rows(const isa::QRowFormat& f, const uint8_t* const* rows, size_t nrows,
                     const float* x, float* out);
const Kernels& avx512_kernels();
void avx512_dot_f16_rows(const uint16_t* const* rows, size_t nrows, size_t k, const float* x,
                         float* out);
void avx512_tile_f32(const float* wb, size_t wrow, size_t nrows, const float* x, size_t x_stride,
                     size_t ntok, size_t k, float* out);
//   avx512_axpy_f16_rows: nrows axpy_f16(a[j], v[j], acc, n) calls in j order.
void avx512_axpy_f16_rows(const float* a, const uint16_t* const* v, size_t nrows, float* acc,
                          size_t n);
bool avx512_q_fast(const isa::QRowFormat& f);
// x in the lane order avx512_dot_q_rows uses for f (xp: f.cols floats, 64-byte aligned).
const float* avx512_prep_q_x(const isa::QRowFormat& f, const float* x, float* xp);
void avx512_dot_q_rows(const isa::QRowFormat& f, const uint8_t* const* rows, size_t nrows,
                       const float* x, float* out);
#endif

}  // namespace detail

namespace {

constexpr size_t kLanes = 16;

// The pairwise tree of kernels.h over the 16 lane sums.
float reduce_tree(const float (&acc)[kLanes]) {
  float s8[8], s4[4], s2[2];
  for (int j = 0; j < 8; ++j) s8[j] = acc[j] + acc[j + 8];
  for (int j = 0; j < 4; ++j) s4[j] = s8[j] + s8[j + 4];
  for (int j = 0; j < 2; ++j) s2[j] = s4[j] + s4[j + 2];
  return s2[0] + s2[1];
}

// One MAC-tree dot; load(i) gives operand a's element i as a float. Elements
// past n are zeros: fma(0, 0, acc) == acc + 0, which matters only in that it
// turns an accumulated -0 into +0, exactly as the SIMD levels' zero-filled
// tail loads do.
template <class LoadA>
float mac_tree(LoadA load_a, const float* b, size_t n) {
  float acc[kLanes] = {};
  size_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    for (size_t j = 0; j < kLanes; ++j) acc[j] = std::fma(load_a(i + j), b[i + j], acc[j]);
  }
  if (i < n) {
    const size_t rem = n - i;
    for (size_t j = 0; j < kLanes; ++j) {
      acc[j] = j < rem ? std::fma(load_a(i + j), b[i + j], acc[j]) : acc[j] + 0.0f;
    }
  }
  return reduce_tree(acc);
}

void scalar_half_to_float_n(const uint16_t* src, float* dst, size_t n) {
  for (size_t i = 0; i < n; ++i) dst[i] = half_to_float(src[i]);
}

void scalar_float_to_half_n(const float* src, uint16_t* dst, size_t n) {
  for (size_t i = 0; i < n; ++i) dst[i] = float_to_half(src[i]);
}

float scalar_dot_f32(const float* a, const float* b, size_t n) {
  return mac_tree([a](size_t i) { return a[i]; }, b, n);
}

float scalar_dot_f16(const uint16_t* w, const float* x, size_t n) {
  return mac_tree([w](size_t i) { return half_to_float(w[i]); }, x, n);
}

void scalar_axpy_f16(float a, const uint16_t* v, float* acc, size_t n) {
  for (size_t i = 0; i < n; ++i) acc[i] = std::fma(a, half_to_float(v[i]), acc[i]);
}

// Group by group; int4 through a table of the group's 16 values.
void scalar_dequant_row(const isa::QRowFormat& f, const uint8_t* row, float* out) {
  const uint32_t groups = f.groups();
  for (uint32_t g = 0; g < groups; ++g) {
    uint16_t scale;
    std::memcpy(&scale, row + f.scale_offset(g), 2);
    const uint8_t* codes = row + f.codes_offset(g);
    float* o = out + size_t(g) * f.group;
    if (f.bits == 4) {
      float lut[16];
      for (uint32_t q = 0; q < 16; ++q) lut[q] = half_to_float(isa::dequantize_code(q, scale, 4));
      for (uint32_t i = 0; i < f.group_len(g); ++i) o[i] = lut[(codes[i / 2] >> ((i & 1) * 4)) & 0xF];
    } else {
      for (uint32_t i = 0; i < f.group_len(g); ++i)
        o[i] = half_to_float(isa::dequantize_code(codes[i], scale, f.bits));
    }
  }
}

constexpr Kernels kScalar{"scalar",        scalar_half_to_float_n, scalar_float_to_half_n,
                          scalar_dot_f32,  scalar_dot_f16,         scalar_axpy_f16,
                          scalar_dequant_row};

// HYPERDEX_KERNELS caps the level; unset or empty means no cap.
KernelLevel level_cap() {
  const char* v = std::getenv("HYPERDEX_KERNELS");
  if (v == nullptr || *v == '\0') return KernelLevel::Avx512;
  std::string s(v);
  for (char& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  if (s == "scalar") return KernelLevel::Scalar;
  if (s == "avx2") return KernelLevel::Avx2;
  if (s == "avx512") return KernelLevel::Avx512;
  throw std::runtime_error("HYPERDEX_KERNELS must be scalar, avx2 or avx512, not '" + s + "'");
}

const Kernels& pick_best() {
  const KernelLevel cap = level_cap();
  for (KernelLevel l : {KernelLevel::Avx512, KernelLevel::Avx2}) {
    if (static_cast<int>(l) <= static_cast<int>(cap) && cpu_supports(l)) return kernels_for(l);
  }
  return kScalar;
}

// ---- matmul_f16 driver ---------------------------------------------------------

// A 64-byte aligned start in buf with at least `floats` floats after it (buf only grows).
float* aligned_floats(std::vector<float>& buf, size_t floats) {
  const size_t need = floats + 64 / sizeof(float);
  if (buf.size() < need) buf.resize(need);
  const auto p = reinterpret_cast<uintptr_t>(buf.data());
  return reinterpret_cast<float*>((p + 63) & ~static_cast<uintptr_t>(63));
}
// Scratch for widened weight rows. Per thread, so pool threads never share it.
float* row_scratch(size_t floats) {
  thread_local std::vector<float> buf;
  return aligned_floats(buf, floats);
}
// The same for a matmul's results in memory order, held by the calling thread (which
// also runs tasks, so it needs a buffer apart from its row_scratch).
float* ordered_scratch(size_t floats) {
  thread_local std::vector<float> buf;
  return aligned_floats(buf, floats);
}

// A level's matmul building blocks (see detail:: above for their contracts).
// The driver below is the same for every level; only these differ.
struct MatmulMicro {
  size_t dot_rows;  // rows per dot_f16_rows call at n == 1 (independent streams)
  void (*dot_f16_rows)(const Kernels&, const uint16_t* const* rows, size_t nrows, size_t k,
                       const float* x, float* out);
  size_t tile_rows, tile_toks;  // register tile at n > 1
  void (*tile_f32)(const Kernels&, const float* wb, size_t wrow, size_t nrows, const float* x,
                   size_t x_stride, size_t ntok, size_t k, float* out);
  // Quantized rows at n == 1 (null: none; the driver then dequantizes and uses dot_f32).
  bool (*q_fast)(const isa::QRowFormat& f);
  const float* (*prep_q_x)(const isa::QRowFormat& f, const float* x, float* xp);  // null: x
  void (*dot_q_rows)(const isa::QRowFormat& f, const uint8_t* const* rows, size_t nrows,
                     const float* x, float* out);
  // axpy_f16 over several rows in order (null: one kern.axpy_f16 call per row).
  void (*axpy_f16_rows)(const float* a, const uint16_t* const* v, size_t nrows, float* acc,
                        size_t n);
};

constexpr size_t kMaxDotRows = 8;
// fp16 decode streams at most this many runs side by side: fp16 rows are bound by
// memory, not arithmetic, and on Zen 4 one core reads short rows faster from 4 streams
// than from 8 (SmolLM2's LM head, 49152 x 576: about 20 -> 26 GB/s).
constexpr size_t kF16Streams = 4;
constexpr size_t kMaxTileRows = 4, kMaxTileToks = 6;
// Rows widened together at n > 1: a multiple of every level's tile rows (3, 4).
constexpr size_t kPrefillRowBlock = 24;

// Through a Kernels table's entry points: the scalar level, or a table this
// file does not know.
constexpr MatmulMicro kGenericMicro{
    4,
    [](const Kernels& kern, const uint16_t* const* rows, size_t nrows, size_t k, const float* x,
       float* out) {
      for (size_t i = 0; i < nrows; ++i) out[i] = kern.dot_f16(rows[i], x, k);
    },
    1, 1,
    [](const Kernels& kern, const float* wb, size_t wrow, size_t nrows, const float* x,
       size_t x_stride, size_t ntok, size_t k, float* out) {
      for (size_t r = 0; r < nrows; ++r) {
        for (size_t t = 0; t < ntok; ++t) {
          out[r * ntok + t] = kern.dot_f32(wb + r * wrow, x + t * x_stride, k);
        }
      }
    },
    nullptr, nullptr, nullptr, nullptr};

#ifdef HYPERDEX_X86
constexpr MatmulMicro kAvx2Micro{
    4,
    [](const Kernels&, const uint16_t* const* rows, size_t nrows, size_t k, const float* x,
       float* out) { detail::avx2_dot_f16_rows(rows, nrows, k, x, out); },
    3, 4,
    [](const Kernels&, const float* wb, size_t wrow, size_t nrows, const float* x,
       size_t x_stride, size_t ntok, size_t k, float* out) {
      detail::avx2_tile_f32(wb, wrow, nrows, x, x_stride, ntok, k, out);
    },
    detail::avx2_q_fast, nullptr, detail::avx2_dot_q_rows, nullptr};
constexpr MatmulMicro kAvx512Micro{
    8,
    [](const Kernels&, const uint16_t* const* rows, size_t nrows, size_t k, const float* x,
       float* out) { detail::avx512_dot_f16_rows(rows, nrows, k, x, out); },
    4, 6,
    [](const Kernels&, const float* wb, size_t wrow, size_t nrows, const float* x,
       size_t x_stride, size_t ntok, size_t k, float* out) {
      detail::avx512_tile_f32(wb, wrow, nrows, x, x_stride, ntok, k, out);
    },
    detail::avx512_q_fast, detail::avx512_prep_q_x, detail::avx512_dot_q_rows,
    detail::avx512_axpy_f16_rows};
#endif

const MatmulMicro& micro_for([[maybe_unused]] const Kernels& kern) {
#ifdef HYPERDEX_X86
  // Recognise the SIMD levels by their entry points.
  if (kern.dot_f16 == detail::avx512_kernels().dot_f16) return kAvx512Micro;
  if (kern.dot_f16 == detail::avx2_kernels().dot_f16) return kAvx2Micro;
#endif
  return kGenericMicro;
}

// The rows of a striped region in memory order: channel by channel, and by
// offset within a channel. A run of consecutive positions is then one
// sequential stream through memory, which the hardware prefetchers follow far
// better than rows hopping from channel to channel.
class MemoryOrder {
 public:
  struct Cursor {
    size_t channel, offset;
  };

  MemoryOrder(const StripedRows& w, size_t m)
      : w_(w), channels_(w.num_channels), q_(m / channels_), big_(m % channels_) {}

  Cursor at(size_t pos) const {  // the first big_ channels hold q_ + 1 rows
    const size_t in_big = big_ * (q_ + 1);
    if (pos < in_big) return {pos / (q_ + 1), pos % (q_ + 1)};
    return {big_ + (pos - in_big) / q_, (pos - in_big) % q_};
  }
  void next(Cursor& c) const {
    if (++c.offset == q_ + (c.channel < big_ ? 1 : 0)) {
      ++c.channel;
      c.offset = 0;
    }
  }
  // y[row] = ym[pos] for every position: results computed in memory order put in
  // row order (channel c holds rows c, c + channels, c + 2 channels, ...).
  // Row by row, so the writes are sequential (the reads come from a stream per channel).
  void to_rows(const float* ym, float* y) const {
    // Channel c < big_ starts at c * (q_ + 1), the others at big_ * (q_ + 1) + (c - big_) * q_.
    const float* big_rows = ym;
    const float* rest = ym + big_;
    for (size_t o = 0; o < q_; ++o, y += channels_) {
      for (size_t c = 0; c < big_; ++c) y[c] = big_rows[c * (q_ + 1) + o];
      for (size_t c = big_; c < channels_; ++c) y[c] = rest[c * q_ + o];
    }
    for (size_t c = 0; c < big_; ++c) y[c] = big_rows[c * (q_ + 1) + q_];  // their last rows
  }
  const uint8_t* bytes(const Cursor& c) const {
    return w_.channels[c.channel] + w_.base + c.offset * w_.row_bytes;
  }
  const uint16_t* ptr(const Cursor& c) const {
    return reinterpret_cast<const uint16_t*>(bytes(c));
  }

 private:
  const StripedRows& w_;
  size_t channels_, q_, big_;
};

// n == 1, positions [p0, p1): split into `streams` equal runs walked side by
// side, so that each dot_rows(ptrs, nrows, out) call covers independent rows
// (hiding the fma latency) while each run stays a sequential stream. Results go
// to ym[position] (memory order).
template <class DotRows>
void decode_positions(const MemoryOrder& order, size_t streams, size_t p0, size_t p1, float* ym,
                      DotRows&& dot_rows) {
  streams = std::min(streams, kMaxDotRows);
  const size_t len = (p1 - p0) / streams, extra = (p1 - p0) % streams;
  MemoryOrder::Cursor cur[kMaxDotRows];
  size_t start[kMaxDotRows];
  for (size_t j = 0; j < streams; ++j) {
    start[j] = p0 + j * len + std::min(j, extra);
    if (len > 0 || j < extra) cur[j] = order.at(start[j]);
  }
  const uint8_t* ptrs[kMaxDotRows];
  float out[kMaxDotRows];
  // len full steps, then one more for the `extra` runs that are one longer.
  for (size_t step = 0; step <= len; ++step) {
    const size_t nrows = step < len ? streams : extra;
    if (nrows == 0) break;
    for (size_t j = 0; j < nrows; ++j) {
      ptrs[j] = order.bytes(cur[j]);
      order.next(cur[j]);
    }
    dot_rows(ptrs, nrows, out);
    for (size_t j = 0; j < nrows; ++j) ym[start[j] + step] = out[j];
  }
}

// n > 1, positions [p0, p1): widen a few rows once (widen(row bytes, out):
// k floats), then run them against every token in register tiles. Token t's
// results go to ym[t * m + position] (memory order).
template <class Widen>
void prefill_positions(const MatmulMicro& micro, const Kernels& kern, const MemoryOrder& order,
                       size_t p0, size_t p1, size_t k, const float* x, size_t x_stride, size_t n,
                       float* ym, size_t m, Widen&& widen) {
  const size_t tr = std::min(micro.tile_rows, kMaxTileRows);
  const size_t tt = std::min(micro.tile_toks, kMaxTileToks);
  const size_t wrow = (k + kLanes - 1) / kLanes * kLanes;
  // A block of rows is widened at once and every token tile sweeps all of it, so
  // the tile's activations stay in L1 while the block's rows stream past them.
  float* wb = row_scratch(kPrefillRowBlock * wrow);
  float out[kMaxTileRows * kMaxTileToks];
  MemoryOrder::Cursor cur = order.at(p0);
  for (size_t p = p0; p < p1; p += kPrefillRowBlock) {
    const size_t nb = std::min(kPrefillRowBlock, p1 - p);
    for (size_t i = 0; i < nb; ++i) {
      float* dst = wb + i * wrow;
      widen(order.bytes(cur), dst);
      std::fill(dst + k, dst + wrow, 0.0f);
      order.next(cur);
    }
    for (size_t t = 0; t < n; t += tt) {
      const size_t ntok = std::min(tt, n - t);
      for (size_t r0 = 0; r0 < nb; r0 += tr) {
        const size_t nrows = std::min(tr, nb - r0);
        micro.tile_f32(kern, wb + r0 * wrow, wrow, nrows, x + t * x_stride, x_stride, ntok, k,
                       out);
        for (size_t i = 0; i < nrows; ++i)
          for (size_t j = 0; j < ntok; ++j)
            ym[(t + j) * m + p + r0 + i] = out[i * ntok + j];
      }
    }
  }
}

// Positions per pool task: about 64 KiB of weights at n == 1 (memory bound; one
// fma counted like a quarter of a byte); whole row blocks at n > 1 (compute bound).
size_t matmul_grain(size_t k, size_t n) {
  if (n > 1) return kPrefillRowBlock;
  return std::max<size_t>(1, (size_t{64} << 10) / std::max<size_t>(2 * k + k / 4, 1));
}

// Results held in memory order at a time (4 MiB), unless that is under 64 tokens.
constexpr size_t kOrderedFloats = size_t{1} << 20;
constexpr size_t kOrderedMinTokens = 64;

// Runs fill(p0, p1, t0, nt, ym) over the positions on the pool for tokens [t0, t0 + nt),
// each task writing its results to ym in memory order (token t0 + t's at ym[t * m +
// position]), then puts them in row order in y. Writing y directly would have the cores
// write the same cache lines: neighbouring rows belong to neighbouring channels, which
// different tasks stream. Many tokens of a wide matrix (all the logits of a prompt) go
// a slice of tokens at a time, so the scratch stays small.
template <class Fill>
void fill_in_row_order(const MemoryOrder& order, size_t m, size_t n, size_t grain, float* y,
                       size_t y_stride, ThreadPool& pool, Fill&& fill) {
  const size_t slice = std::min(n, std::max(kOrderedFloats / m, kOrderedMinTokens));
  float* ym = ordered_scratch(m * slice);
  for (size_t t0 = 0; t0 < n; t0 += slice) {
    const size_t nt = std::min(slice, n - t0);
    pool.parallel_for(0, m, grain, [&](size_t p0, size_t p1) { fill(p0, p1, t0, nt, ym); });
    if (nt == 1) {
      order.to_rows(ym, y + t0 * y_stride);
      continue;
    }
    pool.parallel_for(0, nt, 1, [&](size_t a, size_t b) {
      for (size_t t = a; t < b; ++t) order.to_rows(ym + t * m, y + (t0 + t) * y_stride);
    });
  }
}

}  // namespace

bool cpu_supports(KernelLevel level) {
  switch (level) {
    case KernelLevel::Scalar:
      return true;
#ifdef HYPERDEX_X86
    case KernelLevel::Avx2: {
      __builtin_cpu_init();  // may run before main (static initialisers)
      // F16C straight from cpuid: Clang before 18 has no "f16c" for
      // __builtin_cpu_supports (it would silently answer 0).
      unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
      const bool f16c = __get_cpuid(1, &eax, &ebx, &ecx, &edx) && (ecx & bit_F16C) != 0;
      return f16c && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    }
    case KernelLevel::Avx512:
      return cpu_supports(KernelLevel::Avx2) && __builtin_cpu_supports("avx512f");
#endif
    default:
      return false;
  }
}

const Kernels& kernels_for(KernelLevel level) {
  if (!cpu_supports(level)) {
    throw std::runtime_error(std::string("this CPU does not support the ") +
                             (level == KernelLevel::Avx2 ? "avx2" : "avx512") + " kernels");
  }
  switch (level) {
#ifdef HYPERDEX_X86
    case KernelLevel::Avx2:
      return detail::avx2_kernels();
    case KernelLevel::Avx512:
      return detail::avx512_kernels();
#endif
    default:
      return kScalar;
  }
}

const Kernels& best_kernels() {
  // Chosen once: the CPU does not change, and reading the environment on
  // every instruction would be wasted work.
  static const Kernels& best = pick_best();
  return best;
}

void dot_f16_many(const Kernels& kern, const uint16_t* const* rows, size_t nrows, size_t k,
                  const float* x, float* out) {
  const MatmulMicro& micro = micro_for(kern);
  const size_t step = std::min(micro.dot_rows, kMaxDotRows);
  for (size_t i = 0; i < nrows; i += step)
    micro.dot_f16_rows(kern, rows + i, std::min(step, nrows - i), k, x, out + i);
}

void axpy_f16_many(const Kernels& kern, const float* a, const uint16_t* const* v, size_t nrows,
                   float* acc, size_t n) {
  const MatmulMicro& micro = micro_for(kern);
  if (micro.axpy_f16_rows) return micro.axpy_f16_rows(a, v, nrows, acc, n);
  for (size_t j = 0; j < nrows; ++j) kern.axpy_f16(a[j], v[j], acc, n);
}

void matmul_f16(const Kernels& kern, const StripedRows& w, size_t m, size_t k, const float* x,
                size_t x_stride, size_t n, float* y, size_t y_stride, ThreadPool& pool) {
  if (m == 0 || n == 0) return;
  const MatmulMicro& micro = micro_for(kern);
  const MemoryOrder order(w, m);
  const size_t grain = matmul_grain(k, n);
  // The pool splits positions in memory order, so each task streams whole
  // stretches of a few channels.
  const auto fill = [&](size_t p0, size_t p1, size_t t0, size_t nt, float* ym) {
    if (n == 1) {
      decode_positions(order, std::min(micro.dot_rows, kF16Streams), p0, p1, ym,
                       [&](const uint8_t* const* ptrs, size_t nrows, float* out) {
                         const uint16_t* rows[kMaxDotRows];
                         for (size_t j = 0; j < nrows; ++j)
                           rows[j] = reinterpret_cast<const uint16_t*>(ptrs[j]);
                         micro.dot_f16_rows(kern, rows, nrows, k, x, out);
                       });
    } else {
      prefill_positions(micro, kern, order, p0, p1, k, x + t0 * x_stride, x_stride, nt, ym, m,
                        [&](const uint8_t* row, float* dst) {
                          kern.half_to_float_n(reinterpret_cast<const uint16_t*>(row), dst, k);
                        });
    }
  };
  fill_in_row_order(order, m, n, grain, y, y_stride, pool, fill);
}

void matmul_q(const Kernels& kern, const StripedRows& w, const isa::QRowFormat& f, size_t m,
              const float* x, size_t x_stride, size_t n, float* y, size_t y_stride,
              ThreadPool& pool) {
  if (m == 0 || n == 0) return;
  if (const std::string why = f.check(); !why.empty())
    throw std::invalid_argument("matmul_q: " + why);
  const MatmulMicro& micro = micro_for(kern);
  const MemoryOrder order(w, m);
  const size_t k = f.cols;
  const auto widen = [&](const uint8_t* row, float* dst) { kern.dequant_row(f, row, dst); };
  // As matmul_f16 (weights counted as their fp16 size: dequantizing costs like widening).
  const size_t grain = matmul_grain(k, n);
  const bool fast = micro.q_fast && micro.q_fast(f);
  // x in the decode kernel's lane order, once for all rows (64-byte aligned).
  std::vector<float> prepared;
  const float* xq = x;
  if (n == 1 && fast && micro.prep_q_x) {
    prepared.resize(k + 16);
    const auto p = reinterpret_cast<uintptr_t>(prepared.data());
    xq = micro.prep_q_x(f, x, reinterpret_cast<float*>((p + 63) & ~uintptr_t(63)));
  }
  const auto fill = [&](size_t p0, size_t p1, size_t t0, size_t nt, float* ym) {
    if (n > 1) {
      prefill_positions(micro, kern, order, p0, p1, k, x + t0 * x_stride, x_stride, nt, ym, m,
                        widen);
    } else if (fast) {
      decode_positions(order, micro.dot_rows, p0, p1, ym,
                       [&](const uint8_t* const* ptrs, size_t nrows, float* out) {
                         micro.dot_q_rows(f, ptrs, nrows, xq, out);
                       });
    } else {
      // Formats without a fused kernel: widen each row, then the fp32 MAC tree
      // (dot_f32 over the exact widened values is dot_f16 over the fp16 values).
      float* buf = row_scratch(k);
      decode_positions(order, 1, p0, p1, ym, [&](const uint8_t* const* ptrs, size_t, float* out) {
        widen(ptrs[0], buf);
        out[0] = kern.dot_f32(buf, x, k);
      });
    }
  };
  fill_in_row_order(order, m, n, grain, y, y_stride, pool, fill);
}

}  // namespace hyperdex::emu
