// Fixed thread pool tuned for many short parallel_for calls: the emulator calls
// it once per instruction, so a call must cost microseconds, not a round of
// futex sleeps. Workers spin briefly on an atomic generation counter before
// blocking on a condition variable, and the caller works on the range too.
#include "common/thread_pool.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <exception>
#include <fstream>
#include <string>

#if defined(__linux__)
#include <sys/resource.h>
#include <unistd.h>
#endif

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

using Clock = std::chrono::steady_clock;

// A shared machine: when another process keeps a core busy, a thread of ours on that
// core runs in time slices of milliseconds, and every call waits for its chunk while the
// other threads spin (llama.cpp's spinning threads collapse that way: one core busy
// elsewhere, and two threads decode slower than one). So a call uses only as many
// threads as there are cores the other processes leave free, measured every
// kLoadInterval: the CPU time all cores spent busy (/proc/stat) less this process's own.
constexpr auto kLoadInterval = std::chrono::milliseconds(100);

// The cores other processes keep busy (Linux; elsewhere 0: all threads are used).
class LoadProbe {
 public:
  // Refreshed at most every kLoadInterval; the last figure otherwise.
  double others(Clock::time_point now) {
#if defined(__linux__)
    if (primed_ && now - last_ < kLoadInterval) return others_;
    double busy = 0.0, self = 0.0;
    if (!read(busy, self)) return others_;
    if (primed_) {
      const double wall = std::chrono::duration<double>(now - last_).count();
      others_ = std::max(0.0, (busy - busy_ - (self - self_)) / wall);
    }
    primed_ = true;
    last_ = now;
    busy_ = busy;
    self_ = self;
#else
    (void)now;
#endif
    return others_;
  }

 private:
#if defined(__linux__)
  // CPU-seconds all cores spent busy since boot, and this process's user + system time.
  static bool read(double& busy, double& self) {
    std::ifstream stat("/proc/stat");
    std::string cpu;
    double v[8] = {};
    if (!(stat >> cpu) || cpu != "cpu") return false;
    for (double& x : v)
      if (!(stat >> x)) return false;
    const double ticks = double(sysconf(_SC_CLK_TCK));
    if (ticks <= 0) return false;
    busy = (v[0] + v[1] + v[2] + v[5] + v[6] + v[7]) / ticks;  // less idle and iowait
    rusage ru{};
    if (getrusage(RUSAGE_SELF, &ru) != 0) return false;
    self = double(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
           1e-6 * double(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec);
    return true;
  }
  bool primed_ = false;
  Clock::time_point last_{};
  double busy_ = 0.0, self_ = 0.0;
#endif
  double others_ = 0.0;
};

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
  size_t participants = 1;  // threads on the current job: the caller, workers 1..n-1

  // Under call_mu: the machine's load, and the cores it leaves us (see kLoadInterval).
  LoadProbe load;
  size_t cores = 1;

  // Threads a call starts with now: all of them, less one per core other processes
  // keep busy, beyond those the machine has to spare.
  size_t threads_to_use(Clock::time_point now) {
    const double others = load.others(now);
    const long spare = long(cores) - long(size);  // cores none of our threads need
    const long taken = long(std::lround(others)) - std::max(0L, spare);
    return size_t(std::clamp<long>(long(size) - std::max(0L, taken), 1, long(size)));
  }

  void run_chunks() {
    const size_t base = len / num_chunks, extra = len % num_chunks;
    size_t ran = 0;  // counted once at the end: each count moves the line between cores
    for (;;) {
      const size_t i = next_chunk.fetch_add(1, std::memory_order_relaxed);
      if (i >= num_chunks) break;
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
      ++ran;
    }
    if (ran > 0 && done_chunks.fetch_add(ran, std::memory_order_acq_rel) + ran == num_chunks) {
      // Taking the lock orders this wake-up after the caller's predicate check.
      { std::lock_guard<std::mutex> lk(mu); }
      done_cv.notify_all();
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

  void worker_loop(size_t index) {  // index: 1..size-1 (the caller is 0)
    uint64_t seen = 0;
    bool left_out = false;  // by the last job: sleep at once, leave the core to others
    for (;;) {
      if (!left_out)
        spin_until([&] { return generation.load(std::memory_order_acquire) != seen; });
      {
        std::unique_lock<std::mutex> lk(mu);
        work_cv.wait(lk, [&] {
          return stop || generation.load(std::memory_order_relaxed) != seen;
        });
        if (stop) return;
        seen = generation.load(std::memory_order_relaxed);
        left_out = index >= participants;
        if (left_out) continue;
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
  state_->cores = std::max<size_t>(1, std::thread::hardware_concurrency());
  state_->workers.reserve(num_threads - 1);
  // The caller of parallel_for is the num_threads-th thread.
  try {
    for (size_t i = 1; i < num_threads; ++i) {
      state_->workers.emplace_back([s = state_.get(), i] { s->worker_loop(i); });
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
  std::lock_guard<std::mutex> call_lk(s.call_mu);
  const size_t threads = s.threads_to_use(Clock::now());
  if (threads == 1) {
    fn(begin, end);  // the other processes leave one core: ours alone, no waiting
    return;
  }
  // Every chunk gets at least `grain` elements since num_chunks <= len / grain.
  const size_t num_chunks = std::min(len / grain, threads * kChunksPerThread);
  {
    std::unique_lock<std::mutex> lk(s.mu);
    // A worker that joined the previous job late may still be looking at its
    // fields (it finds no chunk left and leaves); wait for it before rewriting.
    s.done_cv.wait(lk, [&] { return s.active == 0; });
    s.fn = &fn;
    s.begin = begin;
    s.len = len;
    s.num_chunks = num_chunks;
    s.participants = threads;
    s.next_chunk.store(0, std::memory_order_relaxed);
    s.done_chunks.store(0, std::memory_order_relaxed);
    s.failed.store(false, std::memory_order_relaxed);
    s.error = nullptr;
    s.generation.fetch_add(1, std::memory_order_release);
  }
  s.work_cv.notify_all();

  s.run_chunks();

  const auto all_done = [&] { return s.done_chunks.load(std::memory_order_acquire) == num_chunks; };
  if (!spin_until(all_done)) {
    std::unique_lock<std::mutex> lk(s.mu);
    s.done_cv.wait(lk, all_done);
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
