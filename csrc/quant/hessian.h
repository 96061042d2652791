// The GPTQ Hessian of one linear layer: H = 2/n sum_t x_t x_t^T over the n
// calibration rows x_t (the layer's inputs).
//
// State: the running sum in fp64 (lower triangle) and n. fp32/fp64 rows: each
// row's products are exact in fp64 (fp32 inputs have 24-bit significands) and
// every element is one fused multiply-add chain in row order. fp16 rows (what
// calibration reads from the device): their products are exact in fp32, so
// they are summed in fp32 (twice the SIMD width) over every 512 rows, counted
// across add() calls, and each such sum is added in fp64 (relative error ~1e-6).
// Either way the sum does not depend on the thread count nor on how the rows
// are batched into add() calls.
// Thread-safe; concurrent add() calls are serialised (in unspecified order).
#pragma once
#include <cstddef>
#include <cstdint>
#include <mutex>
#include <vector>

#include "common/thread_pool.h"

namespace hyperdex::quant {

class HessianAccumulator {
 public:
  // num_threads == 0: one per core.
  explicit HessianAccumulator(size_t cols, size_t num_threads = 0);

  size_t cols() const { return cols_; }
  uint64_t count() const;

  // Adds n rows of `cols` values each (row-major, rows ld apart).
  void add(const float* x, size_t n, size_t ld);
  void add(const double* x, size_t n, size_t ld);
  void add_f16(const uint16_t* x, size_t n, size_t ld);  // fp16 bits

  // 2 / count() * sum x x^T, full symmetric [cols, cols]; SpecError if count() == 0.
  std::vector<double> hessian() const;

 private:
  template <class Widen>
  void add_rows(size_t n, Widen widen);
  template <class Widen>
  void add_rows_f32(size_t n, Widen widen);

  size_t cols_;
  mutable std::mutex mu_;  // add() may run from several threads (it releases the GIL)
  uint64_t count_ = 0;
  std::vector<double> sum_;  // [cols, cols]; the lower triangle is meaningful
  std::vector<double> chunk_;
  std::vector<float> chunk32_;
  std::vector<float> partial_;  // fp16 rows' fp32 sum since the last flush (lower triangle)
  size_t partial_rows_ = 0;
  ThreadPool pool_;
};

}  // namespace hyperdex::quant
