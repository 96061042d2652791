// IEEE-754 binary16 <-> binary32 conversion, scalar and exact.
// fp16 values are stored as uint16_t everywhere in the core (the board's format).
//
// Integer arithmetic only, so the result never depends on the FPU mode or on
// compiler flags; inline, since the emulator and the quantizer convert per element.
//
// NaNs follow x86 F16C (vcvtph2ps / vcvtps2ph) bit for bit, so that the scalar
// kernels and the SIMD ones agree even on NaN payloads: widening keeps the
// payload and sets the quiet bit; narrowing keeps the top 10 payload bits and
// sets the quiet bit.
#pragma once
#include <cstdint>
#include <cstring>

namespace hyperdex {
namespace fp16_detail {

inline uint32_t float_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return u;
}

inline float bits_float(uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

}  // namespace fp16_detail

inline float half_to_float(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1fu;
  uint32_t mant = h & 0x3ffu;
  if (exp == 0x1f) {  // inf, or NaN (quieted)
    return fp16_detail::bits_float(sign | 0x7f800000u | (mant << 13) |
                                   (mant != 0 ? 0x00400000u : 0u));
  }
  if (exp != 0) {  // normal: rebias 15 -> 127
    return fp16_detail::bits_float(sign | ((exp + 112u) << 23) | (mant << 13));
  }
  if (mant == 0) return fp16_detail::bits_float(sign);  // signed zero
  // Subnormal m * 2^-24: normalise so that the leading 1 lands on bit 10.
  uint32_t e = 113;  // biased fp32 exponent of 2^-14 (the smallest normal half)
  while ((mant & 0x400u) == 0) {
    mant <<= 1;
    --e;
  }
  return fp16_detail::bits_float(sign | (e << 23) | ((mant & 0x3ffu) << 13));
}

inline uint16_t float_to_half(float f) {
  const uint32_t x = fp16_detail::float_bits(f);
  const uint16_t sign = static_cast<uint16_t>((x >> 16) & 0x8000u);
  const uint32_t ax = x & 0x7fffffffu;
  if (ax > 0x7f800000u) {  // NaN: quiet, top payload bits kept
    return static_cast<uint16_t>(sign | 0x7e00u | ((ax >> 13) & 0x3ffu));
  }
  if (ax >= 0x477ff000u) {  // >= 65520 (max half + half an ulp, a tie to odd) and inf
    return static_cast<uint16_t>(sign | 0x7c00u);
  }
  if (ax >= 0x38800000u) {  // normal half range, >= 2^-14
    // Round to nearest even on the 13 dropped bits; a carry into the exponent
    // field is the correct rounded result (up to 0x7bff here, since < 65520).
    const uint32_t rounded = ax + 0x0fffu + ((ax >> 13) & 1u);
    return static_cast<uint16_t>(sign | ((rounded - (112u << 23)) >> 13));
  }
  if (ax <= 0x33000000u) {  // <= 2^-25: rounds to zero (2^-25 itself is a tie to even)
    return sign;
  }
  // Subnormal half: round(m24 * 2^(e - 150) / 2^-24) = m24 >> (126 - e), RNE.
  const uint32_t e = ax >> 23;  // 102 .. 112
  const uint32_t m24 = (ax & 0x7fffffu) | 0x800000u;
  const uint32_t shift = 126u - e;  // 14 .. 24
  uint32_t q = m24 >> shift;
  const uint32_t rem = m24 & ((1u << shift) - 1u);
  const uint32_t half = 1u << (shift - 1u);
  if (rem > half || (rem == half && (q & 1u) != 0)) ++q;  // may carry into 0x400: smallest normal
  return static_cast<uint16_t>(sign | q);
}

}  // namespace hyperdex
