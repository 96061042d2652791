// Rows are widened (fp32/fp64 rows to fp64, fp16 rows to fp32) a chunk at a time
// and the chunk's x^T x is added to the lower block triangle of the sum (fp16
// rows: of the fp32 partial sum), one task per tile.
#include "quant/hessian.h"

#include <algorithm>

#include "common/error.h"
#include "common/fp16.h"
#include "emu/kernels.h"
#include "quant/linalg.h"

namespace hyperdex::quant {
namespace {

constexpr size_t kChunkRows = 256;
constexpr size_t kFlushRows = 512;  // fp16 rows summed in fp32 before the fp64 sum takes them
constexpr size_t kTile = 192;

// fn(i0, j0, rows, cols) for every tile of the lower block triangle of a cols x cols
// matrix (tile (ti, tj), tj <= ti), one pool task per tile, with a GemmWorkspace per task
// chunk for callers that multiply.
template <class Fn>
void for_lower_tiles(ThreadPool& pool, size_t cols, Fn&& fn) {
  const size_t tiles = (cols + kTile - 1) / kTile;
  pool.parallel_for(0, tiles * (tiles + 1) / 2, 1, [&](size_t lo, size_t hi) {
    GemmWorkspace ws;
    for (size_t task = lo; task < hi; ++task) {
      size_t ti = 0;  // task -> tile (ti, tj), row by row
      while ((ti + 1) * (ti + 2) / 2 <= task) ++ti;
      const size_t tj = task - ti * (ti + 1) / 2;
      const size_t i0 = ti * kTile, j0 = tj * kTile;
      fn(i0, j0, std::min(kTile, cols - i0), std::min(kTile, cols - j0), ws);
    }
  });
}

}  // namespace

HessianAccumulator::HessianAccumulator(size_t cols, size_t num_threads)
    : cols_(cols), sum_(cols * cols, 0.0), pool_(num_threads) {
  if (cols == 0) throw SpecError("HessianAccumulator: cols must be at least 1");
}

uint64_t HessianAccumulator::count() const {
  std::lock_guard<std::mutex> lk(mu_);
  return count_;
}

template <class Widen>
void HessianAccumulator::add_rows(size_t n, Widen widen) {
  std::lock_guard<std::mutex> lk(mu_);
  const SimdLevel level = best_simd_level();
  for (size_t t0 = 0; t0 < n; t0 += kChunkRows) {
    const size_t k = std::min(kChunkRows, n - t0);
    chunk_.resize(k * cols_);
    pool_.parallel_for(0, k, 16, [&](size_t lo, size_t hi) {
      for (size_t t = lo; t < hi; ++t) widen(t0 + t, chunk_.data() + t * cols_);
    });
    // sum[i0:, j0:] += chunk[:, i0:]^T chunk[:, j0:]
    for_lower_tiles(pool_, cols_, [&](size_t i0, size_t j0, size_t mi, size_t nj,
                                      GemmWorkspace& ws) {
      gemm_acc(level, mi, nj, k, false, chunk_.data() + i0, 1, cols_, chunk_.data() + j0, cols_,
               sum_.data() + i0 * cols_ + j0, cols_, &ws);
    });
  }
  count_ += n;
}

// fp16 rows: x^T x of up to kChunkRows rows at a time into the fp32 partial sum
// (lower block triangle, one task per tile), flushed into the fp64 sum after every
// kFlushRows rows counted across calls: where the flushes fall depends only on the
// number of rows before, so the sum does not depend on how rows come in.
template <class Widen>
void HessianAccumulator::add_rows_f32(size_t n, Widen widen) {
  std::lock_guard<std::mutex> lk(mu_);
  const SimdLevel level = best_simd_level();
  if (partial_.empty()) partial_.assign(cols_ * cols_, 0.0f);
  for (size_t t0 = 0; t0 < n;) {
    const size_t k = std::min({kChunkRows, n - t0, kFlushRows - partial_rows_});
    chunk32_.resize(k * cols_);
    pool_.parallel_for(0, k, 16, [&](size_t lo, size_t hi) {
      for (size_t t = lo; t < hi; ++t) widen(t0 + t, chunk32_.data() + t * cols_);
    });
    for_lower_tiles(pool_, cols_, [&](size_t i0, size_t j0, size_t mi, size_t nj, GemmWorkspace&) {
      gram_acc_f32(level, mi, nj, k, chunk32_.data() + i0, chunk32_.data() + j0, cols_,
                   partial_.data() + i0 * cols_ + j0, cols_);
    });
    t0 += k;
    partial_rows_ += k;
    if (partial_rows_ == kFlushRows) {
      for_lower_tiles(pool_, cols_, [&](size_t i0, size_t j0, size_t mi, size_t nj,
                                        GemmWorkspace&) {
        for (size_t i = i0; i < i0 + mi; ++i) {
          double* dst = sum_.data() + i * cols_;
          float* src = partial_.data() + i * cols_;
          for (size_t j = j0; j < j0 + nj; ++j) dst[j] += double(src[j]), src[j] = 0.0f;
        }
      });
      partial_rows_ = 0;
    }
  }
  count_ += n;
}

void HessianAccumulator::add(const float* x, size_t n, size_t ld) {
  add_rows(n, [&](size_t t, double* dst) {
    const float* src = x + t * ld;
    for (size_t c = 0; c < cols_; ++c) dst[c] = double(src[c]);
  });
}

void HessianAccumulator::add(const double* x, size_t n, size_t ld) {
  add_rows(n, [&](size_t t, double* dst) { std::copy(x + t * ld, x + t * ld + cols_, dst); });
}

void HessianAccumulator::add_f16(const uint16_t* x, size_t n, size_t ld) {
  const emu::Kernels& kern = emu::best_kernels();
  add_rows_f32(n, [&](size_t t, float* dst) { kern.half_to_float_n(x + t * ld, dst, cols_); });
}

std::vector<double> HessianAccumulator::hessian() const {
  std::lock_guard<std::mutex> lk(mu_);
  if (count_ == 0)
    throw SpecError("HessianAccumulator: no calibration rows were added; run calibration data "
                    "through the layer (add()) before asking for its Hessian");
  const double s = 2.0 / double(count_);
  std::vector<double> h(cols_ * cols_);
  for (size_t i = 0; i < cols_; ++i)
    for (size_t j = 0; j <= i; ++j) {
      const double sum = sum_[i * cols_ + j] + (partial_.empty() ? 0.0 : partial_[i * cols_ + j]);
      h[i * cols_ + j] = h[j * cols_ + i] = s * sum;
    }
  return h;
}

}  // namespace hyperdex::quant
