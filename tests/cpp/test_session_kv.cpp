// Session::read_kv / write_kv (the prefix cache's and hybrid mode's path into the
// KV cache): a round trip through the striped layout, and a prefill resumed on a
// restored prefix gives the very logits of a full prefill.
#include <gtest/gtest.h>

#include <cstring>

#include "common/error.h"
#include "emu/emulator.h"
#include "runtime/session.h"
#include "test_compiled.h"

using namespace hyperdex;

namespace {

constexpr uint32_t kChannels = 4;
constexpr uint32_t kMaxLength = 40;

// A compiled tiny Llama (test_compiled.h); several prefill chunks for a 21-token prompt.
class SessionKvTest : public ::testing::Test {
 protected:
  void SetUp() override {
    model_ = std::make_unique<hyperdex::testing::CompiledTiny>("session_kv", kChannels, kMaxLength,
                                                                8);
  }
  std::unique_ptr<Session> open() {
    return std::make_unique<Session>(std::make_unique<emu::Emulator>(model_->preset, 2),
                                     model_->config);
  }
  std::vector<int32_t> prompt(uint32_t n) const { return model_->prompt(n); }

  std::unique_ptr<hyperdex::testing::CompiledTiny> model_;
  const ModelSpec spec_ = hyperdex::testing::tiny_llama();
};

TEST_F(SessionKvTest, ShapeFollowsThePlan) {
  auto s = open();
  EXPECT_EQ(s->kv_region_count(), 2 * spec_.num_layers);
  EXPECT_EQ(s->kv_cols(), spec_.num_kv_heads * spec_.head_dim);
}

TEST_F(SessionKvTest, RestoredPrefixGivesTheLogitsOfAFullPrefill) {
  const uint32_t n = 21, cached = 13;  // neither a multiple of the channels nor of the chunk
  const auto ids = prompt(n);
  const size_t V = spec_.vocab_size, R = 2 * spec_.num_layers, W = spec_.num_kv_heads * spec_.head_dim;

  auto full = open();
  std::vector<float> want(V);
  const int32_t want_argmax = full->prefill(ids.data(), n, false, want.data());
  std::vector<uint16_t> kv(R * n * W);
  full->read_kv(0, n, kv.data());
  // every position of every region holds what KVSTORE wrote: not all zero
  size_t nonzero = 0;
  for (uint16_t h : kv) nonzero += (h & 0x7fff) != 0;
  EXPECT_GT(nonzero, kv.size() / 2);

  // the first `cached` positions of each region, as [R][cached][W]
  std::vector<uint16_t> prefix(R * cached * W);
  for (size_t r = 0; r < R; ++r)
    std::copy_n(kv.begin() + r * n * W, cached * W, prefix.begin() + r * cached * W);

  auto resumed = open();
  resumed->write_kv(0, cached, prefix.data());
  EXPECT_EQ(resumed->position(), cached);
  std::vector<float> got(V);
  const int32_t got_argmax = resumed->prefill(ids.data() + cached, n - cached, false, got.data());
  EXPECT_EQ(got_argmax, want_argmax);
  EXPECT_EQ(0, std::memcmp(got.data(), want.data(), V * 4));  // bit for bit
  std::vector<uint16_t> kv2(R * n * W);
  resumed->read_kv(0, n, kv2.data());
  EXPECT_EQ(kv, kv2);

  // one decode step further, still identical
  std::vector<float> a(V), b(V);
  full->decode(5, a.data());
  resumed->decode(5, b.data());
  EXPECT_EQ(0, std::memcmp(a.data(), b.data(), V * 4));
}

TEST_F(SessionKvTest, UnalignedRangesRoundTrip) {
  auto s = open();
  const auto ids = prompt(30);
  s->prefill(ids.data(), 30, false, nullptr);
  const size_t R = 2 * spec_.num_layers, W = spec_.num_kv_heads * spec_.head_dim;
  std::vector<uint16_t> all(R * 30 * W);
  s->read_kv(0, 30, all.data());
  for (uint32_t start : {0u, 1u, 3u, 5u, 9u}) {
    for (uint32_t n : {1u, 2u, 4u, 7u, 17u}) {
      std::vector<uint16_t> part(R * n * W);
      s->read_kv(start, n, part.data());
      for (size_t r = 0; r < R; ++r)
        for (size_t p = 0; p < n; ++p)
          for (size_t j = 0; j < W; ++j)
            ASSERT_EQ(part[(r * n + p) * W + j], all[(r * 30 + start + p) * W + j]) << start << " " << n;
    }
  }
  // writing a range back leaves the cache as it was; the sequence ends after it
  std::vector<uint16_t> mid(R * 7 * W);
  s->read_kv(5, 7, mid.data());
  s->write_kv(5, 7, mid.data());
  EXPECT_EQ(s->position(), 12u);
  std::vector<uint16_t> again(R * 12 * W);
  s->read_kv(0, 12, again.data());
  for (size_t r = 0; r < R; ++r)
    for (size_t i = 0; i < 12 * W; ++i) ASSERT_EQ(again[r * 12 * W + i], all[r * 30 * W + i]);
}

TEST_F(SessionKvTest, RangesAreChecked) {
  auto s = open();
  const auto ids = prompt(6);
  s->prefill(ids.data(), 6, false, nullptr);
  const size_t R = 2 * spec_.num_layers, W = spec_.num_kv_heads * spec_.head_dim;
  std::vector<uint16_t> buf(R * kMaxLength * W);
  EXPECT_THROW(s->read_kv(0, 7, buf.data()), SpecError);           // past the sequence
  EXPECT_THROW(s->write_kv(7, 1, buf.data()), SpecError);          // would leave a gap
  EXPECT_THROW(s->write_kv(0, kMaxLength + 1, buf.data()), SpecError);  // past max_length
  EXPECT_EQ(s->position(), 6u);
  SessionConfig no_kv = model_->config;
  no_kv.kv_regions.clear();
  Session bare(std::make_unique<emu::Emulator>(model_->preset, 1), no_kv);
  EXPECT_THROW(bare.read_kv(0, 0, buf.data()), SpecError);
}

}  // namespace
