// The XRT backend's entry points in a build without XRT: each says how to get one.
#include "common/error.h"
#include "xrt/xrt_backend.h"

namespace hyperdex::board {

bool xrt_built() { return false; }
std::string xrt_version() { return {}; }
std::string xrt_library_dir() { return {}; }

std::vector<BoardInfo> list_xrt_boards() { throw DeviceError(xrt_missing_message()); }

std::unique_ptr<Board> open_xrt_board(uint32_t) { throw DeviceError(xrt_missing_message()); }

}  // namespace hyperdex::board
