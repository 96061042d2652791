#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <mutex>
#include <stdexcept>
#include <thread>
#include <utility>
#include <vector>

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common/thread_pool.h"

namespace {

using hyperdex::ThreadPool;

TEST(ThreadPool, Size) {
  EXPECT_GE(ThreadPool(0).size(), 1u);
  EXPECT_EQ(ThreadPool(1).size(), 1u);
  EXPECT_EQ(ThreadPool(3).size(), 3u);
}

TEST(ThreadPool, CoversRangeExactlyOnceInChunksOfAtLeastGrain) {
  const size_t thread_counts[] = {1, 2, 3, 4, 8};
  const std::pair<size_t, size_t> ranges[] = {{0, 0},   {5, 5},    {0, 1},    {0, 2},  {3, 17},
                                              {0, 100}, {7, 1000}, {0, 4097}, {1, 64}};
  const size_t grains[] = {0, 1, 2, 3, 7, 16, 100, 5000};
  for (size_t threads : thread_counts) {
    ThreadPool pool(threads);
    for (const auto& [begin, end] : ranges) {
      for (size_t grain : grains) {
        SCOPED_TRACE(testing::Message() << "threads " << threads << " range [" << begin << ", "
                                        << end << ") grain " << grain);
        std::vector<std::atomic<int>> hits(end);
        std::mutex mu;
        std::vector<std::pair<size_t, size_t>> chunks;
        pool.parallel_for(begin, end, grain, [&](size_t lo, size_t hi) {
          for (size_t i = lo; i < hi; ++i) hits[i].fetch_add(1);
          std::lock_guard<std::mutex> lk(mu);
          chunks.emplace_back(lo, hi);
        });
        for (size_t i = 0; i < end; ++i) ASSERT_EQ(hits[i].load(), i >= begin ? 1 : 0) << i;
        if (begin == end) {
          EXPECT_TRUE(chunks.empty());
          continue;
        }
        std::sort(chunks.begin(), chunks.end());
        EXPECT_EQ(chunks.front().first, begin);
        EXPECT_EQ(chunks.back().second, end);
        for (size_t c = 0; c < chunks.size(); ++c) {
          EXPECT_LT(chunks[c].first, chunks[c].second);
          if (c + 1 < chunks.size()) {
            EXPECT_EQ(chunks[c].second, chunks[c + 1].first);
            EXPECT_GE(chunks[c].second - chunks[c].first, std::max<size_t>(grain, 1));
          }
        }
      }
    }
  }
}

TEST(ThreadPool, UsesSeveralThreadsOnLargeRanges) {
  ThreadPool pool(2);
  std::mutex mu;
  std::vector<std::thread::id> ids;
  // Chunks slow enough that the worker surely wakes up before the caller is done.
  pool.parallel_for(0, 8, 1, [&](size_t, size_t) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
    std::lock_guard<std::mutex> lk(mu);
    ids.push_back(std::this_thread::get_id());
  });
  std::sort(ids.begin(), ids.end());
  EXPECT_EQ(std::unique(ids.begin(), ids.end()) - ids.begin(), 2);
}

// Another process keeping a core busy: calls then leave a thread out (on a machine of as
// many cores as the pool has threads), so none of ours waits for a core's time slices.
TEST(ThreadPool, ACoreBusyElsewhereLeavesAThreadOut) {
  const size_t cores = std::thread::hardware_concurrency();
  if (cores < 2) GTEST_SKIP() << "one core";
  ThreadPool pool(cores);
  auto distinct_threads = [&] {
    std::mutex mu;
    std::vector<std::thread::id> ids;
    pool.parallel_for(0, 4 * cores, 1, [&](size_t, size_t) {
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
      std::lock_guard<std::mutex> lk(mu);
      ids.push_back(std::this_thread::get_id());
    });
    std::sort(ids.begin(), ids.end());
    return size_t(std::unique(ids.begin(), ids.end()) - ids.begin());
  };
  EXPECT_EQ(distinct_threads(), cores);  // a fresh pool: every thread
  const pid_t busy = fork();
  ASSERT_GE(busy, 0);
  if (busy == 0) {
    for (volatile unsigned long i = 0;; i = i + 1) {
    }
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(150));
  pool.parallel_for(0, 2, 1, [](size_t, size_t) {});  // the load is read ...
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  const size_t used = distinct_threads();  // ... and again
  kill(busy, SIGKILL);
  waitpid(busy, nullptr, 0);
  EXPECT_LE(used, cores - 1);
  EXPECT_GE(used, 1u);
}

TEST(ThreadPool, SmallRangesRunInlineOnTheCaller) {
  ThreadPool pool(4);
  std::thread::id seen;
  int calls = 0;
  pool.parallel_for(0, 15, 8, [&](size_t lo, size_t hi) {
    seen = std::this_thread::get_id();
    ++calls;
    EXPECT_EQ(lo, 0u);
    EXPECT_EQ(hi, 15u);
  });
  EXPECT_EQ(calls, 1);
  EXPECT_EQ(seen, std::this_thread::get_id());
}

TEST(ThreadPool, PropagatesExceptionsAndStaysUsable) {
  for (size_t threads : {1, 2, 4}) {
    ThreadPool pool(threads);
    for (int round = 0; round < 20; ++round) {
      EXPECT_THROW(pool.parallel_for(0, 1000, 10,
                                     [&](size_t lo, size_t hi) {
                                       if (lo <= 500 && 500 < hi) throw std::out_of_range("boom");
                                     }),
                   std::out_of_range);
      // Every chunk throws: exactly one exception comes out.
      try {
        pool.parallel_for(0, 64, 1, [](size_t, size_t) { throw std::runtime_error("all"); });
        ADD_FAILURE() << "no exception";
      } catch (const std::runtime_error& e) {
        EXPECT_STREQ(e.what(), "all");
      }
      std::atomic<size_t> sum{0};
      pool.parallel_for(0, 1000, 10, [&](size_t lo, size_t hi) {
        for (size_t i = lo; i < hi; ++i) sum += i;
      });
      EXPECT_EQ(sum.load(), 999u * 1000u / 2);
    }
  }
}

TEST(ThreadPool, ManyQuickCalls) {
  for (size_t threads : {1, 2, 4}) {
    ThreadPool pool(threads);
    std::atomic<size_t> total{0};
    const auto t0 = std::chrono::steady_clock::now();
    for (int call = 0; call < 10000; ++call) {
      pool.parallel_for(0, 64, 4, [&](size_t lo, size_t hi) { total += hi - lo; });
    }
    const double us =
        std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count();
    EXPECT_EQ(total.load(), 10000u * 64u);
    std::printf("[          ] %zu threads: %.2f us per parallel_for\n", threads, us / 10000);
  }
}

TEST(ThreadPool, CallersOnSeveralThreadsAreSerialised) {
  ThreadPool pool(3);
  std::atomic<size_t> total{0};
  std::vector<std::thread> callers;
  for (int c = 0; c < 3; ++c) {
    callers.emplace_back([&] {
      for (int call = 0; call < 500; ++call) {
        pool.parallel_for(0, 100, 5, [&](size_t lo, size_t hi) { total += hi - lo; });
      }
    });
  }
  for (auto& t : callers) t.join();
  EXPECT_EQ(total.load(), 3u * 500u * 100u);
}

}  // namespace
