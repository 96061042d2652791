// The token sampler of a decode step, in C++: temperature, min-p, top-k and top-p over the
// device's logits, then one draw from what is left. It reproduces the host pipeline of
// hyperdex/transformers/generation.py (LogitsPipeline's sampling branch, then sample_token)
// operation for operation, float32 where that is float32 and float64 where it is float64,
// so a seeded generation picks the same tokens whichever side samples. The Python bindings
// run it right after Session::decode, so a sampled decode step is one call and the logits
// never become a NumPy array (issue 18).
#pragma once
#include <cstdint>
#include <stdexcept>

namespace hyperdex {

// What the sampler applies, as GenerationConfig spells it. The knobs are doubles because the
// host pipeline tests and combines them as Python floats (top_p's threshold is
// float32(1 - top_p) computed in double) and casts to float32 only where it does.
struct SamplingParams {
  double temperature = 1.0;  // finite, > 0; 1 leaves the scores as they are
  int32_t top_k = 0;         // >= 0; 0 is off
  double top_p = 1.0;        // (0, 1]; 1 is off
  double min_p = 0.0;        // [0, 1]; 0 is off
  bool min_p_first = false;  // vLLM's order: min-p before top-k (else after top-p, transformers')
};

// The logits hold NaN or +inf: what the device produced is broken. The bindings raise it as
// Python's FloatingPointError, as the host pipeline does.
struct InvalidLogits : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// Throws SpecError naming the first bad knob, or a `u` outside [0, 1).
void check_sampling(const SamplingParams& params, double u);

// The token drawn from logits[0, vocab) with the uniform draw `u` in [0, 1) (inverse CDF over
// the scores left after the warpers, so one draw per token). Throws InvalidLogits on NaN or
// +inf logits, SpecError on bad params, an empty vocab, or when every score is -inf.
int32_t sample_logits(const float* logits, uint32_t vocab, const SamplingParams& params, double u);

}  // namespace hyperdex
