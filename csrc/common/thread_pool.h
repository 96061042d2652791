// A small fixed-size thread pool owned by whoever needs it (the emulator owns one
// per device); no global pool, no global state.
#pragma once
#include <condition_variable>
#include <cstddef>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

namespace hyperdex {

class ThreadPool {
 public:
  // num_threads == 0: std::thread::hardware_concurrency() (at least 1).
  explicit ThreadPool(size_t num_threads = 0);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  size_t size() const;

  // Calls fn(lo, hi) over disjoint sub-ranges covering [begin, end), each at
  // least `grain` long (except the last), on the pool's threads and the calling
  // thread; returns when all are done. The first exception thrown by fn is
  // rethrown here. Not reentrant: fn must not call parallel_for on this pool.
  // A call uses fewer threads while other processes keep cores busy (thread_pool.cpp).
  void parallel_for(size_t begin, size_t end, size_t grain,
                    const std::function<void(size_t, size_t)>& fn);

 private:
  struct State;
  std::unique_ptr<State> state_;
};

}  // namespace hyperdex
