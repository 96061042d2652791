// The quantized weight row (RegionKind::QMatrix, ISA v3; docs/formats.md draws it).
//
// One output row of a [rows, cols] matrix quantized per group of `group` consecutive
// input columns (the last group is shorter when `group` does not divide `cols`, as in
// GPTQ) to unsigned `bits`-bit codes with zero point z = 2^(bits-1) and one
// fp16 scale per group. The row is cut into chunks of 16 groups (the last chunk may
// hold fewer); each chunk is a 32-byte line of its 16 fp16 scales (unused slots 0)
// followed by the chunk's codes packed along the input: int4 two per byte, element
// 2j in the low nibble of byte j; int8 one per byte. The row is then zero-padded
// to a multiple of 64 bytes by the region. A device streams a chunk's scales just
// before the codes they apply to, so it never buffers more than one line of scales.
//
// The value a code stands for is w' = fp16(float(q - z) * float(scale)), rounded to
// nearest even once (the product is exact in fp32): quantized MATMUL is the fp16
// MATMUL over these values (docs/isa.md).
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

namespace hyperdex::isa {

constexpr uint32_t kQGroupsPerChunk = 16;
constexpr uint32_t kQScaleLineBytes = kQGroupsPerChunk * 2;

struct QRowFormat {
  uint32_t bits = 0;   // 4 or 8
  uint32_t group = 0;  // input columns per scale (the last group may be shorter)
  uint32_t cols = 0;   // input columns (k)

  uint32_t zero_point() const { return 1u << (bits - 1); }
  // In 64 bits: cols + group - 1 may not fit 32 (the results do).
  uint32_t groups() const { return uint32_t((uint64_t(cols) + group - 1) / group); }
  // Input columns of group g < groups(): `group`, except a shorter last group. No
  // division: the kernels ask for it in their inner loops.
  uint32_t group_len(uint32_t g) const {
    const uint64_t left = uint64_t(cols) - uint64_t(g) * group;
    return uint32_t(left < group ? left : group);
  }
  uint32_t chunks() const {
    return uint32_t((uint64_t(groups()) + kQGroupsPerChunk - 1) / kQGroupsPerChunk);
  }
  // Bytes of the codes of one group.
  uint64_t group_code_bytes() const { return uint64_t(group) * bits / 8; }
  // Byte offset of chunk c inside the row (chunks before it are all full; only the row's
  // last group can be short).
  uint64_t chunk_offset(uint32_t c) const {
    return uint64_t(c) * (kQScaleLineBytes + kQGroupsPerChunk * group_code_bytes());
  }
  // Where group g's scale and codes lie inside the row.
  uint64_t scale_offset(uint32_t g) const {
    return chunk_offset(g / kQGroupsPerChunk) + (g % kQGroupsPerChunk) * 2;
  }
  uint64_t codes_offset(uint32_t g) const {
    return chunk_offset(g / kQGroupsPerChunk) + kQScaleLineBytes +
           (g % kQGroupsPerChunk) * group_code_bytes();
  }
  // Bytes the row's data takes, before the region's padding to 64.
  uint64_t data_bytes() const {
    return uint64_t(chunks()) * kQScaleLineBytes + uint64_t(cols) * bits / 8;
  }
  // Empty when the format is usable, else why not.
  std::string check() const;
};

// The fp16 bits code q stands for (see above).
uint16_t dequantize_code(uint32_t q, uint16_t scale, uint32_t bits);

// codes: cols bytes (one code each, unpacked); scales: groups() fp16 values.
// Writes data_bytes() bytes at out (the caller zero-pads the rest of the row).
void pack_qrow(const QRowFormat& f, const uint8_t* codes, const uint16_t* scales, uint8_t* out);
// The inverse of pack_qrow.
void unpack_qrow(const QRowFormat& f, const uint8_t* row, uint8_t* codes, uint16_t* scales);
// The row's cols values as fp16 bits, each the exact w' of its code.
void dequantize_qrow(const QRowFormat& f, const uint8_t* row, uint16_t* out);

}  // namespace hyperdex::isa
