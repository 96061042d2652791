#include "device/device.h"

#include <algorithm>

namespace hyperdex {

// Staged through host memory in pieces, so a large exchange needs no buffer of its size.
void Device::exchange(Device& next, uint32_t channel, uint64_t offset, size_t bytes) {
  constexpr size_t kPiece = size_t(8) << 20;
  std::vector<uint8_t> buf(std::min(bytes, kPiece));
  for (size_t done = 0; done < bytes;) {
    const size_t n = std::min(kPiece, bytes - done);
    read(channel, offset + done, buf.data(), n);
    next.write(channel, offset + done, buf.data(), n);
    done += n;
  }
}

}  // namespace hyperdex
