// CRC-32 (IEEE 802.3, the polynomial zlib.crc32 uses), so files written by the
// C++ core and by Python check against each other.
#pragma once
#include <cstddef>
#include <cstdint>

namespace hyperdex {

// Continues a running CRC: crc32(b, crc32(a)) == crc32(a + b). Start with 0.
uint32_t crc32(const void* data, size_t n, uint32_t crc = 0);

}  // namespace hyperdex
