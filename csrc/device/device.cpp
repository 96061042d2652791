#include "device/device.h"

#include <algorithm>

#include "common/error.h"

namespace hyperdex {

void check_layout(const DeviceLayout& layout, const DevicePreset& preset, const std::string& what) {
  if (layout.channel_bytes.size() != preset.hbm_channels)
    throw DeviceError("layout has " + std::to_string(layout.channel_bytes.size()) + " channels, " +
                      what + " has " + std::to_string(preset.hbm_channels));
  for (uint64_t b : layout.channel_bytes)
    if (b > preset.hbm_channel_bytes)
      throw CapacityError("a pseudo-channel of " + std::to_string(b) + " bytes exceeds the " +
                          preset.name + "'s " + std::to_string(preset.hbm_channel_bytes));
  if (layout.io_base + layout.io_bytes > layout.channel_bytes[0])
    throw DeviceError("the I/O region lies outside pseudo-channel 0");
}

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
