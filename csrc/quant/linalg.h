// Dense fp64 linear algebra for GPTQ: a blocked matrix multiply-accumulate, a
// blocked Cholesky factorisation and a triangular inverse, threaded over a
// ThreadPool.
//
// Determinism: every output element is one chain of fused multiply-adds in a
// fixed order (ascending inner index), computed by one thread. Blocking, the
// number of threads and the SIMD level change only which element is computed
// when, never its value, so results are bit-identical on every machine.
#pragma once
#include <cstddef>
#include <memory>
#include <vector>

#include "common/thread_pool.h"

namespace hyperdex::quant {

enum class SimdLevel { Generic, Avx2, Avx512 };

// The level the emulator's kernels use on this CPU (HYPERDEX_KERNELS caps both).
SimdLevel best_simd_level();
bool simd_level_supported(SimdLevel level);

// Packing buffers of gemm_acc, kept between calls by one thread.
class GemmWorkspace {
 public:
  double* get(int which, size_t size);  // which: 0 = A, 1 = B

 private:
  struct Buffer {
    std::unique_ptr<double[]> data;
    size_t size = 0;
  };
  Buffer a_, b_;
};

// C[m x n] (row-major, ldc) +=/-= A * B, serial.
// A(i, p) = a[i * a_rs + p * a_cs] (any strides, so A may be a transposed view),
// B(p, j) = b[p * ldb + j]. Element (i, j) becomes
//   c = fma(+-A(i, 0), B(0, j), c); c = fma(+-A(i, 1), B(1, j), c); ...
// Pass a workspace when calling repeatedly (packing buffers are then reused).
void gemm_acc(SimdLevel level, size_t m, size_t n, size_t k, bool subtract, const double* a,
              size_t a_rs, size_t a_cs, const double* b, size_t ldb, double* c, size_t ldc,
              GemmWorkspace* ws = nullptr);

// B (k x n, row-major, ldb) packed once for many gemm_acc_packed calls (each
// then skips packing B; the same values as gemm_acc).
struct PackedB {
  size_t k = 0, n = 0;
  SimdLevel level = SimdLevel::Generic;  // the layout depends on the level
  std::vector<double> data;              // reused (grown only) across pack_b calls
};
void pack_b(SimdLevel level, size_t k, size_t n, const double* b, size_t ldb, PackedB& out,
            ThreadPool& pool);
// C[m x b.n] +=/-= A[m x b.k] * B, serial, at the level B was packed for.
void gemm_acc_packed(size_t m, bool subtract, const double* a, size_t a_rs, size_t a_cs,
                     const PackedB& b, double* c, size_t ldc, GemmWorkspace& ws);

// y[i] = fma(a, x[i], y[i]) for i < n.
void axpy(SimdLevel level, size_t n, double a, const double* x, double* y);

// sum over c < len of (w[c] - (q - z) * scale)^2, q = quantize_code(w[c], scale, bits) up
// to ties (w[c] times 1 / scale), z = 2^(bits-1), the product unrounded: the measure of
// the mse scale search. The same bits at every level.
double group_sq_error(SimdLevel level, const double* w, size_t len, double scale, int bits);

// fp32 Gram tile, serial: C[i, j] (row-major, ldc) += sum_p a[p * ld + i] * b[p * ld + j]
// for i < m, j < n, p < k (a and b: columns of the same k rows, ld apart). Element (i, j)
// is one fp32 FMA chain in p order, the same at every level.
void gram_acc_f32(SimdLevel level, size_t m, size_t n, size_t k, const float* a, const float* b,
                  size_t ld, float* c, size_t ldc);

// In place A = L L^T for the symmetric matrix A (n x n, row-major, lda; only the
// lower triangle is read). The lower triangle becomes L; the strict upper
// triangle is left with scratch values. Returns false (A then garbage) if a
// pivot is not positive and finite, i.e. A is not numerically positive definite.
bool cholesky_lower(double* a, size_t n, size_t lda, ThreadPool& pool, SimdLevel level);

// x = L^-1 for a lower triangular L with a positive diagonal (both n x n,
// row-major, lda / ldx; only the lower triangles are read / written; x's strict
// upper triangle is set to 0).
void invert_lower(const double* l, size_t n, size_t lda, double* x, size_t ldx, ThreadPool& pool,
                  SimdLevel level);

}  // namespace hyperdex::quant
