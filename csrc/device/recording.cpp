#include "device/recording.h"

#include <sstream>

namespace hyperdex {

std::string DeviceCall::text() const {
  std::ostringstream s;
  const char* slot_name = slot == ProgramSlot::Prefill ? "prefill" : "decode";
  switch (kind) {
    case Kind::Allocate:
      s << "allocate channels=" << layout.channel_bytes.size() << " io=" << layout.io_base << "+"
        << layout.io_bytes;
      break;
    case Kind::Write: s << "write ch" << channel << " @" << offset << " +" << bytes; break;
    case Kind::Read: s << "read ch" << channel << " @" << offset << " +" << bytes; break;
    case Kind::LoadProgram: s << "load_program " << slot_name << " n=" << instructions; break;
    case Kind::Start:
      s << "start " << slot_name << " pos=" << args.start_pos << " n=" << args.n_tokens
        << " logits_all=" << args.logits_all << " want_logits=" << args.want_logits;
      break;
    case Kind::Wait: s << "wait"; break;
    case Kind::SetRing: s << "set_ring " << ring.rank << "/" << ring.size; break;
    case Kind::Exchange: s << "exchange ch" << channel << " @" << offset << " +" << bytes; break;
  }
  return s.str();
}

void RecordingDevice::allocate(const DeviceLayout& layout) {
  DeviceCall c{DeviceCall::Kind::Allocate};
  c.layout = layout;
  calls_.push_back(c);
  inner_->allocate(layout);
}

void RecordingDevice::write(uint32_t channel, uint64_t offset, const void* src, size_t bytes) {
  DeviceCall c{DeviceCall::Kind::Write};
  c.channel = channel, c.offset = offset, c.bytes = bytes;
  calls_.push_back(c);
  inner_->write(channel, offset, src, bytes);
}

void RecordingDevice::read(uint32_t channel, uint64_t offset, void* dst, size_t bytes) {
  DeviceCall c{DeviceCall::Kind::Read};
  c.channel = channel, c.offset = offset, c.bytes = bytes;
  calls_.push_back(c);
  inner_->read(channel, offset, dst, bytes);
}

void RecordingDevice::load_program(ProgramSlot slot, const isa::Program& program) {
  DeviceCall c{DeviceCall::Kind::LoadProgram};
  c.slot = slot, c.instructions = uint32_t(program.code.size());
  calls_.push_back(c);
  inner_->load_program(slot, program);
}

void RecordingDevice::start(ProgramSlot slot, const RunArgs& args) {
  DeviceCall c{DeviceCall::Kind::Start};
  c.slot = slot, c.args = args;
  calls_.push_back(c);
  inner_->start(slot, args);
}

void RecordingDevice::wait() {
  calls_.push_back(DeviceCall{DeviceCall::Kind::Wait});
  inner_->wait();
}

void RecordingDevice::set_ring_position(RingPosition position) {
  DeviceCall c{DeviceCall::Kind::SetRing};
  c.ring = position;
  calls_.push_back(c);
  Device::set_ring_position(position);
  inner_->set_ring_position(position);
}

void RecordingDevice::exchange(Device& next, uint32_t channel, uint64_t offset, size_t bytes) {
  DeviceCall c{DeviceCall::Kind::Exchange};
  c.channel = channel, c.offset = offset, c.bytes = bytes;
  calls_.push_back(c);
  // Through the inner device, so its override (a direct link) is the one that runs.
  inner_->exchange(next, channel, offset, bytes);
}

}  // namespace hyperdex
