// libFuzzer harness: the xclbin reader (board::parse_xclbin, behind read_xclbin, the XRT
// backend, the simulated board and _core.xclbin_info / check_xclbin): the axlf header and
// section table, MEM_TOPOLOGY, IP_LAYOUT, CONNECTIVITY, the EMBEDDED_METADATA XML scanner and
// the KEYVALUE_METADATA JSON scanner; then check_xclbin against the tiny preset (with and
// without a layout), as a board session does before it loads anything.
//
// Input: the xclbin file's bytes.
#include <cstddef>
#include <cstdint>
#include <vector>

#include "fuzz_common.h"
#include "xrt/xclbin.h"

using namespace hyperdex;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::vector<uint8_t> bytes(data, data + size);
  fuzz::expect_only_our_errors([&] {
    const board::XclbinInfo x = board::parse_xclbin(bytes, "fuzzed.xclbin");
    // What _core.xclbin_info hands to Python.
    for (const auto& k : x.kernels) {
      (void)x.kernel(k.name);
      for (const auto& a : k.args) (void)a.name.size();
    }
    const DevicePreset preset = fuzz::tiny_preset();
    fuzz::expect_only_our_errors([&] { board::check_xclbin(x, preset, "lpu"); });
    DeviceLayout layout;
    layout.channel_bytes.assign(preset.hbm_channels, 4096);
    layout.io_bytes = 4096;
    fuzz::expect_only_our_errors([&] { board::check_xclbin(x, preset, "lpu", &layout); });
  });
  return 0;
}
