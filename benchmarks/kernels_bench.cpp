// Throughput of the emulator's matrix kernels for each kernel level and pool size.
//
// Not built by CMake. From the repository root (one command line):
//   g++ -std=c++17 -O3 -Icsrc benchmarks/kernels_bench.cpp csrc/common/thread_pool.cpp
//   csrc/emu/kernels*.cpp csrc/isa/qmatrix.cpp -pthread -o /tmp/kernels_bench
// then run /tmp/kernels_bench [quick] [SECTION...] [LEVEL...], SECTION one of stream, fp16,
// q, prefill and LEVEL one of scalar, avx2, avx512 (default: all of them; quick: shorter
// timings). Figures are wall-clock, best of 5 batches; other load on the machine lowers them.
//
// stream:  a STREAM-like read (the sum of a 256 MiB buffer, the widest loads the CPU has):
//          what the memory system delivers to 1 and 2 threads, the ceiling of decode.
// fp16:    decode (n = 1), GB/s of fp16 weights streamed.
// q:       quantized decode (matmul_q, n = 1), GB/s of the quantized rows' data (codes and
//          scales, isa::QRowFormat::data_bytes()), and that as a percentage of the stream read
//          at the same thread count (measured again after each figure; the best of the run
//          is the reference), then a markdown table of them all. Shapes: 4096 x 4096,
//          SmolLM2-135M's one by one, and the whole of SmolLM2-135M's 30 layers one matrix
//          after another (a decode step's quantized weights, without the fp16 LM head),
//          group 128 as GPTQ's default; and a few rows that stay in the L2 cache, one
//          thread: the kernels' own speed.
// prefill: n = 64, GFLOP/s (2 * m * k * n per call).
// Weights are replicated (>= 128 MiB in all) so that every call reads them from DRAM
// rather than the LLC.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <functional>
#include <memory>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <vector>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

#include "common/fp16.h"
#include "common/thread_pool.h"
#include "emu/kernels.h"
#include "isa/qmatrix.h"

namespace emu = hyperdex::emu;
namespace isa = hyperdex::isa;

namespace {

constexpr uint32_t kChannels = 32;
constexpr size_t kMinBytes = size_t{128} << 20;

// 64-byte aligned storage for `channels` stripes of `per_channel` bytes each.
struct Stripes {
  std::vector<std::vector<uint8_t>> storage;
  std::vector<uint8_t*> ptrs;

  Stripes(uint32_t channels, size_t per_channel) {
    for (uint32_t ch = 0; ch < channels; ++ch) {
      storage.emplace_back(per_channel + 64, 0);
      auto& s = storage.back();
      const auto p = reinterpret_cast<uintptr_t>(s.data());
      ptrs.push_back(s.data() + (64 - p % 64) % 64);
    }
  }
  emu::StripedRows rows(uint64_t row_bytes) const {
    emu::StripedRows r;
    r.channels = ptrs.data();
    r.num_channels = uint32_t(ptrs.size());
    r.row_bytes = row_bytes;
    return r;
  }
};

// `copies` independent m x k fp16 weight matrices striped over kChannels buffers.
struct Weights {
  std::vector<Stripes> copies;
  std::vector<emu::StripedRows> rows;  // per copy

  Weights(size_t m, size_t k, size_t n_copies) {
    const uint64_t row_bytes = (k + 31) / 32 * 32 * 2;
    const size_t per_channel = (m + kChannels - 1) / kChannels * row_bytes;
    std::mt19937 rng(42);
    std::uniform_real_distribution<float> uni(-1.0f, 1.0f);
    copies.reserve(n_copies);
    for (size_t c = 0; c < n_copies; ++c) {
      copies.emplace_back(kChannels, per_channel);
      rows.push_back(copies.back().rows(row_bytes));
      for (size_t i = 0; i < m; ++i) {
        auto* h = reinterpret_cast<uint16_t*>(rows.back().row(i));
        for (size_t j = 0; j < k; ++j) h[j] = hyperdex::float_to_half(uni(rng));
      }
    }
  }
};

// `copies` independent m-row matrices of quantized rows of format f.
struct QWeights {
  std::vector<Stripes> copies;
  std::vector<emu::StripedRows> rows;  // per copy

  QWeights(const isa::QRowFormat& f, size_t m, size_t n_copies) {
    const uint64_t row_bytes = (f.data_bytes() + 63) / 64 * 64;
    const size_t per_channel = (m + kChannels - 1) / kChannels * row_bytes;
    std::mt19937 rng(43);
    std::uniform_int_distribution<int> code(0, (1 << f.bits) - 1);
    std::uniform_real_distribution<float> scale(0.002f, 0.02f);  // a GPTQ-like range
    std::vector<uint8_t> codes(f.cols);
    std::vector<uint16_t> scales(f.groups());
    copies.reserve(n_copies);
    for (size_t c = 0; c < n_copies; ++c) {
      copies.emplace_back(kChannels, per_channel);
      rows.push_back(copies.back().rows(row_bytes));
      for (size_t i = 0; i < m; ++i) {
        if (c == 0) {
          for (auto& q : codes) q = uint8_t(code(rng));
          for (auto& s : scales) s = hyperdex::float_to_half(scale(rng));
          isa::pack_qrow(f, codes.data(), scales.data(), rows[0].row(i));
        } else {  // the same values at other addresses: a copy still comes from DRAM
          std::memcpy(rows[c].row(i), rows[0].row(i), row_bytes);
        }
      }
    }
  }
};

// Best time of one call(): a warm-up call (page faults, thread-local buffers; one that
// slow is its own measurement), then the best of 5 batches, the least disturbed by other
// processes.
double seconds_per_call(const std::function<void()>& call, double min_time) {
  const auto w0 = std::chrono::steady_clock::now();
  call();
  const double first = std::chrono::duration<double>(std::chrono::steady_clock::now() - w0).count();
  if (first > min_time / 2) return first;
  double best = 1e30;
  for (int batch = 0; batch < 5; ++batch) {
    size_t calls = 0;
    const auto t0 = std::chrono::steady_clock::now();
    double dt = 0;
    do {
      call();
      ++calls;
      dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    } while (dt < min_time / 5);
    best = std::min(best, dt / calls);
  }
  return best;
}

// ---- the stream read ----------------------------------------------------------

// Sums n bytes (a multiple of 256) as 64-bit integers; several accumulators so that
// only the loads limit it.
#if defined(__x86_64__) || defined(__i386__)
__attribute__((target("avx512f"))) uint64_t read_avx512(const uint8_t* p, size_t n) {
  __m512i a0 = _mm512_setzero_si512(), a1 = a0, a2 = a0, a3 = a0;
  for (size_t i = 0; i < n; i += 256) {
    a0 = _mm512_add_epi64(a0, _mm512_load_si512(p + i));
    a1 = _mm512_add_epi64(a1, _mm512_load_si512(p + i + 64));
    a2 = _mm512_add_epi64(a2, _mm512_load_si512(p + i + 128));
    a3 = _mm512_add_epi64(a3, _mm512_load_si512(p + i + 192));
  }
  alignas(64) uint64_t lanes[8];  // not _mm512_reduce_add_epi64: GCC 12 bug 105593 warns
  _mm512_store_si512(lanes, _mm512_add_epi64(_mm512_add_epi64(a0, a1), _mm512_add_epi64(a2, a3)));
  uint64_t sum = 0;
  for (uint64_t v : lanes) sum += v;
  return sum;
}

__attribute__((target("avx2"))) uint64_t read_avx2(const uint8_t* p, size_t n) {
  __m256i a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0, a3 = a0;
  for (size_t i = 0; i < n; i += 128) {
    a0 = _mm256_add_epi64(a0, _mm256_load_si256(reinterpret_cast<const __m256i*>(p + i)));
    a1 = _mm256_add_epi64(a1, _mm256_load_si256(reinterpret_cast<const __m256i*>(p + i + 32)));
    a2 = _mm256_add_epi64(a2, _mm256_load_si256(reinterpret_cast<const __m256i*>(p + i + 64)));
    a3 = _mm256_add_epi64(a3, _mm256_load_si256(reinterpret_cast<const __m256i*>(p + i + 96)));
  }
  alignas(32) uint64_t lanes[4];
  _mm256_store_si256(reinterpret_cast<__m256i*>(lanes),
                     _mm256_add_epi64(_mm256_add_epi64(a0, a1), _mm256_add_epi64(a2, a3)));
  return lanes[0] + lanes[1] + lanes[2] + lanes[3];
}
#endif

uint64_t read_scalar(const uint8_t* p, size_t n) {
  uint64_t a[4] = {};
  for (size_t i = 0; i < n; i += 32) {
    for (int j = 0; j < 4; ++j) {
      uint64_t v;
      std::memcpy(&v, p + i + 8 * j, 8);
      a[j] += v;
    }
  }
  return a[0] + a[1] + a[2] + a[3];
}

using ReadFn = uint64_t (*)(const uint8_t*, size_t);

ReadFn widest_read(const char** name) {
#if defined(__x86_64__) || defined(__i386__)
  if (emu::cpu_supports(emu::KernelLevel::Avx512)) {
    *name = "avx512";
    return read_avx512;
  }
  if (emu::cpu_supports(emu::KernelLevel::Avx2)) {
    *name = "avx2";
    return read_avx2;
  }
#endif
  *name = "scalar";
  return read_scalar;
}

// The stream read for each thread count, measured again next to every quantized
// figure: other load on the machine only lowers a figure, so the best one of the run
// is the reference, and a quantized figure is compared with what the memory gave at
// about the same time.
class StreamRead {
 public:
  StreamRead(const std::vector<size_t>& thread_counts, double min_time)
      : buf_(1, kBytes), min_time_(min_time), best_(thread_counts.size(), 0.0) {
    read_ = widest_read(&name_);
    std::memset(buf_.ptrs[0], 1, kBytes);  // fault the pages in
    for (size_t t : thread_counts) pools_.push_back(std::make_unique<hyperdex::ThreadPool>(t));
  }
  const char* loads() const { return name_; }
  size_t mib() const { return kBytes >> 20; }

  // GB/s now with thread_counts[ti] threads, each summing its share of the buffer.
  double measure(size_t ti) {
    hyperdex::ThreadPool& pool = *pools_[ti];
    const size_t threads = pool.size();
    constexpr size_t kBlock = 1 << 16;  // the pool hands out runs of 64 KiB blocks
    const size_t blocks = kBytes / kBlock;
    std::atomic<uint64_t> sum{0};  // keeps the loads live
    const double sec = seconds_per_call(
        [&] {
          pool.parallel_for(0, blocks, blocks / threads / 4, [&](size_t b0, size_t b1) {
            sum.fetch_add(read_(buf_.ptrs[0] + b0 * kBlock, (b1 - b0) * kBlock),
                          std::memory_order_relaxed);
          });
        },
        min_time_);
    if (sum.load() == 42) std::printf(" ");  // a use of the sum the compiler cannot drop
    const double gbs = double(kBytes) / sec / 1e9;
    best_[ti] = std::max(best_[ti], gbs);
    return gbs;
  }
  double best(size_t ti) const { return best_[ti]; }

 private:
  static constexpr size_t kBytes = size_t{256} << 20;
  Stripes buf_;
  double min_time_;
  std::vector<double> best_;
  std::vector<std::unique_ptr<hyperdex::ThreadPool>> pools_;
  const char* name_ = nullptr;
  ReadFn read_ = nullptr;
};

// ---- quantized decode -----------------------------------------------------------

struct QShape {
  const char* name;
  size_t m, k;
};

// SmolLM2-135M (hidden 576, 9 heads and 3 KV heads of 64, intermediate 1536, 30 layers):
// one layer's quantized MATMULs as the compiler fuses them.
const QShape kSmolLayer[] = {
    {"smol attn_qkv", 576 + 2 * 192, 576},
    {"smol attn_o", 576, 576},
    {"smol ffn_gate_up", 2 * 1536, 576},
    {"smol ffn_down", 576, 1536},
};
constexpr size_t kSmolLayers = 30;

struct QResult {
  std::string what;
  const char* level;
  size_t threads, ti;
  double gbs, ms;
};

void q_section(const std::vector<const emu::Kernels*>& levels,
               const std::vector<size_t>& thread_counts, StreamRead& stream, double min_time) {
  std::vector<QResult> results;
  const auto report = [&](const std::string& what, const emu::Kernels& kern, size_t ti,
                          double bytes, double sec, const char* per) {
    const double gbs = bytes / sec / 1e9;
    const double now = stream.measure(ti);
    std::printf("  %-7s threads=%zu  %7.2f GB/s  %5.1f%% of stream (%5.2f GB/s now)  "
                "(%.3f ms/%s)\n",
                kern.name, thread_counts[ti], gbs, 100.0 * gbs / stream.best(ti), now,
                sec * 1e3, per);
    results.push_back({what, kern.name, thread_counts[ti], ti, gbs, sec * 1e3});
  };
  for (uint32_t bits : {4u, 8u}) {
    std::vector<QShape> shapes = {{"4096x4096", 4096, 4096}};
    shapes.insert(shapes.end(), std::begin(kSmolLayer), std::end(kSmolLayer));
    for (const QShape& s : shapes) {
      const isa::QRowFormat f{bits, 128, uint32_t(s.k)};
      const double bytes = double(f.data_bytes()) * s.m;
      const size_t copies = std::max<size_t>(2, size_t(kMinBytes / bytes) + 1);
      const QWeights w(f, s.m, copies);
      std::printf("q decode int%u g128  %-17s m=%zu k=%zu (%.2f MiB, %zu copies)\n", bits,
                  s.name, s.m, s.k, bytes / (1 << 20), copies);
      std::vector<float> x(s.k, 0.5f), y(s.m);
      for (const auto* kern : levels) {
        for (size_t ti = 0; ti < thread_counts.size(); ++ti) {
          hyperdex::ThreadPool pool(thread_counts[ti]);
          size_t copy = 0;
          const double sec = seconds_per_call(
              [&] {
                emu::matmul_q(*kern, w.rows[copy], f, s.m, x.data(), s.k, 1, y.data(), s.m,
                              pool);
                copy = (copy + 1) % copies;
              },
              min_time);
          report("int" + std::to_string(bits) + " " + s.name, *kern, ti, bytes, sec, "call");
        }
      }
    }
    {
      // The kernels' own speed: 64 rows of 4096 (a quarter or half of an MiB) that stay
      // in the L2 cache, one thread. What a core can consume at most, whatever the memory.
      const size_t m = 64, k = 4096;
      const isa::QRowFormat f{bits, 128, uint32_t(k)};
      const double bytes = double(f.data_bytes()) * m;
      const QWeights w(f, m, 1);
      std::printf("q decode int%u g128  in L2 (compute) m=%zu k=%zu (%.2f MiB, 1 copy)\n", bits,
                  m, k, bytes / (1 << 20));
      std::vector<float> x(k, 0.5f), y(m);
      for (const auto* kern : levels) {
        hyperdex::ThreadPool pool(1);
        const double sec = seconds_per_call(
            [&] { emu::matmul_q(*kern, w.rows[0], f, m, x.data(), k, 1, y.data(), m, pool); },
            min_time);
        report("int" + std::to_string(bits) + " in L2 (compute)", *kern, 0, bytes, sec, "call");
      }
    }
    // Every layer's matrices, each its own copy: one decode step's quantized weights.
    std::vector<QWeights> stack;
    std::vector<isa::QRowFormat> formats;
    double bytes = 0;
    size_t reps = 1;
    for (;; ++reps) {
      for (size_t l = 0; l < kSmolLayers; ++l) {
        for (const QShape& s : kSmolLayer) {
          formats.push_back({bits, 128, uint32_t(s.k)});
          stack.emplace_back(formats.back(), s.m, 1);
          bytes += double(formats.back().data_bytes()) * s.m;
        }
      }
      if (bytes >= kMinBytes) break;
    }
    const double step_bytes = bytes / reps;
    std::printf("q decode int%u g128  smol 30 layers   (%.2f MiB a step, %zu copies)\n", bits,
                step_bytes / (1 << 20), reps);
    const size_t step_mats = kSmolLayers * std::size(kSmolLayer);
    std::vector<float> x(1536, 0.5f), y(3072);
    for (const auto* kern : levels) {
      for (size_t ti = 0; ti < thread_counts.size(); ++ti) {
        hyperdex::ThreadPool pool(thread_counts[ti]);
        size_t rep = 0;
        const double sec = seconds_per_call(
            [&] {
              for (size_t i = 0; i < step_mats; ++i) {
                const size_t at = rep * step_mats + i;
                const QShape& s = kSmolLayer[i % std::size(kSmolLayer)];
                emu::matmul_q(*kern, stack[at].rows[0], formats[at], s.m, x.data(), s.k, 1,
                              y.data(), s.m, pool);
              }
              rep = (rep + 1) % reps;
            },
            min_time);
        report("int" + std::to_string(bits) + " smol 30 layers", *kern, ti, step_bytes, sec,
               "step");
      }
    }
  }
  std::printf("\nstream read, best of the run:");
  for (size_t ti = 0; ti < thread_counts.size(); ++ti)
    std::printf("  %zu thread%s %.2f GB/s", thread_counts[ti], thread_counts[ti] > 1 ? "s" : "",
                stream.best(ti));
  std::printf("\n\n| weights | level | threads | GB/s | %% of stream | ms |\n");
  std::printf("|---|---|---|---|---|---|\n");
  for (const QResult& r : results) {
    std::printf("| %s | %s | %zu | %.2f | %.0f%% | %.3f |\n", r.what.c_str(), r.level, r.threads,
                r.gbs, 100.0 * r.gbs / stream.best(r.ti), r.ms);
  }
}

}  // namespace

int main(int argc, char** argv) {
  bool quick = false;
  std::set<std::string> sections, level_names;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "quick") {
      quick = true;
    } else if (a == "stream" || a == "fp16" || a == "q" || a == "prefill") {
      sections.insert(a);
    } else if (a == "scalar" || a == "avx2" || a == "avx512") {
      level_names.insert(a);
    } else {
      std::fprintf(stderr, "usage: %s [quick] [stream|fp16|q|prefill]... [scalar|avx2|avx512]...\n",
                   argv[0]);
      return 2;
    }
  }
  const auto want = [&](const char* s) { return sections.empty() || sections.count(s) > 0; };
  const double min_time = quick ? 0.2 : 1.0;
  std::vector<size_t> thread_counts = {1, 2};
  const size_t hw = std::max(1u, std::thread::hardware_concurrency());
  if (hw > 2) thread_counts.push_back(hw);

  std::vector<const emu::Kernels*> levels;
  for (auto l : {emu::KernelLevel::Scalar, emu::KernelLevel::Avx2, emu::KernelLevel::Avx512}) {
    if (!emu::cpu_supports(l)) continue;
    const emu::Kernels& kern = emu::kernels_for(l);
    if (level_names.empty() || level_names.count(kern.name) > 0) levels.push_back(&kern);
  }

  // The stream read comes first: the quantized figures are percentages of it.
  std::unique_ptr<StreamRead> stream;
  if (want("stream") || want("q")) {
    stream = std::make_unique<StreamRead>(thread_counts, min_time);
    std::printf("stream read (%s loads, %zu MiB)\n", stream->loads(), stream->mib());
    for (size_t ti = 0; ti < thread_counts.size(); ++ti)
      std::printf("  threads=%zu  %7.2f GB/s\n", thread_counts[ti], stream->measure(ti));
  }

  if (want("fp16")) {
    struct Shape {
      size_t m, k;
    };
    for (const Shape& s : {Shape{4096, 4096}, Shape{49152, 576}}) {
      const double bytes = 2.0 * s.m * s.k;
      const size_t copies = std::max<size_t>(2, size_t(kMinBytes / bytes) + 1);
      const Weights w(s.m, s.k, copies);
      std::printf("decode  n=1   m=%zu k=%zu (%.1f MiB of weights, %zu copies, %u channels)\n",
                  s.m, s.k, bytes / (1 << 20), copies, kChannels);
      std::vector<float> x(s.k, 0.5f), y(s.m);
      for (const auto* kern : levels) {
        for (size_t t : thread_counts) {
          hyperdex::ThreadPool pool(t);
          size_t copy = 0;
          const double sec = seconds_per_call(
              [&] {
                emu::matmul_f16(*kern, w.rows[copy], s.m, s.k, x.data(), s.k, 1, y.data(), s.m,
                                pool);
                copy = (copy + 1) % copies;
              },
              min_time);
          std::printf("  %-7s threads=%zu  %7.2f GB/s   (%.3f ms/call)\n", kern->name, t,
                      bytes / sec / 1e9, sec * 1e3);
        }
      }
    }
  }

  if (want("q")) q_section(levels, thread_counts, *stream, min_time);

  if (want("prefill")) {
    const size_t m = 4096, k = 4096, n = 64;
    const Weights w(m, k, 1);
    const double flops = 2.0 * m * k * n;
    std::vector<float> x(n * k, 0.5f), y(n * m);
    std::printf("prefill n=%zu  m=%zu k=%zu\n", n, m, k);
    for (const auto* kern : levels) {
      for (size_t t : thread_counts) {
        hyperdex::ThreadPool pool(t);
        const double sec = seconds_per_call(
            [&] {
              emu::matmul_f16(*kern, w.rows[0], m, k, x.data(), k, n, y.data(), m, pool);
            },
            min_time);
        std::printf("  %-7s threads=%zu  %7.2f GFLOP/s (%.3f ms/call)\n", kern->name, t,
                    flops / sec / 1e9, sec * 1e3);
      }
    }
  }
  return 0;
}
