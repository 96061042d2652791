// Numeric kernels of the emulator: the board's arithmetic, done fast on a CPU.
//
// The MAC tree (docs/isa.md, "Numerics"): a dot product of length n is computed
// by 16 fp32 lanes; lane j accumulates elements i = j, j+16, j+32, ... in
// ascending order with a fused multiply-add (one rounding per step); elements
// past n count as zero. The 16 lane sums are then reduced pairwise:
//   s8[j] = acc[j] + acc[j+8]   (j < 8)
//   s4[j] = s8[j] + s8[j+4]     (j < 4)
//   s2[j] = s4[j] + s4[j+2]     (j < 2)
//   result = s2[0] + s2[1]
// Every implementation below (scalar, AVX2, AVX-512) gives bit-identical results
// for the same inputs: that is what makes the emulator a specification and not
// an approximation.
#pragma once
#include <cstddef>
#include <cstdint>

#include "common/thread_pool.h"
#include "isa/qmatrix.h"

namespace hyperdex::emu {

// A striped HBM region as the kernels see it: logical row r lives in channel
// r % num_channels at byte offset base + (r / num_channels) * row_bytes.
struct StripedRows {
  uint8_t* const* channels = nullptr;  // one base pointer per pseudo-channel
  uint32_t num_channels = 1;
  uint64_t base = 0;
  uint64_t row_bytes = 0;

  uint8_t* row(uint64_t r) const {
    return channels[r % num_channels] + base + (r / num_channels) * row_bytes;
  }
};

// One implementation level, chosen at run time from what the CPU supports.
struct Kernels {
  const char* name;  // "scalar", "avx2", "avx512"
  void (*half_to_float_n)(const uint16_t* src, float* dst, size_t n);
  void (*float_to_half_n)(const float* src, uint16_t* dst, size_t n);
  // MAC-tree dot product, both operands fp32.
  float (*dot_f32)(const float* a, const float* b, size_t n);
  // MAC-tree dot product, w in fp16 (widened exactly), x in fp32.
  float (*dot_f16)(const uint16_t* w, const float* x, size_t n);
  // acc[i] = fma(a, widen(v[i]), acc[i]) for i < n.
  void (*axpy_f16)(float a, const uint16_t* v, float* acc, size_t n);
  // A quantized weight row (isa/qmatrix.h) as fp32: out[i] = widen(w'[i]) for i < f.cols,
  // the exact dequantized fp16 values.
  void (*dequant_row)(const isa::QRowFormat& f, const uint8_t* row, float* out);
};

enum class KernelLevel { Scalar, Avx2, Avx512 };

// The best level this CPU supports (HYPERDEX_KERNELS=scalar|avx2|avx512 caps it).
const Kernels& best_kernels();
// A specific level; throws std::runtime_error if the CPU does not support it.
const Kernels& kernels_for(KernelLevel level);
bool cpu_supports(KernelLevel level);

// Attention's building blocks, bit for bit the per-row calls they replace:
// out[i] = kern.dot_f16(rows[i], x, k) for i < nrows, several rows per pass ...
void dot_f16_many(const Kernels& kern, const uint16_t* const* rows, size_t nrows, size_t k,
                  const float* x, float* out);
// ... and kern.axpy_f16(a[j], v[j], acc, n) for j < nrows in order, acc held in registers.
void axpy_f16_many(const Kernels& kern, const float* a, const uint16_t* const* v, size_t nrows,
                   float* acc, size_t n);

// Matrix engine, fp16 weights: for t < n and r < m,
//   y[t * y_stride + r] = dot(w.row(r)[0:k] as fp16, x[t * x_stride + 0 : k])
// in MAC-tree order. Rows are split across the pool's threads; each weight row
// is read once per call whatever n is (prefill streams the weights once).
void matmul_f16(const Kernels& kern, const StripedRows& w, size_t m, size_t k, const float* x,
                size_t x_stride, size_t n, float* y, size_t y_stride, ThreadPool& pool);

// Matrix engine, quantized weights (RegionKind::QMatrix rows of format `f`, k = f.cols):
// the same result as matmul_f16 over the dequantized matrix, bit for bit (each weight
// is dequantized to its exact fp16 value, then the same MAC tree), threaded the same way.
void matmul_q(const Kernels& kern, const StripedRows& w, const isa::QRowFormat& f, size_t m,
              const float* x, size_t x_stride, size_t n, float* y, size_t y_stride,
              ThreadPool& pool);

}  // namespace hyperdex::emu
