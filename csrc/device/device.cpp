#include "device/device.h"

#include <algorithm>

#include "common/bounds.h"
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
  if (!fits(layout.io_base, layout.io_bytes, layout.channel_bytes[0]))
    throw DeviceError("the I/O region (io_base " + std::to_string(layout.io_base) + ", io_bytes " +
                      std::to_string(layout.io_bytes) + ") lies outside pseudo-channel 0 (" +
                      std::to_string(layout.channel_bytes[0]) + " bytes)");
  // Its buffers hold int32 ids and fp32 logits (and operands are aligned to their elements
  // inside it), so the segment starts on a 64-byte line, as the memory plan places it.
  if (layout.io_base % 64 != 0)
    throw DeviceError("the I/O region (io_base " + std::to_string(layout.io_base) +
                      ") does not start on a 64-byte boundary");
  // The kernel interface passes io_bytes as 32 bits (xrt/kernel_abi.h); operands address
  // under 2^31 bytes of it anyway.
  if (layout.io_bytes > UINT32_MAX)
    throw DeviceError("the I/O region of " + std::to_string(layout.io_bytes) +
                      " bytes exceeds 4 GiB");
}

std::string striped_region_problem(uint64_t base, uint64_t row_bytes, uint64_t rows,
                                   uint32_t channels, const DeviceLayout& layout) {
  for (uint64_t c = 0; c < channels && c < rows; ++c) {
    // Rows c, c + C, c + 2C, ... lie in channel c: ceil((rows - c) / C) of them.
    const uint64_t rows_here = (rows - c - 1) / channels + 1;
    const Checked bytes = Checked(rows_here) * row_bytes;
    if (c >= layout.channel_bytes.size())
      return "it stripes over " + std::to_string(channels) + " pseudo-channels, the layout has " +
             std::to_string(layout.channel_bytes.size());
    if (!fits(Checked(base), bytes, layout.channel_bytes[c]))
      return "base " + std::to_string(base) + " + " + std::to_string(rows_here) + " rows of " +
             std::to_string(row_bytes) + " bytes lies outside pseudo-channel " + std::to_string(c) +
             " (" + std::to_string(layout.channel_bytes[c]) + " bytes)";
  }
  return {};
}

// Staged through host memory in pieces, so a large exchange needs no buffer of its size.
void Device::exchange(Device& next, uint32_t channel, uint64_t offset, size_t bytes) {
  if (!(Checked(offset) + bytes).ok())
    throw DeviceError("exchange of " + std::to_string(bytes) + " bytes at offset " +
                      std::to_string(offset) + " runs past 2^64");
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
