// fp16 <-> fp32 conversion against references computed independently: halves
// decoded with ldexp, floats rounded with double arithmetic and nearbyint, and
// (where the CPU has it) the F16C instructions themselves.
#include <gtest/gtest.h>

#include <algorithm>
#include <cfenv>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>

#include "common/fp16.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define HX_TEST_X86 1
#endif

namespace {

using hyperdex::float_to_half;
using hyperdex::half_to_float;

[[maybe_unused]] uint32_t bits(float f) {  // for the F16C test
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}

float from_bits(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

bool half_is_nan(uint16_t h) { return (h & 0x7c00) == 0x7c00 && (h & 0x3ff) != 0; }

// IEEE binary16 decoded with ldexp (NaN excluded).
double decode_half(uint16_t h) {
  const int e = (h >> 10) & 0x1f, m = h & 0x3ff;
  double v;
  if (e == 0x1f) {
    v = INFINITY;
  } else if (e == 0) {
    v = std::ldexp(m, -24);
  } else {
    v = std::ldexp(1024 + m, e - 25);
  }
  return (h & 0x8000) ? -v : v;
}

// Round a finite or infinite float to the nearest binary16 value (ties to
// even) in double arithmetic; returns the value, sign included.
double round_to_half(float f) {
  const double d = f;
  const double a = std::fabs(d);
  double r;
  if (a >= 65520.0) {  // 65504 + half an ulp (32) / 2: the tie goes to even, i.e. to inf
    r = INFINITY;
  } else {
    int e;
    std::frexp(a, &e);                                 // a = mant * 2^e, mant in [0.5, 1)
    const int ulp_exp = std::max(e - 1, -14) - 10;     // spacing of halves near a
    const double q = std::ldexp(a, -ulp_exp);          // exact: f has 24 bits
    r = std::ldexp(std::nearbyint(q), ulp_exp);        // FE_TONEAREST: ties to even
  }
  return std::signbit(d) ? -r : r;
}

void expect_rounds_like_reference(float f) {
  const uint16_t h = float_to_half(f);
  const double want = round_to_half(f);
  ASSERT_FALSE(half_is_nan(h)) << std::hexfloat << f;
  ASSERT_EQ(decode_half(h), want) << std::hexfloat << f << " -> 0x" << std::hex << h;
  ASSERT_EQ(std::signbit(want), (h & 0x8000) != 0) << std::hexfloat << f;
}

TEST(Fp16, AllHalvesWidenExactlyAndRoundTrip) {
  for (uint32_t i = 0; i < 65536; ++i) {
    const uint16_t h = static_cast<uint16_t>(i);
    const float f = half_to_float(h);
    if (half_is_nan(h)) {
      ASSERT_TRUE(std::isnan(f)) << std::hex << h;
      const uint16_t back = float_to_half(f);
      ASSERT_TRUE(half_is_nan(back)) << std::hex << h;
      ASSERT_EQ(back & 0x8000, h & 0x8000) << std::hex << h;
      ASSERT_EQ(back, h | 0x200) << std::hex << h;  // payload kept, quiet bit set
      continue;
    }
    ASSERT_EQ(static_cast<double>(f), decode_half(h)) << std::hex << h;
    ASSERT_EQ(std::signbit(f), (h & 0x8000) != 0) << std::hex << h;
    ASSERT_EQ(float_to_half(f), h) << std::hex << h;
  }
}

TEST(Fp16, SpecialValues) {
  EXPECT_EQ(float_to_half(0.0f), 0x0000);
  EXPECT_EQ(float_to_half(-0.0f), 0x8000);
  EXPECT_EQ(float_to_half(1.0f), 0x3c00);
  EXPECT_EQ(float_to_half(-2.0f), 0xc000);
  EXPECT_EQ(float_to_half(65504.0f), 0x7bff);
  EXPECT_EQ(float_to_half(65519.99f), 0x7bff);
  EXPECT_EQ(float_to_half(65520.0f), 0x7c00);  // tie between 65504 (odd) and "65536": inf
  EXPECT_EQ(float_to_half(-65520.0f), 0xfc00);
  EXPECT_EQ(float_to_half(1e10f), 0x7c00);
  EXPECT_EQ(float_to_half(INFINITY), 0x7c00);
  EXPECT_EQ(float_to_half(-INFINITY), 0xfc00);
  EXPECT_TRUE(half_is_nan(float_to_half(NAN)));
  EXPECT_EQ(float_to_half(std::ldexp(1.0f, -14)), 0x0400);  // smallest normal
  EXPECT_EQ(float_to_half(std::ldexp(1.0f, -24)), 0x0001);  // smallest subnormal
  EXPECT_EQ(float_to_half(-std::ldexp(1.0f, -24)), 0x8001);
  EXPECT_EQ(float_to_half(std::ldexp(1.0f, -25)), 0x0000);  // tie with 0: even
  EXPECT_EQ(float_to_half(-std::ldexp(1.0f, -25)), 0x8000);
  EXPECT_EQ(float_to_half(std::nextafter(std::ldexp(1.0f, -25), 1.0f)), 0x0001);
  EXPECT_EQ(float_to_half(std::ldexp(1.5f, -24)), 0x0002);  // tie 1|2: even
  EXPECT_EQ(float_to_half(std::ldexp(2.5f, -24)), 0x0002);  // tie 2|3: even
  EXPECT_EQ(float_to_half(std::ldexp(1023.5f, -24)), 0x0400);  // tie rounds up into normals
  EXPECT_EQ(float_to_half(1.0f + std::ldexp(1.0f, -11)), 0x3c00);      // tie: even
  EXPECT_EQ(float_to_half(1.0f + 3 * std::ldexp(1.0f, -11)), 0x3c02);  // tie: even
  EXPECT_EQ(float_to_half(std::nextafter(1.0f + std::ldexp(1.0f, -11), 2.0f)), 0x3c01);
  EXPECT_EQ(float_to_half(2047.5f), 0x6800);  // tie 2047 (odd) | 2048: 2048
  EXPECT_EQ(half_to_float(0x0001), std::ldexp(1.0f, -24));
  EXPECT_EQ(half_to_float(0x03ff), std::ldexp(1023.0f, -24));
  EXPECT_EQ(half_to_float(0x7bff), 65504.0f);
  EXPECT_EQ(half_to_float(0x7c00), INFINITY);
  EXPECT_EQ(half_to_float(0xfc00), -INFINITY);
}

TEST(Fp16, RoundingMatchesDoubleReference) {
  ASSERT_EQ(std::fegetround(), FE_TONEAREST);
  // Exhaustive where the cases are: zero, subnormal halves, the normal range
  // boundaries and the overflow threshold.
  const std::pair<uint32_t, uint32_t> ranges[] = {
      {0x00000000u, 0x00001000u},  // float subnormals -> 0
      {0x32f00000u, 0x33400000u},  // around 2^-25, half the smallest subnormal half
      {0x35000000u, 0x35100000u},  // subnormal halves
      {0x38700000u, 0x38900000u},  // around 2^-14, the smallest normal half
      {0x3f7f0000u, 0x3f810000u},  // around 1.0
      {0x477f0000u, 0x47810000u},  // around the overflow threshold 65520
  };
  for (const auto& [lo, hi] : ranges) {
    for (uint32_t u = lo; u < hi; ++u) {
      expect_rounds_like_reference(from_bits(u));
      expect_rounds_like_reference(from_bits(u | 0x80000000u));
      if (::testing::Test::HasFatalFailure()) return;
    }
  }
  // Strided over every finite float and inf, both signs.
  for (uint64_t u = 0; u <= 0x7f800000u; u += 97) {
    expect_rounds_like_reference(from_bits(static_cast<uint32_t>(u)));
    expect_rounds_like_reference(from_bits(static_cast<uint32_t>(u) | 0x80000000u));
    if (::testing::Test::HasFatalFailure()) return;
  }
}

TEST(Fp16, NanNarrowingKeepsTopPayloadBitsAndQuiets) {
  const uint32_t nans[] = {0x7f800001u, 0x7fc00000u, 0xffc00001u, 0x7f802000u, 0x7fffffffu};
  for (uint32_t u : nans) {
    const uint16_t h = float_to_half(from_bits(u));
    EXPECT_TRUE(half_is_nan(h)) << std::hex << u;
    EXPECT_EQ(h, ((u >> 16) & 0x8000) | 0x7e00 | ((u >> 13) & 0x3ff)) << std::hex << u;
  }
}

#ifdef HX_TEST_X86
__attribute__((target("f16c"))) uint16_t f16c_narrow(float f) {
  return static_cast<uint16_t>(_cvtss_sh(f, _MM_FROUND_TO_NEAREST_INT));
}
__attribute__((target("f16c"))) float f16c_widen(uint16_t h) { return _cvtsh_ss(h); }

TEST(Fp16, MatchesF16cBitForBit) {
  __builtin_cpu_init();
  if (!__builtin_cpu_supports("f16c")) GTEST_SKIP() << "no F16C on this CPU";
  for (uint32_t i = 0; i < 65536; ++i) {
    const uint16_t h = static_cast<uint16_t>(i);
    ASSERT_EQ(bits(half_to_float(h)), bits(f16c_widen(h))) << std::hex << h;
  }
  std::mt19937 rng(1234);
  for (int i = 0; i < 4000000; ++i) {
    uint32_t u = rng();
    // Half the samples near the half range, where rounding is interesting.
    if (i & 1) u = (u & 0x807fffffu) | ((0x66u + (u >> 24) % 42u) << 23);
    const float f = from_bits(u);
    ASSERT_EQ(float_to_half(f), f16c_narrow(f)) << std::hex << u;
  }
}
#endif

}  // namespace
