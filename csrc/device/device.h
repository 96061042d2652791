// The one interface every device backend implements: the C++ emulator here, a
// board through XRT (later). The runtime above it (runtime/session.h) is the
// same code for all of them.
#pragma once
#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "isa/isa.h"

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

class Device {
 public:
  virtual ~Device() = default;
  virtual std::string describe() const = 0;
  virtual uint32_t num_channels() const = 0;

  virtual void allocate(const DeviceLayout& layout) = 0;
  virtual void write(uint32_t channel, uint64_t offset, const void* src, size_t bytes) = 0;
  virtual void read(uint32_t channel, uint64_t offset, void* dst, size_t bytes) = 0;
  // Checks the program against the allocation (operands and regions in bounds)
  // and keeps it in `slot`.
  virtual void load_program(ProgramSlot slot, const isa::Program& program) = 0;
  virtual void start(ProgramSlot slot, const RunArgs& args) = 0;
  virtual void wait() = 0;

  // Polled between instructions where the backend can; returning true aborts
  // the run with hyperdex::Interrupted (Ctrl-C from Python).
  void set_interrupt_check(std::function<bool()> check) { interrupt_check_ = std::move(check); }

 protected:
  bool interrupted() const { return interrupt_check_ && interrupt_check_(); }

 private:
  std::function<bool()> interrupt_check_;
};

}  // namespace hyperdex
