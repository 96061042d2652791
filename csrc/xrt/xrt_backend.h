// Boards through the Xilinx Runtime: opening one as a `Board` (xrt/board.h) and
// listing what XRT sees. Implemented over libxrt_coreutil when hyperdex is built
// with XRT (xrt/libxrt_board.cpp), else by stubs that say how to get such a
// build (xrt/xrt_stub.cpp); the rest of hyperdex does not depend on XRT.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "xrt/board.h"

namespace hyperdex::board {

bool xrt_built();
std::string xrt_version();      // of the headers built against; "" without XRT
std::string xrt_library_dir();  // the folder libxrt_coreutil was loaded from; "" if unknown
// What to do to get a build with the XRT backend (the same text in every build).
std::string xrt_missing_message();

struct BoardInfo {
  uint32_t index = 0;
  std::string name;    // the platform (xilinx_u55c_gen3x16_xdma_base_3)
  std::string bdf;     // PCIe address
  bool offline = false;
  std::string memory;  // XRT's JSON description of the memory banks (may be empty)
  std::string error;   // a query that failed, in words
};

// The boards XRT enumerates (XRT's no-op device is not enumerated). DeviceError
// when XRT cannot be used (not built, XILINX_XRT unset).
std::vector<BoardInfo> list_xrt_boards();

// Opens board `index`; DeviceError saying why when there is none, XRT is
// missing, or XILINX_XRT is unset. With XCL_EMULATION_MODE=noop this is XRT's
// no-op device.
std::unique_ptr<Board> open_xrt_board(uint32_t index);

}  // namespace hyperdex::board
