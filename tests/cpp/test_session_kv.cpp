// Session::read_kv / write_kv (the prefix cache's and hybrid mode's path into the
// KV cache): a round trip through the striped layout, and a prefill resumed on a
// restored prefix gives the very logits of a full prefill.
#include <gtest/gtest.h>

#include <cstdio>
#include <cstring>
#include <filesystem>
#include <map>
#include <random>

#include "common/error.h"
#include "common/fp16.h"
#include "emu/emulator.h"
#include "instgen/instgen.h"
#include "mapper/memory_plan.h"
#include "mapper/param_writer.h"
#include "runtime/session.h"
#include "test_util.h"

using namespace hyperdex;
namespace fs = std::filesystem;

namespace {

constexpr uint32_t kChannels = 4;
constexpr uint32_t kMaxLength = 40;

// A compiled tiny Llama in a temporary folder: random weights, both programs.
class SessionKvTest : public ::testing::Test {
 protected:
  void SetUp() override {
    spec_ = hyperdex::testing::tiny_llama();
    preset_ = hyperdex::testing::small_preset(kChannels);
    const uint32_t max_tokens = 8;  // several chunks for a 21-token prompt
    plan_ = plan_memory(spec_, preset_, kMaxLength, max_tokens);
    dir_ = fs::temp_directory_path() /
           ("hdx_session_kv_" + std::to_string(::testing::UnitTest::GetInstance()->random_seed()) +
            "_" + ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::create_directories(dir_);
    std::mt19937 rng(7);
    std::normal_distribution<float> d(0.0f, 0.2f);
    auto make = [&](const std::string& name, std::vector<int64_t> shape, bool gain) {
      size_t n = 1;
      for (int64_t s : shape) n *= size_t(s);
      std::vector<uint16_t> v(n);
      for (auto& x : v) x = float_to_half(gain ? 1.0f + 0.5f * d(rng) : d(rng));
      tensors_[name] = {std::move(v), std::move(shape)};
    };
    const int64_t H = spec_.hidden_size, I = spec_.intermediate_size, V = spec_.vocab_size;
    const int64_t q = int64_t(spec_.num_heads) * spec_.head_dim, kv = int64_t(spec_.num_kv_heads) * spec_.head_dim;
    make("tok_embd.weight", {V, H}, false);
    make("output_norm.weight", {H}, true);
    for (uint32_t l = 0; l < spec_.num_layers; ++l) {
      const std::string b = "blk." + std::to_string(l) + ".";
      make(b + "attn_norm.weight", {H}, true);
      make(b + "ffn_norm.weight", {H}, true);
      make(b + "attn_q.weight", {q, H}, false);
      make(b + "attn_k.weight", {kv, H}, false);
      make(b + "attn_v.weight", {kv, H}, false);
      make(b + "attn_output.weight", {H, q}, false);
      make(b + "ffn_gate.weight", {I, H}, false);
      make(b + "ffn_up.weight", {I, H}, false);
      make(b + "ffn_down.weight", {H, I}, false);
    }
    auto files = write_params(spec_, plan_, [&](const std::string& name) {
      auto it = tensors_.find(name);
      if (it == tensors_.end()) throw SpecError("no tensor " + name);
      return TensorView{it->second.first.data(), it->second.second};
    }, dir_.string());
    Programs programs = generate_programs(spec_, plan_);
    isa::save_program(programs.prefill, (dir_ / "prefill.bin").string());
    isa::save_program(programs.decode, (dir_ / "decode.bin").string());

    config_.layout.channel_bytes = plan_.channel_bytes;
    config_.layout.io_base = plan_.io.base;
    config_.layout.io_bytes = plan_.io.bytes;
    config_.io = plan_.io;
    config_.vocab_size = plan_.vocab_size;
    config_.max_length = plan_.max_length;
    config_.plan_fingerprint = plan_.fingerprint();
    config_.weights_bytes = plan_.weights_bytes;
    config_.params = files;
    config_.prefill_path = (dir_ / "prefill.bin").string();
    config_.decode_path = (dir_ / "decode.bin").string();
    for (const Region& r : plan_.regions)
      if (r.kind == RegionKind::KvCache) config_.kv_regions.push_back(KvRegion{r.base, r.row_bytes, r.rows, r.cols});
  }
  void TearDown() override { fs::remove_all(dir_); }

  std::unique_ptr<Session> open() {
    return std::make_unique<Session>(std::make_unique<emu::Emulator>(preset_, 2), config_);
  }
  std::vector<int32_t> prompt(uint32_t n) const {
    std::vector<int32_t> ids(n);
    for (uint32_t i = 0; i < n; ++i) ids[i] = int32_t((i * 37 + 11) % spec_.vocab_size);
    return ids;
  }

  ModelSpec spec_;
  DevicePreset preset_;
  MemoryPlan plan_;
  fs::path dir_;
  std::map<std::string, std::pair<std::vector<uint16_t>, std::vector<int64_t>>> tensors_;
  SessionConfig config_;
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
  SessionConfig no_kv = config_;
  no_kv.kv_regions.clear();
  Session bare(std::make_unique<emu::Emulator>(preset_, 1), no_kv);
  EXPECT_THROW(bare.read_kv(0, 0, buf.data()), SpecError);
}

}  // namespace
