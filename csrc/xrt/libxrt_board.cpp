// The Board interface over XRT's native C++ API (libxrt_coreutil): xrt::device,
// xrt::xclbin, xrt::kernel, xrt::bo and xrt::run. Built only when CMake finds XRT.
#include <dlfcn.h>
#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <map>

#include "common/error.h"
#include "xrt/xrt_backend.h"

// XRT 2.13 (Debian, and AMD's packages of that time) keeps these in experimental/;
// later releases moved them under xrt/experimental/.
#include "xrt/xrt_bo.h"
#include "xrt/xrt_device.h"
#include "xrt/xrt_kernel.h"
#if __has_include("xrt/experimental/xrt_system.h")
#include "xrt/experimental/xrt_system.h"
#include "xrt/experimental/xrt_xclbin.h"
#else
#include "experimental/xrt_system.h"
#include "experimental/xrt_xclbin.h"
#endif
#if __has_include("version.h")
#include "version.h"
#define HYPERDEX_XRT_VERSION xrt_build_version
#else
#define HYPERDEX_XRT_VERSION ""
#endif

namespace hyperdex::board {
namespace {

bool noop_device() {
  const char* mode = std::getenv("XCL_EMULATION_MODE");
  return mode && std::string(mode) == "noop";
}

// XRT finds its driver library through XILINX_XRT and throws a terse error without it.
void require_xilinx_xrt() {
  if (std::getenv("XILINX_XRT")) return;
  const std::string dir = xrt_library_dir();
  throw DeviceError(
      "XILINX_XRT is not set; XRT needs it to find its driver libraries. Set it to the XRT "
      "install root (/opt/xilinx/xrt with AMD's packages)" +
      (dir.empty() ? std::string()
                   : "; with packages that put XRT in " + dir + " (Debian's), to a folder whose "
                     "lib/ links to " + dir) +
      ". hyperdex's Python runtime and hdex-smi set this up themselves");
}

template <typename F>
auto xrt_call(const std::string& step, F&& f) -> decltype(f()) {
  try {
    return f();
  } catch (const DeviceError&) {
    throw;
  } catch (const FormatError&) {
    throw;
  } catch (const std::exception& e) {
    throw DeviceError("XRT could not " + step + ": " + e.what());
  }
}

class XrtBoard final : public Board {
 public:
  explicit XrtBoard(uint32_t index) : index_(index) {
    device_ = xrt_call("open device " + std::to_string(index), [&] { return xrt::device(index); });
    try {
      name_ = device_.get_info<xrt::info::device::name>();
    } catch (const std::exception&) {
      name_.clear();  // XRT's no-op device answers no queries
    }
  }

  std::string describe() const override {
    std::string s = "XRT device " + std::to_string(index_);
    if (!name_.empty()) s += " (" + name_ + ")";
    if (noop_device()) s += " (XRT no-op device, XCL_EMULATION_MODE=noop: nothing computes)";
    return s;
  }

  void load_xclbin(const std::string& path, const std::string& kernel) override {
    xrt::xclbin xclbin = xrt_call("read the xclbin " + path, [&] { return xrt::xclbin(path); });
    uuid_ = xrt_call("load the xclbin " + path, [&] { return device_.load_xclbin(xclbin); });
    kernel_ = xrt_call("open the kernel '" + kernel + "'",
                       [&] { return xrt::kernel(device_, uuid_, kernel); });
  }

  int32_t group_id(uint32_t arg) override {
    return xrt_call("get the memory bank of argument " + std::to_string(arg),
                    [&] { return int32_t(kernel_.group_id(int(arg))); });
  }

  BufferHandle alloc(uint64_t bytes, int32_t group) override {
    const BufferHandle h = next_++;
    // Whole pages: for host-backed buffers (the no-op device, software emulation) XRT
    // hands the size as is to aligned_alloc(page size, size), and C11's aligned_alloc
    // wants a multiple of the alignment (glibc lets it pass, AddressSanitizer does not).
    // A board's buffers are page-granular anyway; callers only touch the bytes they asked for.
    const long ps = sysconf(_SC_PAGESIZE);
    const uint64_t page = ps > 0 ? uint64_t(ps) : 4096;
    const uint64_t size = bytes % page == 0 || bytes > UINT64_MAX - page ? bytes : (bytes / page + 1) * page;
    bos_[h] = xrt_call("allocate " + std::to_string(bytes) + " bytes in bank " + std::to_string(group),
                       [&] { return xrt::bo(device_, size_t(size), xrt::memory_group(group)); });
    return h;
  }

  void free(BufferHandle h) override { bos_.erase(h); }

  void write(BufferHandle h, uint64_t offset, const void* src, size_t bytes) override {
    xrt_call("write a buffer", [&] { bo(h).write(src, bytes, size_t(offset)); });
  }

  void read(BufferHandle h, uint64_t offset, void* dst, size_t bytes) override {
    xrt_call("read a buffer", [&] { bo(h).read(dst, bytes, size_t(offset)); });
  }

  void sync(BufferHandle h, SyncDirection dir, uint64_t offset, size_t bytes) override {
    const auto d = dir == SyncDirection::ToDevice ? XCL_BO_SYNC_BO_TO_DEVICE : XCL_BO_SYNC_BO_FROM_DEVICE;
    xrt_call("sync a buffer", [&] { bo(h).sync(d, bytes, size_t(offset)); });
  }

  RunHandle create_run() override {
    const RunHandle h = next_++;
    runs_[h] = xrt_call("create a run", [&] { return xrt::run(kernel_); });
    return h;
  }

  void free_run(RunHandle h) override { runs_.erase(h); }

  void set_buffer_arg(RunHandle r, uint32_t index, BufferHandle b) override {
    xrt_call("set kernel argument " + std::to_string(index), [&] { run(r).set_arg(int(index), bo(b)); });
  }

  void set_scalar_arg(RunHandle r, uint32_t index, uint64_t value, uint32_t bytes) override {
    xrt_call("set kernel argument " + std::to_string(index), [&] {
      if (bytes == 8) run(r).set_arg(int(index), value);
      else run(r).set_arg(int(index), uint32_t(value));
    });
  }

  void start(RunHandle r) override { xrt_call("start a run", [&] { run(r).start(); }); }

  RunState state(RunHandle r) override {
    xrt::run& x = run(r);
    const auto s = xrt_call("query a run", [&] { return x.state(); });
    // Let XRT finish its bookkeeping of an ended run; this returns at once.
    if (is_final(RunState(s))) xrt_call("complete a run", [&] { x.wait(); });
    return RunState(s);
  }

  RunState abort(RunHandle r) override {
    return RunState(xrt_call("abort a run", [&] { return run(r).abort(); }));
  }

 private:
  xrt::bo& bo(BufferHandle h) {
    auto it = bos_.find(h);
    if (it == bos_.end()) throw DeviceError("XRT backend: no buffer #" + std::to_string(h));
    return it->second;
  }
  xrt::run& run(RunHandle h) {
    auto it = runs_.find(h);
    if (it == runs_.end()) throw DeviceError("XRT backend: no run #" + std::to_string(h));
    return it->second;
  }

  uint32_t index_;
  std::string name_;
  xrt::device device_;
  xrt::uuid uuid_;
  xrt::kernel kernel_;
  // Runs go before buffers when the board is destroyed: a run holds its arguments.
  std::map<BufferHandle, xrt::bo> bos_;
  std::map<RunHandle, xrt::run> runs_;
  uint32_t next_ = 1;
};

}  // namespace

bool xrt_built() { return true; }
std::string xrt_version() { return HYPERDEX_XRT_VERSION; }

std::string xrt_library_dir() {
  Dl_info info{};
  // Any exported XRT function tells where libxrt_coreutil was loaded from.
  if (dladdr(reinterpret_cast<void*>(&xrt::system::enumerate_devices), &info) == 0 || !info.dli_fname)
    return {};
  std::string path = info.dli_fname;
  const size_t slash = path.rfind('/');
  return slash == std::string::npos ? std::string() : path.substr(0, slash);
}

std::vector<BoardInfo> list_xrt_boards() {
  require_xilinx_xrt();
  const size_t n = xrt_call("enumerate devices", [] { return xrt::system::enumerate_devices(); });
  std::vector<BoardInfo> boards;
  for (size_t i = 0; i < n; ++i) {
    BoardInfo b;
    b.index = uint32_t(i);
    try {
      xrt::device d(static_cast<unsigned int>(i));
      b.name = d.get_info<xrt::info::device::name>();
      b.bdf = d.get_info<xrt::info::device::bdf>();
      b.offline = d.get_info<xrt::info::device::offline>();
      b.memory = d.get_info<xrt::info::device::memory>();
    } catch (const std::exception& e) {
      b.error = e.what();
    }
    boards.push_back(std::move(b));
  }
  return boards;
}

std::unique_ptr<Board> open_xrt_board(uint32_t index) {
  require_xilinx_xrt();
  // The no-op device opens without being enumerated; real boards must be seen first,
  // so "none present" gets a message of its own instead of XRT's.
  if (!noop_device()) {
    const size_t n = xrt_call("enumerate devices", [] { return xrt::system::enumerate_devices(); });
    if (index >= n)
      throw DeviceError(
          "no LPU board found through XRT (XRT " + xrt_version() + " sees " + std::to_string(n) +
          " device" + (n == 1 ? "" : "s") + ", board index " + std::to_string(index) +
          " asked for): check that the board is installed and its xocl driver loaded (xbutil "
          "examine, hdex-smi), or use backend='emu'");
  }
  return std::make_unique<XrtBoard>(index);
}

}  // namespace hyperdex::board
