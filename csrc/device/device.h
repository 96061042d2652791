// The one interface every device backend implements: the C++ emulator
// (emu/emulator.h) and a board through XRT (xrt/board.h). The runtime above it
// (runtime/session.h) is the same code for all of them; device/recording.h
// records the calls a backend receives.
#pragma once
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "isa/isa.h"
#include "spec/model_spec.h"

namespace hyperdex {

// HBM to allocate, by pseudo-channel, and where the host I/O buffers sit in channel 0.
struct DeviceLayout {
  std::vector<uint64_t> channel_bytes;
  uint64_t io_base = 0;
  uint64_t io_bytes = 0;
};

// What a run is told (on a board: the kernel's scalar arguments).
struct RunArgs {
  uint32_t start_pos = 0;   // absolute position of the first token row
  uint32_t n_tokens = 1;    // token rows in this run (<= the program's max_tokens)
  bool logits_all = false;  // write logits for every row, not only the last
  bool want_logits = true;  // false: skip the LogitRows instructions (LM head, argmax)
};

enum class ProgramSlot : uint32_t { Prefill = 0, Decode = 1 };

// Where a device sits in a ring of `size` devices (tensor parallelism); one device is 0 of 1.
struct RingPosition {
  uint32_t rank = 0;
  uint32_t size = 1;
};

// Checks a layout against what a device of `preset` holds (channel count, capacity,
// the I/O region inside channel 0); `what` names the device in the message.
void check_layout(const DeviceLayout& layout, const DevicePreset& preset, const std::string& what);

// Whether a region striped over `channels` pseudo-channels (row r in channel r % channels
// at byte base + (r / channels) * row_bytes) lies inside every channel's allocation in
// `layout`: empty if it does, else why not (the channel and the numbers), for the caller's
// message. Overflow-safe for any field values.
std::string striped_region_problem(uint64_t base, uint64_t row_bytes, uint64_t rows,
                                   uint32_t channels, const DeviceLayout& layout);

class Device {
 public:
  virtual ~Device() = default;
  virtual std::string describe() const = 0;
  virtual uint32_t num_channels() const = 0;

  virtual void allocate(const DeviceLayout& layout) = 0;
  virtual void write(uint32_t channel, uint64_t offset, const void* src, size_t bytes) = 0;
  virtual void read(uint32_t channel, uint64_t offset, void* dst, size_t bytes) = 0;
  // Optional: makes [offset, offset + bytes) of `channel` show the contents of the file
  // at `path` (exactly `bytes` long) without copying them, as if written there: the
  // emulator maps the file copy-on-write (emu/emulator.h). Returns false where the backend
  // cannot (this default: a board, a recording device) or this file or place does not
  // allow it; the range's contents are then unspecified and the caller writes the bytes
  // (and reports what is wrong with the file). The caller checks the bytes' CRC itself.
  virtual bool map_file(uint32_t /*channel*/, uint64_t /*offset*/, const std::string& /*path*/,
                        uint64_t /*bytes*/) {
    return false;
  }
  // Checks the program against the allocation (operands and regions in bounds)
  // and keeps it in `slot`.
  virtual void load_program(ProgramSlot slot, const isa::Program& program) = 0;
  virtual void start(ProgramSlot slot, const RunArgs& args) = 0;
  // Returns when the run has finished. Throws DeviceError when the device reports
  // an error status or the run outlives the run timeout (the run is aborted
  // first), Interrupted when the interrupt check fires.
  virtual void wait() = 0;

  // The device's place in a ring; a board's kernel learns it with every run.
  virtual void set_ring_position(RingPosition position) { ring_ = position; }
  RingPosition ring_position() const { return ring_; }
  // Sends `bytes` at (`channel`, `offset`) of this device to the same place on
  // `next`, the following device in the ring. This default stages the bytes
  // through the host (read here, write there), which is right for any pair of
  // backends; a backend with a direct link may override it.
  virtual void exchange(Device& next, uint32_t channel, uint64_t offset, size_t bytes);

  // Polled between instructions (or while waiting) where the backend can;
  // returning true aborts the run with hyperdex::Interrupted (Ctrl-C from Python).
  void set_interrupt_check(std::function<bool()> check) { interrupt_check_ = std::move(check); }
  // Longest a single run may take; zero: no limit.
  void set_run_timeout(std::chrono::milliseconds timeout) { run_timeout_ = timeout; }
  std::chrono::milliseconds run_timeout() const { return run_timeout_; }

 protected:
  bool interrupted() const { return interrupt_check_ && interrupt_check_(); }

 private:
  std::function<bool()> interrupt_check_;
  std::chrono::milliseconds run_timeout_{0};
  RingPosition ring_;
};

}  // namespace hyperdex
