// Weight quantization for the LPU's W4A16 / W8A16 formats: GPTQ (Frantar et
// al., "GPTQ: Accurate Post-Training Quantization for Generative Pre-trained
// Transformers", 2022), round-to-nearest, and the exact dequantization.
//
// Numbers (shared with the device and every reference, docs in the plan):
// symmetric per-group codes, zero point z = 2^(b-1), one fp16 scale per group of
// g consecutive input columns:
//   scale = fp16(float(2 * absmax / (2^b - 1)))   (a zero scale becomes 1.0)
//   q     = clamp(round_half_even(w / scale) + z, 0, 2^b - 1)
//   w'    = fp16(float(q - z) * float(scale))      (the product is exact in fp32)
// GPTQ runs in fp64 and feeds back the error against w', the value the device
// computes with. Results are bit-identical whatever the thread count or CPU.
#pragma once
#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "common/thread_pool.h"

namespace hyperdex::quant {

struct QuantOptions {
  int bits = 4;                // 4 or 8
  int64_t group_size = 128;    // input columns per scale; -1 = one group per row
  bool sym = true;             // only symmetric quantization exists on the device
  bool desc_act = false;       // GPTQ: visit columns by decreasing diag(H)
  bool static_groups = false;  // GPTQ: scales from the original weights (required by desc_act)
  // GPTQ: visit whole groups by decreasing max diag(H), each group's columns by
  // decreasing diag(H) (GPTQModel's group-aware reordering); scales stay dynamic.
  bool act_group_aware = false;
  double damp_percent = 0.01;  // GPTQ: damping as a fraction of mean(diag(H))
  int64_t block_size = 128;    // GPTQ: columns per lazy batch update
  // > 0: each group's scale is the best of kShrinkSteps shrunk ones by sum |w - w'|^mse
  // (GPTQ's "mse" scale search; w' unrounded to fp16; 2 is fast, other norms use
  // std::pow); 0: from the group's largest magnitude.
  double mse = 0.0;
};

// The shrink search of QuantOptions::mse tries absmax * (1 - i / 100) for i < kShrinkSteps.
constexpr int kShrinkSteps = 20;

struct QuantResult {
  size_t rows = 0, cols = 0, groups = 0;
  std::vector<uint8_t> codes;    // [rows, cols], original column order
  std::vector<uint16_t> scales;  // fp16 bits, [rows, groups]
  // GPTQ: sum over elements of (w - w')^2 / Hinv_jj^2 / 2 (what the reference
  // reports); RTN: sum of (w - w')^2.
  double loss = 0.0;
  double damp = 0.0;  // GPTQ: damping added to diag(H) in the attempt that worked
  int retries = 0;    // GPTQ: attempts that failed to factor before it (damping x10 each)
};

// Called now and then on the calling thread; returning true stops the work
// with hyperdex::Interrupted.
using InterruptCheck = std::function<bool()>;

// Fixed retry policy: after a failed factorisation the damping is multiplied by
// 10, at most this many times.
constexpr int kMaxDampRetries = 4;

// Columns per group (group_size, or cols for -1) after checking the options
// against a layer with `cols` input columns; throws SpecError naming `name`.
size_t checked_group_cols(const QuantOptions& opt, size_t cols, const std::string& name);

// GPTQ of w (fp32 [rows, cols], row-major: out x in, as nn.Linear) with the
// Hessian h (fp64 [cols, cols], row-major, only the lower triangle is read).
QuantResult gptq_quantize(const float* w, size_t rows, size_t cols, const double* h,
                          const QuantOptions& opt, const std::string& name, ThreadPool& pool,
                          const InterruptCheck& interrupted = {});

// Round to nearest with the same scales as GPTQ's first pass (no Hessian).
QuantResult rtn_quantize(const float* w, size_t rows, size_t cols, const QuantOptions& opt,
                         const std::string& name, ThreadPool& pool);

// The exact w' (fp16 bits, [rows, cols]) of codes [rows, cols] and fp16 scales
// [rows, groups]. Throws SpecError for a code above 2^bits - 1.
std::vector<uint16_t> dequantize(const uint8_t* codes, const uint16_t* scales, size_t rows,
                                 size_t cols, int bits, int64_t group_size, ThreadPool& pool);

// The scale of a group whose largest magnitude is absmax (fp16 bits).
uint16_t group_scale(double absmax, int bits);
// The scale of the group w[0, len) under opt (absmax, or opt.mse's shrink search).
uint16_t choose_scale(const double* w, size_t len, const QuantOptions& opt);
// The code of w with the fp16 scale `scale` (as a double).
uint8_t quantize_code(double w, double scale, int bits);
// w' of a code (fp16 bits).
uint16_t dequantize_code(uint8_t q, uint16_t scale, int bits);

}  // namespace hyperdex::quant
