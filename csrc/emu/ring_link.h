// The emulated ring link between the devices of a tensor-parallel ring: the only
// path by which one emulated device's data reaches another (each device owns its
// HBM and on-chip memory). Device r sends to device (r + 1) % N and receives from
// (r + N - 1) % N; each hop is a FIFO of messages, as a link carries packets in order.
#pragma once
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <mutex>
#include <vector>

namespace hyperdex::emu {

class RingLink {
 public:
  explicit RingLink(uint32_t size);
  uint32_t size() const { return uint32_t(inbox_.size()); }

  // A run is numbered; every device of the ring runs the same run at once. Messages
  // of an older run (left by a failed one) are dropped, never delivered.
  void send(uint32_t from, uint64_t run, std::vector<uint8_t> bytes);
  // Blocks until the message from the previous device arrives; throws DeviceError when
  // a device of the ring failed this run (so none waits forever for it).
  std::vector<uint8_t> receive(uint32_t rank, uint64_t run);
  // A device whose run failed says so; the others' receives then fail too.
  void abort(uint64_t run);
  uint64_t bytes_sent() const;  // for tests: everything that crossed the link

 private:
  struct Message {
    uint64_t run;
    std::vector<uint8_t> bytes;
  };
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::vector<std::deque<Message>> inbox_;
  uint64_t aborted_run_ = 0;  // runs are numbered from 1
  uint64_t bytes_sent_ = 0;
};

}  // namespace hyperdex::emu
