// A Device that records every call it receives and passes it on to another
// device (the emulator, in tests). The record is the call sequence a board
// backend would receive from the runtime: which buffers are written and read,
// in what order, and what each run is told.
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "device/device.h"

namespace hyperdex {

struct DeviceCall {
  enum class Kind { Allocate, Write, Read, LoadProgram, Start, Wait, SetRing, Exchange };
  explicit DeviceCall(Kind k) : kind(k) {}
  Kind kind;
  uint32_t channel = 0;
  uint64_t offset = 0;
  uint64_t bytes = 0;
  ProgramSlot slot = ProgramSlot::Prefill;
  RunArgs args;             // Start
  DeviceLayout layout;      // Allocate
  uint32_t instructions = 0;  // LoadProgram
  RingPosition ring;        // SetRing

  std::string text() const;  // one line, for test failure messages and logs
};

class RecordingDevice final : public Device {
 public:
  // Interrupt checks and run timeouts belong on `inner`, which does the work.
  explicit RecordingDevice(std::unique_ptr<Device> inner) : inner_(std::move(inner)) {}

  const std::vector<DeviceCall>& calls() const { return calls_; }
  void clear() { calls_.clear(); }
  Device& inner() { return *inner_; }

  std::string describe() const override { return "recording " + inner_->describe(); }
  uint32_t num_channels() const override { return inner_->num_channels(); }
  void allocate(const DeviceLayout& layout) override;
  void write(uint32_t channel, uint64_t offset, const void* src, size_t bytes) override;
  void read(uint32_t channel, uint64_t offset, void* dst, size_t bytes) override;
  void load_program(ProgramSlot slot, const isa::Program& program) override;
  void start(ProgramSlot slot, const RunArgs& args) override;
  void wait() override;
  void set_ring_position(RingPosition position) override;
  void exchange(Device& next, uint32_t channel, uint64_t offset, size_t bytes) override;

 private:
  std::unique_ptr<Device> inner_;
  std::vector<DeviceCall> calls_;
};

}  // namespace hyperdex
