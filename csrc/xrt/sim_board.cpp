#include "xrt/sim_board.h"

#include <cstring>
#include <sstream>

#include "common/bounds.h"
#include "common/error.h"
#include "xrt/xclbin.h"

namespace hyperdex::board {

std::string BoardCall::text() const {
  std::ostringstream s;
  s << op;
  if (op == "alloc") s << " #" << handle << " bytes=" << bytes << " group=" << group;
  else if (op == "group_id") s << " arg=" << index << " -> " << group;
  else if (op == "set_buffer_arg") s << " run#" << handle << " arg=" << index << " bo#" << value;
  else if (op == "set_scalar_arg") s << " run#" << handle << " arg=" << index << " = " << value;
  else if (op == "write" || op == "read" || op == "sync_to_device" || op == "sync_from_device")
    s << " #" << handle << " @" << offset << " +" << bytes;
  else if (handle) s << " #" << handle;
  return s.str();
}

SimBoard::SimBoard(const DevicePreset& preset, size_t num_threads)
    : preset_(preset), num_threads_(num_threads) {
  preset_.validate();
}

SimBoard::~SimBoard() = default;

std::string SimBoard::describe() const { return "simulated board of '" + preset_.name + "'"; }

SimBoard::Bo& SimBoard::bo(BufferHandle h) {
  auto it = bos_.find(h);
  if (it == bos_.end()) throw DeviceError("simulated board: no buffer #" + std::to_string(h));
  return it->second;
}

SimBoard::Run& SimBoard::run(RunHandle h) {
  auto it = runs_.find(h);
  if (it == runs_.end()) throw DeviceError("simulated board: no run #" + std::to_string(h));
  return it->second;
}

void SimBoard::load_xclbin(const std::string& path, const std::string& kernel) {
  record(BoardCall{"load_xclbin"});
  const XclbinInfo x = read_xclbin(path);
  const XclbinKernel* k = x.kernel(kernel);
  if (!k) throw DeviceError("simulated board: the xclbin has no kernel '" + kernel + "'");
  groups_.clear();
  for (const auto& a : k->args) groups_.push_back(a.bank);
  loaded_ = true;
}

int32_t SimBoard::group_id(uint32_t arg) {
  if (!loaded_ || arg >= groups_.size() || groups_[arg] < 0)
    throw DeviceError("simulated board: argument " + std::to_string(arg) + " has no memory bank");
  BoardCall c{"group_id"};
  c.index = arg, c.group = groups_[arg];
  record(c);
  return groups_[arg];
}

BufferHandle SimBoard::alloc(uint64_t bytes, int32_t group) {
  const BufferHandle h = next_handle_++;
  Bo& b = bos_[h];
  // Device memory starts as garbage on a board; a fixed pattern here makes a
  // missing host-to-device sync visible.
  b.host.assign(bytes, 0);
  b.device.assign(bytes, 0xA5);
  b.group = group;
  BoardCall c{"alloc", h};
  c.bytes = bytes, c.group = group;
  record(c);
  return h;
}

void SimBoard::free(BufferHandle h) {
  bo(h);
  bos_.erase(h);
  record(BoardCall{"free", h});
}

void SimBoard::write(BufferHandle h, uint64_t offset, const void* src, size_t bytes) {
  Bo& b = bo(h);
  if (!fits(offset, bytes, b.host.size())) throw DeviceError("simulated board: write past buffer");
  std::memcpy(b.host.data() + offset, src, bytes);
  BoardCall c{"write", h};
  c.offset = offset, c.bytes = bytes;
  record(c);
}

void SimBoard::read(BufferHandle h, uint64_t offset, void* dst, size_t bytes) {
  Bo& b = bo(h);
  if (!fits(offset, bytes, b.host.size())) throw DeviceError("simulated board: read past buffer");
  std::memcpy(dst, b.host.data() + offset, bytes);
  BoardCall c{"read", h};
  c.offset = offset, c.bytes = bytes;
  record(c);
}

void SimBoard::sync(BufferHandle h, SyncDirection dir, uint64_t offset, size_t bytes) {
  Bo& b = bo(h);
  if (!fits(offset, bytes, b.host.size())) throw DeviceError("simulated board: sync past buffer");
  const bool to = dir == SyncDirection::ToDevice;
  if (to) std::memcpy(b.device.data() + offset, b.host.data() + offset, bytes);
  else std::memcpy(b.host.data() + offset, b.device.data() + offset, bytes);
  BoardCall c{to ? "sync_to_device" : "sync_from_device", h};
  c.offset = offset, c.bytes = bytes;
  record(c);
}

RunHandle SimBoard::create_run() {
  if (!loaded_) throw DeviceError("simulated board: create_run before load_xclbin");
  const RunHandle h = next_handle_++;
  runs_[h] = Run{};
  record(BoardCall{"create_run", h});
  return h;
}

void SimBoard::free_run(RunHandle h) {
  run(h);
  runs_.erase(h);
  record(BoardCall{"free_run", h});
}

void SimBoard::set_buffer_arg(RunHandle h, uint32_t index, BufferHandle b) {
  bo(b);
  run(h).buffers[index] = b;
  BoardCall c{"set_buffer_arg", h};
  c.index = index, c.value = b;
  record(c);
}

void SimBoard::set_scalar_arg(RunHandle h, uint32_t index, uint64_t value, uint32_t bytes) {
  if (bytes < 8) value &= (uint64_t(1) << (8 * bytes)) - 1;
  run(h).scalars[index] = value;
  BoardCall c{"set_scalar_arg", h};
  c.index = index, c.value = value, c.bytes = bytes;
  record(c);
}

void SimBoard::fail_next_run(KernelStatus code, uint32_t instruction, uint32_t detail) {
  StatusBlock s;
  s.code = uint32_t(code), s.instruction = instruction, s.detail = detail;
  next_status_ = s;
}
void SimBoard::end_next_run_in(RunState state) { next_state_ = state; }
void SimBoard::hang_next_run() { next_hang_ = true; }

void SimBoard::start(RunHandle h) {
  Run& r = run(h);
  record(BoardCall{"start", h});
  ++runs_started_;
  if (next_hang_) {
    next_hang_ = false;
    r.state = RunState::Running;
    return;
  }
  execute(r);
  r.state = next_state_.value_or(RunState::Completed);
  next_state_.reset();
}

RunState SimBoard::state(RunHandle h) { return run(h).state; }

RunState SimBoard::abort(RunHandle h) {
  Run& r = run(h);
  record(BoardCall{"abort", h});
  if (!is_final(r.state)) r.state = RunState::Abort;
  return r.state;
}

// The kernel: the emulator over the device copies of the buffers, with the
// run's scalars, writing its status block like the hardware would.
void SimBoard::execute(Run& r) {
  const KernelArgs abi{preset_.hbm_channels};
  auto buffer = [&](uint32_t i) -> Bo& {
    auto it = r.buffers.find(i);
    if (it == r.buffers.end())
      throw DeviceError("simulated board: kernel argument '" + abi.name(i) + "' was never set");
    return bo(it->second);
  };
  auto scalar = [&](uint32_t i) -> uint64_t {
    auto it = r.scalars.find(i);
    if (it == r.scalars.end())
      throw DeviceError("simulated board: kernel argument '" + abi.name(i) + "' was never set");
    return it->second;
  };
  StatusBlock status;
  Bo& status_bo = buffer(abi.status());
  if (next_status_) {
    status = *next_status_;
    next_status_.reset();
  } else {
    DeviceLayout layout;
    for (uint32_t c = 0; c < preset_.hbm_channels; ++c)
      layout.channel_bytes.push_back(buffer(abi.hbm(c)).device.size());
    layout.io_base = scalar(abi.io_base());
    layout.io_bytes = scalar(abi.io_bytes());
    if (!emu_ || layout.channel_bytes != emu_layout_.channel_bytes ||
        layout.io_base != emu_layout_.io_base || layout.io_bytes != emu_layout_.io_bytes) {
      emu_ = std::make_unique<emu::Emulator>(preset_, num_threads_);
      emu_->allocate(layout);
      emu_layout_ = layout;
    }
    for (uint32_t c = 0; c < preset_.hbm_channels; ++c) {
      const auto& dev = buffer(abi.hbm(c)).device;
      emu_->write(c, 0, dev.data(), dev.size());
    }
    const uint32_t n = uint32_t(scalar(abi.n_instructions()));
    const auto& prog = buffer(abi.program()).device;
    const Checked prog_bytes = Checked(n) * isa::kInstructionBytes + isa::kProgramHeaderBytes;
    try {
      if (!fits(0, prog_bytes, prog.size()))
        throw FormatError("program buffer shorter than n_instructions");
      isa::Program p = isa::deserialize(prog.data(), size_t(prog_bytes.value()), "the program buffer");
      const ProgramSlot slot =
          p.kind == isa::ProgramKind::Prefill ? ProgramSlot::Prefill : ProgramSlot::Decode;
      emu_->load_program(slot, p);
      const uint64_t flags = scalar(abi.flags());
      emu_->start(slot, RunArgs{uint32_t(scalar(abi.start_pos())), uint32_t(scalar(abi.n_tokens())),
                                (flags & kRunLogitsAll) != 0, (flags & kRunWantLogits) != 0});
    } catch (const FormatError&) {
      status.code = uint32_t(KernelStatus::BadProgram);
    } catch (const CapacityError&) {
      status.code = uint32_t(KernelStatus::OutOfBounds);
    } catch (const DeviceError&) {
      status.code = uint32_t(KernelStatus::Fault);
    }
    for (uint32_t c = 0; c < preset_.hbm_channels; ++c) {
      auto& dev = buffer(abi.hbm(c)).device;
      emu_->read(c, 0, dev.data(), dev.size());
    }
  }
  std::memcpy(status_bo.device.data(), &status, sizeof status);
}

}  // namespace hyperdex::board
