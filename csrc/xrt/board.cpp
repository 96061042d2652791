#include "xrt/board.h"

#include <algorithm>
#include <chrono>
#include <cstring>
#include <thread>

#include "common/bounds.h"
#include "common/error.h"
#include "emu/emulator.h"
#include "xrt/xclbin.h"
#include "xrt/xrt_backend.h"

namespace hyperdex::board {
namespace {

constexpr uint64_t kProgramAlign = 4096;

uint64_t align_up(uint64_t v, uint64_t a) { return (v + a - 1) / a * a; }

}  // namespace

bool is_final(RunState s) {
  return s == RunState::Completed || s == RunState::Error || s == RunState::Abort ||
         s == RunState::Timeout || s == RunState::NoResponse || uint32_t(s) > 9;
}

const char* run_state_name(RunState s) {
  switch (s) {
    case RunState::New: return "NEW";
    case RunState::Queued: return "QUEUED";
    case RunState::Running: return "RUNNING";
    case RunState::Completed: return "COMPLETED";
    case RunState::Error: return "ERROR";
    case RunState::Abort: return "ABORT";
    case RunState::Submitted: return "SUBMITTED";
    case RunState::Timeout: return "TIMEOUT";
    case RunState::NoResponse: return "NORESPONSE";
  }
  return "UNKNOWN";
}

void check_board_options(const DevicePreset& preset, const BoardOptions& options) {
  if (options.xclbin.empty())
    throw DeviceError("no xclbin for the '" + preset.name + "' board: set HYPERDEX_XCLBIN to the "
                      "xclbin holding the LPU kernel, or the preset's \"xclbin\" field (docs/xrt.md)");
  check_xclbin(read_xclbin(options.xclbin), preset, options.kernel.empty() ? kDefaultKernel : options.kernel);
}

std::string xrt_missing_message() {
  return "this build of hyperdex has no XRT backend (XRT was not found when it was built). "
         "Install XRT (Debian/Ubuntu: sudo apt-get install libxrt-dev libxrt1 libxrt-utils; or "
         "AMD's XRT package, under /opt/xilinx/xrt) and rebuild hyperdex (make setup, or pip "
         "install --no-build-isolation -e . in its source folder); hdex-smi then lists the "
         "boards. The emulator (backend='emu') runs the same programs meanwhile";
}

BoardDevice::BoardDevice(const DevicePreset& preset, std::unique_ptr<Board> board, BoardOptions options)
    : preset_(preset), board_(std::move(board)), options_(std::move(options)), abi_{preset.hbm_channels} {
  preset_.validate();
  if (options_.kernel.empty()) options_.kernel = kDefaultKernel;
  // Checked before XRT sees it, so a wrong file fails with a message, not on the board.
  check_board_options(preset_, options_);
  board_->load_xclbin(options_.xclbin, options_.kernel);
}

BoardDevice::~BoardDevice() {
  if (running_ < 0) return;
  try {
    board_->abort(runs_[size_t(running_)]);
  } catch (...) {  // nothing more to do for a board that is going away
  }
}

std::string BoardDevice::describe() const {
  return board_->describe() + ", kernel '" + options_.kernel + "' of " + options_.xclbin;
}

std::string BoardDevice::where() const { return " (" + board_->describe() + ")"; }

void BoardDevice::fail(const std::string& why) {
  failed_ = why;
  throw DeviceError(why + where());
}

void BoardDevice::check_usable() const {
  if (!failed_.empty())
    throw DeviceError("the board is unusable after an earlier failure (" + failed_ +
                      "); load the model again, and if it persists reset the board "
                      "(xbutil reset)" + where());
}

void BoardDevice::allocate(const DeviceLayout& layout) {
  check_usable();
  if (running_ >= 0) throw DeviceError("allocate while a run is in flight");
  check_layout(layout, preset_, "the board");
  check_xclbin(read_xclbin(options_.xclbin), preset_, options_.kernel, &layout);
  // A new allocation replaces everything the old one held.
  for (size_t s = 0; s < 2; ++s) {
    if (loaded_[s]) {
      board_->free_run(runs_[s]);
      board_->free(programs_[s].bo);
    }
    loaded_[s] = false;
  }
  for (const Buffer& b : banks_) board_->free(b.bo);
  if (!banks_.empty()) board_->free(status_.bo);
  banks_.clear();
  for (uint32_t c = 0; c < preset_.hbm_channels; ++c) {
    Buffer b;
    b.bytes = std::max<uint64_t>(layout.channel_bytes[c], 64);
    b.bo = board_->alloc(b.bytes, board_->group_id(abi_.hbm(c)));
    banks_.push_back(std::move(b));
  }
  status_ = Buffer{};
  status_.bytes = kStatusBytes;
  status_.bo = board_->alloc(kStatusBytes, board_->group_id(abi_.status()));
  layout_ = layout;
  // The I/O region starts zeroed, so a device that writes nothing back (XRT's no-op
  // device) reads as zeros rather than as whatever the buffer's memory last held.
  if (layout.io_bytes > 0) {
    const std::vector<uint8_t> zeros(size_t(layout.io_bytes), 0);
    write(0, layout.io_base, zeros.data(), zeros.size());
  }
}

void BoardDevice::mark_dirty(Buffer& b, uint64_t begin, uint64_t end) {
  // Merge with every range it touches, so the map stays a set of disjoint ranges.
  auto it = b.dirty.upper_bound(begin);
  if (it != b.dirty.begin() && std::prev(it)->second >= begin) --it;
  while (it != b.dirty.end() && it->first <= end) {
    begin = std::min(begin, it->first);
    end = std::max(end, it->second);
    it = b.dirty.erase(it);
  }
  b.dirty[begin] = end;
}

void BoardDevice::flush(Buffer& b) {
  for (const auto& [begin, end] : b.dirty)
    board_->sync(b.bo, SyncDirection::ToDevice, begin, size_t(end - begin));
  b.dirty.clear();
}

void BoardDevice::write(uint32_t channel, uint64_t offset, const void* src, size_t bytes) {
  check_usable();
  if (channel >= banks_.size() || !fits(offset, bytes, layout_.channel_bytes[channel]))
    throw DeviceError("write of " + std::to_string(bytes) + " bytes at offset " + std::to_string(offset) +
                      " lies outside pseudo-channel " + std::to_string(channel));
  if (bytes == 0) return;
  Buffer& b = banks_[channel];
  board_->write(b.bo, offset, src, bytes);
  mark_dirty(b, offset, offset + bytes);
}

void BoardDevice::read(uint32_t channel, uint64_t offset, void* dst, size_t bytes) {
  check_usable();
  if (channel >= banks_.size() || !fits(offset, bytes, layout_.channel_bytes[channel]))
    throw DeviceError("read of " + std::to_string(bytes) + " bytes at offset " + std::to_string(offset) +
                      " lies outside pseudo-channel " + std::to_string(channel));
  if (bytes == 0) return;
  Buffer& b = banks_[channel];
  flush(b);  // a pending write must reach the device before the range comes back
  board_->sync(b.bo, SyncDirection::FromDevice, offset, bytes);
  board_->read(b.bo, offset, dst, bytes);
}

void BoardDevice::load_program(ProgramSlot slot, const isa::Program& program) {
  check_usable();
  if (banks_.empty()) throw DeviceError("load_program before allocate");
  if (running_ >= 0) throw DeviceError("load_program while a run is in flight");
  // The kernel trusts its program, so it is checked here, as the emulator does.
  emu::validate_program(program, preset_, layout_);
  const size_t s = size_t(slot);
  if (loaded_[s]) {
    board_->free_run(runs_[s]);
    board_->free(programs_[s].bo);
    loaded_[s] = false;
  }
  const std::vector<uint8_t> bytes = isa::serialize(program);
  Buffer p;
  p.bytes = align_up(bytes.size(), kProgramAlign);
  p.bo = board_->alloc(p.bytes, board_->group_id(abi_.program()));
  board_->write(p.bo, 0, bytes.data(), bytes.size());
  mark_dirty(p, 0, bytes.size());
  programs_[s] = std::move(p);
  instructions_[s] = uint32_t(program.code.size());
  max_tokens_[s] = program.max_tokens;
  // The buffers are the run's for good; only the scalars change between runs.
  runs_[s] = board_->create_run();
  for (uint32_t c = 0; c < banks_.size(); ++c) board_->set_buffer_arg(runs_[s], abi_.hbm(c), banks_[c].bo);
  board_->set_buffer_arg(runs_[s], abi_.program(), programs_[s].bo);
  board_->set_buffer_arg(runs_[s], abi_.status(), status_.bo);
  loaded_[s] = true;
}

void BoardDevice::start(ProgramSlot slot, const RunArgs& args) {
  check_usable();
  const size_t s = size_t(slot);
  if (!loaded_[s]) throw DeviceError("no program loaded in that slot");
  if (running_ >= 0) throw DeviceError("start while another run is in flight; wait() first");
  if (args.n_tokens == 0 || args.n_tokens > max_tokens_[s])
    throw DeviceError("a run carries 1.." + std::to_string(max_tokens_[s]) + " token rows, not " +
                      std::to_string(args.n_tokens));
  for (Buffer& b : banks_) flush(b);
  flush(programs_[s]);
  const StatusBlock clear{};
  board_->write(status_.bo, 0, &clear, sizeof clear);
  mark_dirty(status_, 0, sizeof clear);
  flush(status_);
  const RunHandle run = runs_[s];
  const RingPosition ring = ring_position();
  board_->set_scalar_arg(run, abi_.n_instructions(), instructions_[s], 4);
  board_->set_scalar_arg(run, abi_.start_pos(), args.start_pos, 4);
  board_->set_scalar_arg(run, abi_.n_tokens(), args.n_tokens, 4);
  board_->set_scalar_arg(run, abi_.flags(),
                         (args.logits_all ? kRunLogitsAll : 0) | (args.want_logits ? kRunWantLogits : 0), 4);
  board_->set_scalar_arg(run, abi_.io_base(), layout_.io_base, 8);
  board_->set_scalar_arg(run, abi_.io_bytes(), layout_.io_bytes, 4);
  board_->set_scalar_arg(run, abi_.ring(), (ring.rank & 0xFFFF) | (ring.size << 16), 4);
  board_->start(run);
  running_ = int(s);
}

void BoardDevice::wait() {
  if (running_ < 0) return;
  const RunHandle run = runs_[size_t(running_)];
  using clock = std::chrono::steady_clock;
  const auto t0 = clock::now();
  const auto timeout = run_timeout();
  auto next_check = t0 + std::chrono::milliseconds(10);
  RunState state = RunState::Running;
  // Poll the run's state rather than block in xrt::run::wait: the deadline and
  // Ctrl-C stay in our hands whatever the driver (or XRT's no-op device) does.
  for (uint32_t i = 0;; ++i) {
    state = board_->state(run);
    if (is_final(state)) break;
    const auto now = clock::now();
    if (timeout.count() > 0 && now - t0 > timeout) {
      const RunState after = board_->abort(run);
      running_ = -1;
      fail("the run did not finish within the run timeout of " + std::to_string(timeout.count()) +
           " ms and was aborted (ERT state after the abort: " + run_state_name(after) + ")");
    }
    if (now >= next_check) {  // the check takes the GIL, so not on every poll
      if (interrupted()) {
        const RunState after = board_->abort(run);
        running_ = -1;
        if (!is_final(after)) failed_ = "an interrupted run could not be aborted";
        throw Interrupted("interrupted");
      }
      next_check = now + std::chrono::milliseconds(10);
    }
    // A decode step takes about a millisecond: spin briefly, then sleep in short steps.
    if (i < 200) std::this_thread::yield();
    else std::this_thread::sleep_for(std::chrono::microseconds(std::min<uint32_t>(200, i - 190)));
  }
  running_ = -1;
  if (state != RunState::Completed)
    fail(std::string("the LPU kernel ended in ERT state ") + run_state_name(state) +
         " instead of COMPLETED");
  StatusBlock status;
  board_->sync(status_.bo, SyncDirection::FromDevice, 0, sizeof status);
  board_->read(status_.bo, 0, &status, sizeof status);
  if (status.code != uint32_t(KernelStatus::Ok)) throw DeviceError(status_text(status) + where());
}

}  // namespace hyperdex::board
