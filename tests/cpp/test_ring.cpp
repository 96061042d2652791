// The emulated ring: N emulators, each in its own thread with its own memory,
// exchanging only through a RingLink, against the ALLREDUCE/ALLGATHER semantics of
// docs/isa.md; a device that fails a run must not leave its neighbours waiting.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <exception>
#include <thread>

#include "common/error.h"
#include "common/fp16.h"
#include "emu/emulator.h"
#include "emu/ring_link.h"
#include "test_util.h"

using namespace hyperdex;
using namespace hyperdex::emu;
using namespace hyperdex::isa;

namespace {

constexpr uint32_t kChannels = 2;
constexpr uint32_t kTokens = 3;
constexpr uint32_t kA = 0, kB = 4096, kDst = 8192;

struct Ring {
  std::shared_ptr<RingLink> link;
  std::vector<std::unique_ptr<Emulator>> devices;

  explicit Ring(uint32_t n) : link(std::make_shared<RingLink>(n)) {
    DeviceLayout layout;
    layout.channel_bytes.assign(kChannels, 1u << 16);
    layout.io_base = 0;
    layout.io_bytes = 1u << 15;
    for (uint32_t d = 0; d < n; ++d) {
      devices.push_back(std::make_unique<Emulator>(hyperdex::testing::small_preset(kChannels), 1));
      devices.back()->allocate(layout);
      devices.back()->attach_ring(link, d);
    }
  }
  void load(const Instruction& in) {
    Program p;
    p.max_tokens = kTokens;
    p.lmem_bytes = 4096;
    p.code = {in};
    for (auto& d : devices) d->load_program(ProgramSlot::Prefill, p);
  }
  void put(uint32_t d, uint32_t offset, const std::vector<uint16_t>& v) {
    devices[d]->write(0, offset, v.data(), v.size() * 2);
  }
  std::vector<uint16_t> get(uint32_t d, uint32_t offset, size_t n) {
    std::vector<uint16_t> v(n);
    devices[d]->read(0, offset, v.data(), n * 2);
    return v;
  }
  // Every device in a thread of its own; returns each device's error (or null).
  std::vector<std::exception_ptr> run(std::vector<uint32_t> tokens) {
    std::vector<std::exception_ptr> errors(devices.size());
    std::vector<std::thread> threads;
    for (size_t d = 0; d < devices.size(); ++d)
      threads.emplace_back([&, d] {
        try {
          devices[d]->start(ProgramSlot::Prefill, RunArgs{0, tokens[d], false, true});
        } catch (...) {
          errors[d] = std::current_exception();
        }
      });
    for (auto& t : threads) t.join();
    return errors;
  }
};

float value(uint32_t d, uint32_t t, uint32_t j) { return 0.37f * float(d + 1) - 0.011f * float(t * 7 + j); }

// Device d's kTokens rows of n inputs, value(d, t, j) in fp16.
std::vector<uint16_t> values(uint32_t d, uint32_t n) {
  std::vector<uint16_t> a(kTokens * n);
  for (uint32_t t = 0; t < kTokens; ++t)
    for (uint32_t j = 0; j < n; ++j) a[t * n + j] = float_to_half(value(d, t, j));
  return a;
}

class RingTest : public ::testing::TestWithParam<uint32_t> {};

TEST_P(RingTest, AllReduceSumsInRingOrderThenBiasFreeResidual) {
  const uint32_t N = GetParam(), n = 40;
  Ring ring(N);
  Instruction in;
  in.op = Opcode::AllReduce;
  in.flags = kFlagHasResidual;
  in.n = n;
  in.i0 = 3;  // chunks
  in.i1 = N;
  in.dst = Operand{Space::Io, kDst, n};
  in.a = Operand{Space::Io, kA, n};
  in.b = Operand{Space::Io, kB, n};
  ring.load(in);
  std::vector<uint16_t> res(kTokens * n);
  for (uint32_t i = 0; i < res.size(); ++i) res[i] = float_to_half(0.5f + 0.001f * float(i));
  for (uint32_t d = 0; d < N; ++d) {
    ring.put(d, kA, values(d, n));
    ring.put(d, kB, res);
  }
  for (auto& e : ring.run(std::vector<uint32_t>(N, kTokens))) ASSERT_FALSE(e);
  for (uint32_t d = 0; d < N; ++d) {
    const auto got = ring.get(d, kDst, kTokens * n);
    for (uint32_t t = 0; t < kTokens; ++t)
      for (uint32_t j = 0; j < n; ++j) {
        float sum = 0.0f;  // fp32, device 0 first
        for (uint32_t r = 0; r < N; ++r) sum += half_to_float(float_to_half(value(r, t, j)));
        const float want = half_to_float(float_to_half(sum)) + half_to_float(res[t * n + j]);
        EXPECT_EQ(got[t * n + j], float_to_half(want)) << "device " << d << " t " << t << " j " << j;
      }
  }
  EXPECT_GT(ring.link->bytes_sent(), 0u);  // the data crossed the link
}

// NORM RING_STATS (OLMo 2's q/k norm over heads split across devices): each device scales its
// own rows by one rstd from the whole ring's sum of squares over i0 elements, exactly as one
// device would over the joined row (sums in ring order).
TEST_P(RingTest, NormRingStatsUsesTheRingsSumOfSquares) {
  const uint32_t N = GetParam(), n = 8, kGamma = 40960;
  Ring ring(N);
  Instruction in;
  in.op = Opcode::Norm;
  in.sub = uint8_t(NormKind::RmsNorm);
  in.flags = kFlagRingStats;
  in.n = n;
  in.i0 = N * n + 3;  // the ring's elements (here: 3 more than the rows hold, as padding does)
  in.i1 = N;
  in.f0 = 1e-5f;
  in.dst = Operand{Space::Io, kDst, n};
  in.a = Operand{Space::Io, kA, n};
  in.w0 = HbmRegion{kGamma, 64, 1};
  ring.load(in);
  std::vector<uint16_t> gamma(32, 0);
  for (uint32_t j = 0; j < n; ++j) gamma[j] = float_to_half(0.5f + 0.25f * float(j));
  for (uint32_t d = 0; d < N; ++d) {
    ring.put(d, kA, values(d, n));
    ring.put(d, kGamma, gamma);
  }
  for (auto& e : ring.run(std::vector<uint32_t>(N, kTokens))) ASSERT_FALSE(e);
  for (uint32_t d = 0; d < N; ++d) {
    const auto got = ring.get(d, kDst, kTokens * n);
    for (uint32_t t = 0; t < kTokens; ++t) {
      double ss = 0.0;
      for (uint32_t r = 0; r < N; ++r)
        for (uint32_t j = 0; j < n; ++j) {
          const double v = half_to_float(float_to_half(value(r, t, j)));
          ss += v * v;
        }
      const double rstd = 1.0 / std::sqrt(ss / double(in.i0) + 1e-5);
      for (uint32_t j = 0; j < n; ++j) {
        const double x = half_to_float(float_to_half(value(d, t, j)));
        const double want = x * rstd * half_to_float(gamma[j]);
        EXPECT_NEAR(half_to_float(got[t * n + j]), want, 2e-3 * std::abs(want) + 1e-4)
            << "device " << d << " t " << t << " j " << j;
      }
    }
  }
  // The local statistics alone would be another scale: the ring's sum mattered.
  if (N > 1) {
    const auto got = ring.get(0, kDst, n);
    double local = 0.0;
    for (uint32_t j = 0; j < n; ++j) {
      const double v = half_to_float(float_to_half(value(0, 0, j)));
      local += v * v;
    }
    const double x0 = half_to_float(float_to_half(value(0, 0, 0)));
    const double local_y = x0 / std::sqrt(local / double(n) + 1e-5) * half_to_float(gamma[0]);
    EXPECT_GT(std::abs(half_to_float(got[0]) - local_y), 0.05 * std::abs(local_y));
  }
}

TEST_P(RingTest, AllGatherPlacesEachPartByRank) {
  const uint32_t N = GetParam(), n = 8;
  Ring ring(N);
  Instruction in;
  in.op = Opcode::AllGather;
  in.n = n;
  in.i1 = N;
  in.dst = Operand{Space::Io, kDst, n * N};
  in.a = Operand{Space::Io, kA, n};
  ring.load(in);
  for (uint32_t d = 0; d < N; ++d) {
    std::vector<uint16_t> a(kTokens * n);
    for (uint32_t i = 0; i < a.size(); ++i) a[i] = uint16_t(d * 1000 + i);
    ring.put(d, kA, a);
  }
  for (auto& e : ring.run(std::vector<uint32_t>(N, kTokens))) ASSERT_FALSE(e);
  for (uint32_t d = 0; d < N; ++d) {
    const auto got = ring.get(d, kDst, kTokens * n * N);
    for (uint32_t t = 0; t < kTokens; ++t)
      for (uint32_t r = 0; r < N; ++r)
        for (uint32_t j = 0; j < n; ++j)
          EXPECT_EQ(got[(t * N + r) * n + j], uint16_t(r * 1000 + t * n + j));
  }
}

TEST_P(RingTest, AFailedDeviceReleasesItsNeighboursAndTheNextRunWorks) {
  const uint32_t N = GetParam();
  Ring ring(N);
  Instruction in;
  in.op = Opcode::AllReduce;
  in.n = 16;
  in.i0 = 1;
  in.i1 = N;
  in.dst = Operand{Space::Io, kDst, 16};
  in.a = Operand{Space::Io, kA, 16};
  ring.load(in);
  std::vector<uint32_t> tokens(N, 1);
  tokens[N - 1] = 0;  // an invalid run: the last device fails before its first exchange
  auto errors = ring.run(tokens);
  for (auto& e : errors) EXPECT_TRUE(e);  // everyone fails, no one hangs
  for (auto& e : ring.run(std::vector<uint32_t>(N, 1))) EXPECT_FALSE(e);
}

INSTANTIATE_TEST_SUITE_P(Devices, RingTest, ::testing::Values(2u, 4u, 8u));

TEST(Ring, AProgramForAnotherRingSizeIsRefused) {
  Ring ring(2);
  Instruction in;
  in.op = Opcode::AllReduce;
  in.n = 16;
  in.i0 = 1;
  in.i1 = 4;
  in.dst = Operand{Space::Io, kDst, 16};
  in.a = Operand{Space::Io, kA, 16};
  ring.load(in);
  for (auto& e : ring.run({1, 1})) {
    ASSERT_TRUE(e);
    EXPECT_THROW(std::rethrow_exception(e), DeviceError);
  }
}

}  // namespace
