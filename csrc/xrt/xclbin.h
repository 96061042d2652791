// Reading and writing xclbin files (the AMD/Xilinx container of a bitstream and
// its metadata) without XRT: the layout is the one XRT's xclbin.h documents
// (an `axlf` header, section headers, sections). The reader checks that an
// xclbin holds the LPU kernel with the arguments kernel_abi.h lists, connected
// to HBM banks, for the programs' versions and device preset. The writer makes
// a stub xclbin (no bitstream): the metadata XRT's no-op device and the
// simulated board need, described in docs/xrt.md.
#pragma once
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "device/device.h"
#include "spec/model_spec.h"

namespace hyperdex::board {

// Memory types and section kinds used here (values from xclbin.h).
constexpr uint8_t kMemHbm = 6;

struct XclbinBank {
  std::string tag;       // "HBM[3]"
  uint8_t type = 0;      // xclbin.h MEM_TYPE
  bool used = false;
  uint64_t bytes = 0;
  uint64_t base = 0;
};

struct XclbinArg {
  std::string name;
  int64_t id = -1;      // argument index (-1: none)
  bool global = false;  // a pointer to device memory (addressQualifier 1)
  uint64_t offset = 0;  // in the control register map
  uint64_t size = 0;
  std::string type;
  int32_t bank = -1;    // memory bank of a global argument, from CONNECTIVITY
};

struct XclbinKernel {
  std::string name;
  std::vector<XclbinArg> args;        // sorted by id
  std::vector<std::string> instances;  // compute units in IP_LAYOUT ("lpu_1")
};

struct XclbinInfo {
  std::string what;  // the file, for messages
  std::string uuid;  // 32 hex digits
  std::string platform;  // m_platformVBNV
  std::vector<XclbinBank> banks;
  std::vector<XclbinKernel> kernels;
  std::map<std::string, std::string> metadata;  // KEYVALUE_METADATA

  const XclbinKernel* kernel(const std::string& name) const;
};

// FormatError when the bytes are not a well-formed xclbin.
XclbinInfo parse_xclbin(const std::vector<uint8_t>& bytes, const std::string& what);
XclbinInfo read_xclbin(const std::string& path);

// Checks that `x` runs programs compiled for `preset` through `kernel`: the
// metadata's versions and preset, the kernel's arguments in kernel_abi.h's order,
// each HBM argument on its own HBM bank (at least as large as `layout` needs,
// when given). FormatError naming the first difference.
void check_xclbin(const XclbinInfo& x, const DevicePreset& preset, const std::string& kernel,
                  const DeviceLayout* layout = nullptr);

// A stub xclbin for `preset`: one HBM bank per pseudo-channel, the kernel and one
// compute unit, its arguments, connectivity and the hyperdex metadata; no
// bitstream. `metadata` entries override the defaults (tests make mismatches).
std::vector<uint8_t> make_stub_xclbin(const DevicePreset& preset,
                                      const std::string& kernel = "lpu",
                                      const std::map<std::string, std::string>& metadata = {});
void write_stub_xclbin(const std::string& path, const DevicePreset& preset,
                       const std::string& kernel = "lpu",
                       const std::map<std::string, std::string>& metadata = {});

}  // namespace hyperdex::board
