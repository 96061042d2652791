#include "emu/ring_link.h"

#include "common/error.h"

namespace hyperdex::emu {

RingLink::RingLink(uint32_t size) : inbox_(size) {
  if (size == 0) throw DeviceError("a ring has at least one device");
}

void RingLink::send(uint32_t from, uint64_t run, std::vector<uint8_t> bytes) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    bytes_sent_ += bytes.size();
    inbox_[(from + 1) % inbox_.size()].push_back(Message{run, std::move(bytes)});
  }
  cv_.notify_all();
}

std::vector<uint8_t> RingLink::receive(uint32_t rank, uint64_t run) {
  std::unique_lock<std::mutex> lock(mu_);
  auto& box = inbox_[rank];
  for (;;) {
    while (!box.empty() && box.front().run < run) box.pop_front();  // a failed run's leftovers
    if (!box.empty()) {
      std::vector<uint8_t> bytes = std::move(box.front().bytes);
      box.pop_front();
      return bytes;
    }
    if (aborted_run_ >= run) throw DeviceError("another device of the ring failed this run");
    cv_.wait(lock);
  }
}

void RingLink::abort(uint64_t run) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (run > aborted_run_) aborted_run_ = run;
  }
  cv_.notify_all();
}

uint64_t RingLink::bytes_sent() const {
  std::lock_guard<std::mutex> lock(mu_);
  return bytes_sent_;
}

}  // namespace hyperdex::emu
