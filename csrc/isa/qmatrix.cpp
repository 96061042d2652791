#include "isa/qmatrix.h"

#include <algorithm>
#include <cstring>

#include "common/fp16.h"

namespace hyperdex::isa {

std::string QRowFormat::check() const {
  if (bits != 4 && bits != 8) return "weight bits must be 4 or 8, not " + std::to_string(bits);
  if (group == 0 || cols == 0)
    return "group size " + std::to_string(group) + " and input columns " + std::to_string(cols) +
           " must be positive";
  if ((uint64_t(group) * bits) % 8 != 0 || (uint64_t(cols) * bits) % 8 != 0)
    return "4-bit groups and rows must have an even size (group " + std::to_string(group) +
           ", " + std::to_string(cols) + " input columns)";
  return {};
}

uint16_t dequantize_code(uint32_t q, uint16_t scale, uint32_t bits) {
  const float d = float(int32_t(q) - int32_t(1u << (bits - 1)));
  return float_to_half(d * half_to_float(scale));  // exact product, one rounding
}

namespace {

// Calls fn(chunk offset, first group, groups in the chunk, elements in the chunk) for each
// chunk of a row.
template <class Fn>
void for_chunks(const QRowFormat& f, Fn&& fn) {
  const uint32_t groups = f.groups();
  for (uint32_t c = 0; c < f.chunks(); ++c) {
    const uint32_t g0 = c * kQGroupsPerChunk;
    const uint32_t ng = std::min(kQGroupsPerChunk, groups - g0);
    const size_t n = std::min<size_t>(size_t(ng) * f.group, size_t(f.cols) - size_t(g0) * f.group);
    fn(f.chunk_offset(c), g0, ng, n);
  }
}

}  // namespace

void pack_qrow(const QRowFormat& f, const uint8_t* codes, const uint16_t* scales, uint8_t* out) {
  std::memset(out, 0, f.data_bytes());
  for_chunks(f, [&](uint64_t at, uint32_t g0, uint32_t ng, size_t n) {
    std::memcpy(out + at, scales + g0, size_t(ng) * 2);
    uint8_t* dst = out + at + kQScaleLineBytes;
    const uint8_t* src = codes + size_t(g0) * f.group;
    if (f.bits == 8) {
      std::memcpy(dst, src, n);
    } else {
      for (size_t i = 0; i < n; ++i) dst[i / 2] |= uint8_t((src[i] & 0xF) << ((i & 1) * 4));
    }
  });
}

void unpack_qrow(const QRowFormat& f, const uint8_t* row, uint8_t* codes, uint16_t* scales) {
  for_chunks(f, [&](uint64_t at, uint32_t g0, uint32_t ng, size_t n) {
    std::memcpy(scales + g0, row + at, size_t(ng) * 2);
    const uint8_t* src = row + at + kQScaleLineBytes;
    uint8_t* dst = codes + size_t(g0) * f.group;
    if (f.bits == 8) {
      std::memcpy(dst, src, n);
    } else {
      for (size_t i = 0; i < n; ++i) dst[i] = uint8_t((src[i / 2] >> ((i & 1) * 4)) & 0xF);
    }
  });
}

void dequantize_qrow(const QRowFormat& f, const uint8_t* row, uint16_t* out) {
  for_chunks(f, [&](uint64_t at, uint32_t g0, uint32_t ng, size_t) {
    const uint8_t* codes = row + at + kQScaleLineBytes;
    for (uint32_t g = 0; g < ng; ++g) {
      uint16_t scale;
      std::memcpy(&scale, row + at + size_t(g) * 2, 2);
      for (uint32_t i = 0; i < f.group_len(g0 + g); ++i) {
        const size_t e = size_t(g) * f.group + i;  // element inside the chunk
        const uint32_t q = f.bits == 8 ? codes[e] : (codes[e / 2] >> ((e & 1) * 4)) & 0xF;
        out[size_t(g0 + g) * f.group + i] = dequantize_code(q, scale, f.bits);
      }
    }
  });
}

}  // namespace hyperdex::isa
