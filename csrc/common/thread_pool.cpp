// Fixed thread pool tuned for many short parallel_for calls: the emulator calls
// it once per instruction, so a call must cost microseconds, not a round of
// futex sleeps. Workers spin briefly on an atomic generation counter before
// blocking on a condition variable, and the caller works on the range too.
#include "common/thread_pool.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <exception>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

namespace hyperdex {
namespace {

// How long an idle thread polls before going to sleep. Long enough to bridge
// the gap between two instructions of the emulator, short enough not to burn
// a core when the pool is idle.
constexpr auto kSpinTime = std::chrono::microseconds(50);
// Chunks per thread: a few, so a thread slowed down by another process does
// not hold everybody up, but not so many that the per-chunk overhead shows.
constexpr size_t kChunksPerThread = 4;

// A shared machine: when another process takes a core, the worker on it runs in
// time slices of a few milliseconds, and a call whose last chunk it holds waits for
// its next slice: far longer than the call's own work (llama.cpp's spinning threads
// collapse that way). Such a straggler wait (longer than the caller's own share of
// the work and than kStragglerFloor) scores kSlowScore, a normal call takes one off;
// at kSoloScore the pool runs calls on the caller alone for kSoloTime (about the
// one-thread speed), then tries its workers again.
constexpr auto kStragglerFloor = std::chrono::microseconds(200);
constexpr int kSlowScore = 4, kSoloScore = 12;
constexpr auto kSoloTime = std::chrono::milliseconds(250);

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  _mm_pause();
#else
  std::this_thread::yield();
#endif
}

// Polls pred for up to kSpinTime; true if it became true.
template <class Pred>
bool spin_until(Pred pred) {
  const auto deadline = std::chrono::steady_clock::now() + kSpinTime;
  for (;;) {
    for (int i = 0; i < 64; ++i) {
      if (pred()) return true;
      cpu_relax();
    }
    if (std::chrono::steady_clock::now() >= deadline) return pred();
  }
}

}  // namespace

struct ThreadPool::State {
  size_t size = 1;
  std::vector<std::thread> workers;
  std::mutex call_mu;  // serialises callers from different threads

  std::mutex mu;
  std::condition_variable work_cv;  // workers: a new job (or stop)
  std::condition_variable done_cv;  // caller: last chunk done, or stragglers left
  bool stop = false;                // under mu
  size_t active = 0;                // workers inside a job, under mu
  std::exception_ptr error;         // first exception of the job, under mu
  std::atomic<uint64_t> generation{0};

  // The current job; written under mu while active == 0, read by workers
  // after joining under mu.
  const std::function<void(size_t, size_t)>* fn = nullptr;
  size_t begin = 0, len = 0, num_chunks = 0;
  std::atomic<size_t> next_chunk{0};
  std::atomic<size_t> done_chunks{0};
  std::atomic<bool> failed{false};

  // Straggler accounting (under call_mu): see kSoloScore.
  int slow_score = 0;
  std::chrono::steady_clock::time_point solo_until{};

  void run_chunks() {
    const size_t base = len / num_chunks, extra = len % num_chunks;
    for (;;) {
      const size_t i = next_chunk.fetch_add(1, std::memory_order_relaxed);
      if (i >= num_chunks) return;
      // Chunk i: base elements, plus one for the first `extra` chunks.
      const size_t lo = begin + i * base + std::min(i, extra);
      const size_t hi = lo + base + (i < extra ? 1 : 0);
      if (!failed.load(std::memory_order_relaxed)) {
        try {
          (*fn)(lo, hi);
        } catch (...) {
          std::lock_guard<std::mutex> lk(mu);
          if (!error) error = std::current_exception();
          failed.store(true, std::memory_order_relaxed);
        }
      }
      if (done_chunks.fetch_add(1, std::memory_order_acq_rel) + 1 == num_chunks) {
        // Taking the lock orders this wake-up after the caller's predicate check.
        { std::lock_guard<std::mutex> lk(mu); }
        done_cv.notify_all();
      }
    }
  }

  void stop_workers() {
    {
      std::lock_guard<std::mutex> lk(mu);
      stop = true;
    }
    work_cv.notify_all();
    for (auto& t : workers) t.join();
  }

  void worker_loop() {
    uint64_t seen = 0;
    for (;;) {
      spin_until([&] { return generation.load(std::memory_order_acquire) != seen; });
      {
        std::unique_lock<std::mutex> lk(mu);
        work_cv.wait(lk, [&] {
          return stop || generation.load(std::memory_order_relaxed) != seen;
        });
        if (stop) return;
        seen = generation.load(std::memory_order_relaxed);
        ++active;
      }
      run_chunks();
      {
        std::lock_guard<std::mutex> lk(mu);
        if (--active == 0) done_cv.notify_all();
      }
    }
  }
};

ThreadPool::ThreadPool(size_t num_threads) : state_(std::make_unique<State>()) {
  if (num_threads == 0) num_threads = std::max<size_t>(1, std::thread::hardware_concurrency());
  state_->size = num_threads;
  state_->workers.reserve(num_threads - 1);
  // The caller of parallel_for is the num_threads-th thread.
  try {
    for (size_t i = 1; i < num_threads; ++i) {
      state_->workers.emplace_back([s = state_.get()] { s->worker_loop(); });
    }
  } catch (...) {
    state_->stop_workers();  // joinable std::threads must not be destroyed
    throw;
  }
}

ThreadPool::~ThreadPool() { state_->stop_workers(); }

size_t ThreadPool::size() const { return state_->size; }

void ThreadPool::parallel_for(size_t begin, size_t end, size_t grain,
                              const std::function<void(size_t, size_t)>& fn) {
  if (end <= begin) return;
  grain = std::max<size_t>(grain, 1);
  const size_t len = end - begin;
  State& s = *state_;
  if (s.workers.empty() || len < 2 * grain) {
    fn(begin, end);  // not worth waking anybody
    return;
  }
  // Every chunk gets at least `grain` elements since num_chunks <= len / grain.
  const size_t num_chunks = std::min(len / grain, s.size * kChunksPerThread);

  std::lock_guard<std::mutex> call_lk(s.call_mu);
  using Clock = std::chrono::steady_clock;
  const auto started = Clock::now();
  if (started < s.solo_until) {
    fn(begin, end);  // a shared machine: the caller alone (see kSoloScore)
    return;
  }
  {
    std::unique_lock<std::mutex> lk(s.mu);
    // A worker that joined the previous job late may still be looking at its
    // fields (it finds no chunk left and leaves); wait for it before rewriting.
    s.done_cv.wait(lk, [&] { return s.active == 0; });
    s.fn = &fn;
    s.begin = begin;
    s.len = len;
    s.num_chunks = num_chunks;
    s.next_chunk.store(0, std::memory_order_relaxed);
    s.done_chunks.store(0, std::memory_order_relaxed);
    s.failed.store(false, std::memory_order_relaxed);
    s.error = nullptr;
    s.generation.fetch_add(1, std::memory_order_release);
  }
  s.work_cv.notify_all();

  s.run_chunks();

  const auto all_done = [&] { return s.done_chunks.load(std::memory_order_acquire) == num_chunks; };
  const auto own_done = Clock::now();
  if (!spin_until(all_done)) {
    std::unique_lock<std::mutex> lk(s.mu);
    s.done_cv.wait(lk, all_done);
  }
  const auto waited = Clock::now() - own_done;
  if (waited > kStragglerFloor && waited > own_done - started) {
    s.slow_score += kSlowScore;
    if (s.slow_score >= kSoloScore) {
      s.slow_score = 0;
      s.solo_until = Clock::now() + kSoloTime;
    }
  } else if (s.slow_score > 0) {
    --s.slow_score;
  }
  if (s.failed.load(std::memory_order_relaxed)) {  // set before its chunk was counted done
    std::exception_ptr error;
    {
      std::lock_guard<std::mutex> lk(s.mu);
      std::swap(error, s.error);
    }
    std::rethrow_exception(error);
  }
}

}  // namespace hyperdex
