// The board backend: a Device that runs the LPU kernel of an xclbin on a board.
// `Board` is the slice of XRT's native API the backend uses (xrt::device,
// xrt::xclbin, xrt::kernel, xrt::bo, xrt::run), one method per XRT call, so the
// backend's logic (buffer plan, syncs, run arguments, status, timeouts) is the
// same code over the real libxrt (xrt/libxrt_board.cpp) and over SimBoard
// (xrt/sim_board.h), which tests it everywhere. docs/xrt.md describes both.
#pragma once
#include <array>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "device/device.h"
#include "spec/model_spec.h"
#include "xrt/kernel_abi.h"

namespace hyperdex::board {

enum class SyncDirection { ToDevice, FromDevice };

// ERT command states, as xrt::run::state() reports them (ert.h values).
enum class RunState : uint32_t {
  New = 1,
  Queued = 2,
  Running = 3,
  Completed = 4,
  Error = 5,
  Abort = 6,
  Submitted = 7,
  Timeout = 8,
  NoResponse = 9,
};
bool is_final(RunState s);
const char* run_state_name(RunState s);

using BufferHandle = uint32_t;
using RunHandle = uint32_t;

class Board {
 public:
  virtual ~Board() = default;
  virtual std::string describe() const = 0;
  // xrt::xclbin(path), xrt::device::load_xclbin, xrt::kernel(device, uuid, kernel).
  virtual void load_xclbin(const std::string& path, const std::string& kernel) = 0;
  // xrt::kernel::group_id: the memory bank argument `arg` is connected to.
  virtual int32_t group_id(uint32_t arg) = 0;
  // xrt::bo(device, bytes, group): device memory with a host-side copy.
  virtual BufferHandle alloc(uint64_t bytes, int32_t group) = 0;
  virtual void free(BufferHandle bo) = 0;
  // xrt::bo::write / read: the host-side copy only.
  virtual void write(BufferHandle bo, uint64_t offset, const void* src, size_t bytes) = 0;
  virtual void read(BufferHandle bo, uint64_t offset, void* dst, size_t bytes) = 0;
  // xrt::bo::sync: copies between the host-side copy and the device.
  virtual void sync(BufferHandle bo, SyncDirection dir, uint64_t offset, size_t bytes) = 0;
  // xrt::run(kernel), xrt::run::set_arg, start, state, abort.
  virtual RunHandle create_run() = 0;
  virtual void free_run(RunHandle run) = 0;
  virtual void set_buffer_arg(RunHandle run, uint32_t index, BufferHandle bo) = 0;
  virtual void set_scalar_arg(RunHandle run, uint32_t index, uint64_t value, uint32_t bytes) = 0;
  virtual void start(RunHandle run) = 0;
  virtual RunState state(RunHandle run) = 0;
  virtual RunState abort(RunHandle run) = 0;
};

struct BoardOptions {
  std::string xclbin;                 // path of the xclbin with the LPU kernel
  std::string kernel = kDefaultKernel;
};

// DeviceError without an xclbin, FormatError when it does not fit the preset
// (check_xclbin): what can be said before any board is opened.
void check_board_options(const DevicePreset& preset, const BoardOptions& options);

class BoardDevice final : public Device {
 public:
  // Reads and checks the xclbin against the preset (FormatError), then loads it.
  BoardDevice(const DevicePreset& preset, std::unique_ptr<Board> board, BoardOptions options);
  ~BoardDevice() override;

  std::string describe() const override;
  uint32_t num_channels() const override { return preset_.hbm_channels; }
  // One buffer per pseudo-channel, in the bank the kernel's argument is connected to.
  void allocate(const DeviceLayout& layout) override;
  // Into the host-side copy; the range is synced to the device before the next run.
  void write(uint32_t channel, uint64_t offset, const void* src, size_t bytes) override;
  // Syncs the range from the device, then reads it.
  void read(uint32_t channel, uint64_t offset, void* dst, size_t bytes) override;
  void load_program(ProgramSlot slot, const isa::Program& program) override;
  // Syncs every written range to the device, clears the status block, sets the
  // run's scalars and starts it.
  void start(ProgramSlot slot, const RunArgs& args) override;
  // Polls the run until it ends, the timeout passes or the interrupt check fires;
  // then reads the status block back.
  void wait() override;

  Board& board() { return *board_; }

 private:
  struct Buffer {
    BufferHandle bo = 0;
    uint64_t bytes = 0;
    std::map<uint64_t, uint64_t> dirty;  // written ranges not yet synced: begin -> end
  };
  void mark_dirty(Buffer& b, uint64_t begin, uint64_t end);
  void flush(Buffer& b);
  void check_usable() const;
  [[noreturn]] void fail(const std::string& why);
  std::string where() const;

  DevicePreset preset_;
  std::unique_ptr<Board> board_;
  BoardOptions options_;
  KernelArgs abi_;
  DeviceLayout layout_;
  std::vector<Buffer> banks_;
  Buffer status_;
  std::array<Buffer, 2> programs_;
  std::array<uint32_t, 2> instructions_{};
  std::array<uint32_t, 2> max_tokens_{};
  std::array<RunHandle, 2> runs_{};
  std::array<bool, 2> loaded_{};
  int running_ = -1;     // the slot started and not yet waited for
  std::string failed_;   // set when the device can no longer be trusted (timeout, ERT error)
};

}  // namespace hyperdex::board
