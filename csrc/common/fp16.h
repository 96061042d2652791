// IEEE-754 binary16 <-> binary32 conversion, scalar and exact.
// fp16 values are stored as uint16_t everywhere in the core (the board's format).
#pragma once
#include <cstdint>

namespace hyperdex {

// Exact widening (every fp16 value, subnormals, infinities and NaNs included).
float half_to_float(uint16_t h);
// Round to nearest, ties to even; overflow gives +/-inf; NaN stays NaN (quiet).
uint16_t float_to_half(float f);

}  // namespace hyperdex
