// A board simulated in the process, for tests of the board backend without one:
// every buffer has a host-side copy and a separate device copy (so a missing
// sync shows up as wrong tokens), the "kernel" runs the program on the emulator
// over the device copies, every XRT-level call is recorded, and a run can be made
// to fail, end in an ERT error state or hang. Group ids come from the xclbin's
// connectivity, as XRT reports them.
#pragma once
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "emu/emulator.h"
#include "xrt/board.h"

namespace hyperdex::board {

// One recorded call; `text()` gives a readable line.
struct BoardCall {
  explicit BoardCall(std::string o, uint32_t h = 0) : op(std::move(o)), handle(h) {}
  std::string op;        // "load_xclbin", "alloc", "write", "sync_to_device", "start", ...
  uint32_t handle = 0;   // buffer or run
  uint64_t offset = 0;
  uint64_t bytes = 0;    // alloc size, or bytes moved
  int64_t group = -1;    // alloc group / group_id result
  uint32_t index = 0;    // argument index (set_arg, group_id)
  uint64_t value = 0;    // scalar value, or the buffer handle of a buffer argument
  std::string text() const;
};

class SimBoard final : public Board {
 public:
  explicit SimBoard(const DevicePreset& preset, size_t num_threads = 1);
  ~SimBoard() override;

  std::string describe() const override;
  void load_xclbin(const std::string& path, const std::string& kernel) override;
  int32_t group_id(uint32_t arg) override;
  BufferHandle alloc(uint64_t bytes, int32_t group) override;
  void free(BufferHandle bo) override;
  void write(BufferHandle bo, uint64_t offset, const void* src, size_t bytes) override;
  void read(BufferHandle bo, uint64_t offset, void* dst, size_t bytes) override;
  void sync(BufferHandle bo, SyncDirection dir, uint64_t offset, size_t bytes) override;
  RunHandle create_run() override;
  void free_run(RunHandle run) override;
  void set_buffer_arg(RunHandle run, uint32_t index, BufferHandle bo) override;
  void set_scalar_arg(RunHandle run, uint32_t index, uint64_t value, uint32_t bytes) override;
  void start(RunHandle run) override;
  RunState state(RunHandle run) override;
  RunState abort(RunHandle run) override;

  // Faults, each for the next run only.
  void fail_next_run(KernelStatus code, uint32_t instruction = 0, uint32_t detail = 0);
  void end_next_run_in(RunState state);  // ERT reports this instead of COMPLETED
  void hang_next_run();                  // stays RUNNING until aborted

  const std::vector<BoardCall>& calls() const { return calls_; }
  void clear_calls() { calls_.clear(); }
  uint32_t runs_started() const { return runs_started_; }

 private:
  struct Bo {
    std::vector<uint8_t> host, device;
    int32_t group = 0;
  };
  struct Run {
    std::map<uint32_t, BufferHandle> buffers;
    std::map<uint32_t, uint64_t> scalars;
    RunState state = RunState::New;
  };
  Bo& bo(BufferHandle h);
  Run& run(RunHandle h);
  void execute(Run& r);
  void record(BoardCall c) { calls_.push_back(std::move(c)); }

  DevicePreset preset_;
  size_t num_threads_;
  std::vector<int32_t> groups_;  // group id per kernel argument
  bool loaded_ = false;
  std::map<BufferHandle, Bo> bos_;
  std::map<RunHandle, Run> runs_;
  uint32_t next_handle_ = 1;
  std::unique_ptr<emu::Emulator> emu_;
  DeviceLayout emu_layout_;
  std::optional<StatusBlock> next_status_;
  std::optional<RunState> next_state_;
  bool next_hang_ = false;
  uint32_t runs_started_ = 0;
  std::vector<BoardCall> calls_;
};

}  // namespace hyperdex::board
