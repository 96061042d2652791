// The board backend without a board: the xclbin reader and writer, the calls the
// runtime makes through the device interface (a recording device over the
// emulator), the XRT-level calls BoardDevice makes (over the simulated board,
// whose kernel is the emulator), equality of its results with the emulator's,
// and every failure path: kernel status, ERT error state, timeout, Ctrl-C.
#include <gtest/gtest.h>

#include <chrono>
#include <cstring>
#include <thread>

#include "common/error.h"
#include "device/recording.h"
#include "emu/emulator.h"
#include "runtime/session.h"
#include "test_compiled.h"
#include "test_util.h"
#include "xrt/board.h"
#include "xrt/sim_board.h"
#include "xrt/xclbin.h"
#include "xrt/xrt_backend.h"

using namespace hyperdex;
using namespace hyperdex::board;
using hyperdex::testing::CompiledTiny;
using hyperdex::testing::small_preset;

namespace {

constexpr uint32_t kChannels = 4;

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const std::exception& e) {
    return e.what();
  }
  return "(no error)";
}

// A compiled tiny model and a stub xclbin for its preset.
class BoardTest : public ::testing::Test {
 protected:
  void SetUp() override {
    model_ = std::make_unique<CompiledTiny>("xrt", kChannels, 40, 4);
    xclbin_ = model_->path("lpu.xclbin");
    write_stub_xclbin(xclbin_, model_->preset);
  }

  std::unique_ptr<Session> sim_session() {
    auto dev = std::make_unique<BoardDevice>(model_->preset, std::make_unique<SimBoard>(model_->preset, 1),
                                             BoardOptions{xclbin_, "lpu"});
    return std::make_unique<Session>(std::move(dev), model_->config);
  }
  std::unique_ptr<Session> emu_session() {
    return std::make_unique<Session>(std::make_unique<emu::Emulator>(model_->preset, 1), model_->config);
  }
  static SimBoard& sim(Session& s) {
    return dynamic_cast<SimBoard&>(dynamic_cast<BoardDevice&>(s.device()).board());
  }
  static BoardDevice& board_device(Session& s) { return dynamic_cast<BoardDevice&>(s.device()); }

  std::unique_ptr<CompiledTiny> model_;
  std::string xclbin_;
};

}  // namespace

// --- xclbin ------------------------------------------------------------------------------

TEST(Xclbin, StubRoundTripsThroughTheReader) {
  const DevicePreset p = small_preset(kChannels);
  const XclbinInfo x = parse_xclbin(make_stub_xclbin(p), "stub");
  ASSERT_EQ(x.banks.size(), kChannels);
  for (uint32_t c = 0; c < kChannels; ++c) {
    EXPECT_EQ(x.banks[c].tag, "HBM[" + std::to_string(c) + "]");
    EXPECT_EQ(x.banks[c].type, kMemHbm);
    EXPECT_EQ(x.banks[c].bytes, p.hbm_channel_bytes);
  }
  const XclbinKernel* k = x.kernel("lpu");
  ASSERT_NE(k, nullptr);
  const KernelArgs abi{kChannels};
  ASSERT_EQ(k->args.size(), abi.count());
  EXPECT_EQ(k->instances, std::vector<std::string>{"lpu_1"});
  for (uint32_t i = 0; i < abi.count(); ++i) {
    EXPECT_EQ(k->args[i].name, abi.name(i));
    EXPECT_EQ(k->args[i].global, abi.is_buffer(i));
    if (i < kChannels) {
      EXPECT_EQ(k->args[i].bank, int32_t(i));
    }
  }
  EXPECT_EQ(k->args[abi.io_base()].size, 8u);
  EXPECT_EQ(x.metadata.at("hyperdex.preset"), "test");
  EXPECT_EQ(x.metadata.at("hyperdex.isa_version"), std::to_string(isa::kIsaVersion));
  EXPECT_NO_THROW(check_xclbin(x, p, "lpu"));
  // Same content, same uuid; another preset, another one.
  EXPECT_EQ(x.uuid, parse_xclbin(make_stub_xclbin(p), "again").uuid);
  EXPECT_NE(x.uuid, parse_xclbin(make_stub_xclbin(small_preset(8)), "other").uuid);
}

TEST(Xclbin, MismatchesAreNamed) {
  const DevicePreset p = small_preset(kChannels);
  auto check_with = [&](std::map<std::string, std::string> meta, const std::string& kernel = "lpu") {
    return error_of([&] {
      check_xclbin(parse_xclbin(make_stub_xclbin(p, "lpu", meta), "x.xclbin"), p, kernel);
    });
  };
  EXPECT_NE(check_with({{"hyperdex.preset", "vcu128"}}).find("device preset vcu128"), std::string::npos);
  EXPECT_NE(check_with({{"hyperdex.isa_version", "99"}}).find("ISA version 99"), std::string::npos);
  EXPECT_NE(check_with({{"hyperdex.program_format_version", "7"}}).find("program format version 7"),
            std::string::npos);
  EXPECT_NE(check_with({{"hyperdex.hbm_channels", "32"}}).find("pseudo-channel count"), std::string::npos);
  EXPECT_NE(check_with({{"hyperdex.kernel_abi", ""}}).find("no hyperdex metadata"), std::string::npos);
  EXPECT_NE(check_with({}, "gemm").find("no kernel 'gemm' (it has: lpu)"), std::string::npos);
  // An xclbin for 8 channels has 17 arguments where the 4-channel interface has 13.
  const DevicePreset p8 = small_preset(8);
  auto wide = parse_xclbin(
      make_stub_xclbin(p8, "lpu", {{"hyperdex.hbm_channels", "4"}, {"hyperdex.preset", "test"}}), "w");
  EXPECT_NE(error_of([&] { check_xclbin(wide, p, "lpu"); }).find("17 arguments"), std::string::npos);
  // Banks smaller than the layout needs.
  DeviceLayout big;
  big.channel_bytes.assign(kChannels, p.hbm_channel_bytes + 1);
  EXPECT_NE(error_of([&] { check_xclbin(parse_xclbin(make_stub_xclbin(p), "x"), p, "lpu", &big); })
                .find("needs"),
            std::string::npos);
  // Not an xclbin at all, and a truncated one.
  EXPECT_THROW(parse_xclbin(std::vector<uint8_t>(600, 7), "junk"), FormatError);
  auto bytes = make_stub_xclbin(p);
  bytes.resize(bytes.size() / 2);
  EXPECT_NE(error_of([&] { parse_xclbin(bytes, "half"); }).find("truncated"), std::string::npos);
}

// --- the device interface: what the runtime asks of any backend -----------------------------

TEST_F(BoardTest, RecordedCallsOfOneModel) {
  auto rec = std::make_unique<RecordingDevice>(std::make_unique<emu::Emulator>(model_->preset, 1));
  Session s(std::move(rec), model_->config);
  auto& r = dynamic_cast<RecordingDevice&>(s.device());
  const auto& calls = r.calls();
  const IoLayout& io = model_->plan.io;
  const uint64_t W = model_->plan.weights_bytes;
  // Loading: allocate the plan, every channel's weights front to back, both programs.
  ASSERT_GE(calls.size(), 3u);
  EXPECT_EQ(calls[0].kind, DeviceCall::Kind::Allocate);
  EXPECT_EQ(calls[0].layout.channel_bytes, model_->plan.channel_bytes);
  EXPECT_EQ(calls[0].layout.io_base, io.base);
  std::vector<uint64_t> next(kChannels, 0);
  size_t i = 1;
  for (; i < calls.size() && calls[i].kind == DeviceCall::Kind::Write; ++i) {
    ASSERT_LT(calls[i].channel, kChannels);
    EXPECT_EQ(calls[i].offset, next[calls[i].channel]) << calls[i].text();
    next[calls[i].channel] += calls[i].bytes;
  }
  for (uint32_t c = 0; c < kChannels; ++c) EXPECT_EQ(next[c], W) << "channel " << c;
  ASSERT_EQ(calls.size(), i + 2);
  const size_t prefill_n = isa::load_program(model_->config.prefill_path).code.size();
  EXPECT_EQ(calls[i].text(), "load_program prefill n=" + std::to_string(prefill_n));
  EXPECT_EQ(calls[i + 1].kind, DeviceCall::Kind::LoadProgram);
  EXPECT_EQ(calls[i + 1].slot, ProgramSlot::Decode);

  // A 6-token prompt in chunks of 4, then one decode step.
  r.clear();
  auto ids = model_->prompt(6);
  std::vector<float> logits(model_->plan.vocab_size);
  s.prefill(ids.data(), 6, false, logits.data());
  s.decode(5, logits.data());
  const std::string ids_at = "@" + std::to_string(io.base + io.ids_offset);
  const std::string argmax = "read ch0 @" + std::to_string(io.base + io.argmax_offset) + " +4";
  const std::string logits_row = "read ch0 @" + std::to_string(io.base + io.logits_offset) + " +" +
                                 std::to_string(model_->plan.vocab_size * 4);
  const std::vector<std::string> want = {
      "write ch0 " + ids_at + " +16",
      "start prefill pos=0 n=4 logits_all=0 want_logits=0",
      "wait",
      "write ch0 " + ids_at + " +8",
      "start prefill pos=4 n=2 logits_all=0 want_logits=1",
      "wait",
      argmax,
      logits_row,
      "write ch0 " + ids_at + " +4",
      "start decode pos=6 n=1 logits_all=0 want_logits=1",
      "wait",
      argmax,
      logits_row,
  };
  std::vector<std::string> got;
  for (const auto& c : calls) got.push_back(c.text());
  EXPECT_EQ(got, want);
}

TEST_F(BoardTest, RingPositionAndExchange) {
  auto a = std::make_unique<emu::Emulator>(model_->preset, 1);
  auto b = std::make_unique<emu::Emulator>(model_->preset, 1);
  a->allocate(model_->config.layout);
  b->allocate(model_->config.layout);
  std::vector<uint8_t> data(3000);
  for (size_t k = 0; k < data.size(); ++k) data[k] = uint8_t(k * 7 + 1);
  a->write(2, 128, data.data(), data.size());
  RecordingDevice rec(std::move(a));
  rec.set_ring_position({0, 2});
  rec.exchange(*b, 2, 128, data.size());
  std::vector<uint8_t> got(data.size());
  b->read(2, 128, got.data(), got.size());
  EXPECT_EQ(got, data);
  EXPECT_EQ(rec.calls().back().text(), "exchange ch2 @128 +3000");
  EXPECT_EQ(rec.inner().ring_position().size, 2u);
}

TEST_F(BoardTest, EmulatorHonoursTheRunTimeout) {
  auto s = emu_session();
  s->device().set_run_timeout(std::chrono::milliseconds(1));
  // The check runs between instructions; a slow one makes the deadline pass.
  s->device().set_interrupt_check([] {
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
    return false;
  });
  auto ids = model_->prompt(3);
  EXPECT_NE(error_of([&] { s->prefill(ids.data(), 3, false, nullptr); }).find("run timeout of 1 ms"),
            std::string::npos);
  EXPECT_EQ(s->position(), 0u);
}

// --- BoardDevice over the simulated board ---------------------------------------------------

TEST_F(BoardTest, SimulatedBoardGivesTheEmulatorsNumbers) {
  auto board = sim_session();
  auto emu = emu_session();
  const uint32_t V = model_->plan.vocab_size;
  auto ids = model_->prompt(7);
  std::vector<float> a(7 * V), b(7 * V);
  const int32_t ta = board->prefill(ids.data(), 7, true, a.data());
  const int32_t tb = emu->prefill(ids.data(), 7, true, b.data());
  EXPECT_EQ(ta, tb);
  EXPECT_EQ(std::memcmp(a.data(), b.data(), a.size() * 4), 0);
  int32_t xa = ta, xb = tb;
  for (int step = 0; step < 6; ++step) {
    xa = board->decode(xa, a.data());
    xb = emu->decode(xb, b.data());
    ASSERT_EQ(xa, xb) << "step " << step;
    ASSERT_EQ(std::memcmp(a.data(), b.data(), V * 4), 0) << "step " << step;
  }
  EXPECT_EQ(sim(*board).runs_started(), 2u + 6u);  // two prefill chunks, six decode steps
}

TEST_F(BoardTest, SyncsBeforeEveryRunAndStatusAfter) {
  auto s = sim_session();
  SimBoard& b = sim(*s);
  const auto& calls = b.calls();
  const IoLayout& io = model_->plan.io;
  const KernelArgs abi{kChannels};
  // Buffers: one per channel in its own bank (the xclbin's connectivity), then the
  // status block, then the programs.
  std::vector<uint32_t> bank_bo;
  uint32_t status_bo = 0;
  for (const auto& c : calls)
    if (c.op == "alloc") {
      if (bank_bo.size() < kChannels) {
        EXPECT_EQ(c.group, int64_t(bank_bo.size()));
        EXPECT_EQ(c.bytes, model_->plan.channel_bytes[bank_bo.size()]);
        bank_bo.push_back(c.handle);
      } else if (!status_bo) {
        EXPECT_EQ(c.bytes, kStatusBytes);
        status_bo = c.handle;
      }
    }
  ASSERT_EQ(bank_bo.size(), kChannels);
  EXPECT_EQ(calls.front().op, "load_xclbin");
  // Loading writes the host copies only: nothing reaches the device before a run.
  for (const auto& c : calls) EXPECT_NE(c.op, "sync_to_device") << c.text();

  b.clear_calls();
  auto ids = model_->prompt(6);
  std::vector<float> logits(model_->plan.vocab_size);
  s->prefill(ids.data(), 6, false, logits.data());
  std::vector<size_t> starts;
  for (size_t k = 0; k < calls.size(); ++k)
    if (calls[k].op == "start") starts.push_back(k);
  ASSERT_EQ(starts.size(), 2u);
  // Before the first run every channel's weights went to the device.
  std::vector<uint64_t> synced(kChannels, 0);
  for (size_t k = 0; k < starts[0]; ++k)
    for (uint32_t c = 0; c < kChannels; ++c)
      if (calls[k].op == "sync_to_device" && calls[k].handle == bank_bo[c]) synced[c] += calls[k].bytes;
  for (uint32_t c = 0; c < kChannels; ++c) EXPECT_GE(synced[c], model_->plan.weights_bytes) << c;
  // Before the second only the new token ids (bank 0) and the cleared status block.
  std::vector<std::string> between;
  for (size_t k = starts[0] + 1; k < starts[1]; ++k)
    if (calls[k].op.rfind("sync", 0) == 0) between.push_back(calls[k].text());
  const std::vector<std::string> want = {
      "sync_from_device #" + std::to_string(status_bo) + " @0 +64",
      "sync_to_device #" + std::to_string(bank_bo[0]) + " @" + std::to_string(io.base + io.ids_offset) +
          " +8",
      "sync_to_device #" + std::to_string(status_bo) + " @0 +64",
  };
  EXPECT_EQ(between, want);
  // The second run's scalars.
  std::map<uint32_t, uint64_t> scalars;
  for (size_t k = starts[0] + 1; k < starts[1]; ++k)
    if (calls[k].op == "set_scalar_arg") scalars[calls[k].index] = calls[k].value;
  EXPECT_EQ(scalars[abi.start_pos()], 4u);
  EXPECT_EQ(scalars[abi.n_tokens()], 2u);
  EXPECT_EQ(scalars[abi.flags()], uint64_t(kRunWantLogits));
  EXPECT_EQ(scalars[abi.io_base()], io.base);
  EXPECT_EQ(scalars[abi.io_bytes()], io.bytes);
  EXPECT_EQ(scalars[abi.ring()], 1u << 16);
  // After it: the status block, then the argmax and the logits, each synced back first.
  std::vector<std::string> after;
  for (size_t k = starts[1] + 1; k < calls.size(); ++k) after.push_back(calls[k].text());
  const std::string bank0 = "#" + std::to_string(bank_bo[0]);
  const std::string am = " @" + std::to_string(io.base + io.argmax_offset) + " +4";
  const std::string lg = " @" + std::to_string(io.base + io.logits_offset) + " +" +
                         std::to_string(model_->plan.vocab_size * 4);
  const std::vector<std::string> want_after = {
      "sync_from_device #" + std::to_string(status_bo) + " @0 +64",
      "read #" + std::to_string(status_bo) + " @0 +64",
      "sync_from_device " + bank0 + am, "read " + bank0 + am,
      "sync_from_device " + bank0 + lg, "read " + bank0 + lg,
  };
  EXPECT_EQ(after, want_after);
}

TEST_F(BoardTest, KernelStatusIsReportedAndTheSequenceKept) {
  auto s = sim_session();
  auto ids = model_->prompt(3);
  const int32_t first = s->prefill(ids.data(), 3, false, nullptr);
  sim(*s).fail_next_run(KernelStatus::PositionOutOfRange, 12, 40);
  const std::string e = error_of([&] { s->decode(first, nullptr); });
  EXPECT_NE(e.find("instruction 12"), std::string::npos) << e;
  EXPECT_NE(e.find("position 40 is past the KV cache"), std::string::npos) << e;
  EXPECT_EQ(s->position(), 3u);
  EXPECT_NO_THROW(s->decode(first, nullptr));  // a status error leaves the board usable
  EXPECT_EQ(s->position(), 4u);
}

TEST_F(BoardTest, ErtErrorStateMakesTheBoardUnusable) {
  auto s = sim_session();
  sim(*s).end_next_run_in(RunState::Error);
  auto ids = model_->prompt(2);
  EXPECT_NE(error_of([&] { s->prefill(ids.data(), 2, false, nullptr); }).find("ERT state ERROR"),
            std::string::npos);
  EXPECT_NE(error_of([&] { s->prefill(ids.data(), 2, false, nullptr); }).find("unusable"), std::string::npos);
}

TEST_F(BoardTest, HungRunTimesOutAndIsAborted) {
  auto s = sim_session();
  s->device().set_run_timeout(std::chrono::milliseconds(50));
  sim(*s).hang_next_run();
  auto ids = model_->prompt(2);
  const auto t0 = std::chrono::steady_clock::now();
  const std::string e = error_of([&] { s->prefill(ids.data(), 2, false, nullptr); });
  const auto ms =
      std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - t0);
  EXPECT_NE(e.find("run timeout of 50 ms"), std::string::npos) << e;
  EXPECT_NE(e.find("ABORT"), std::string::npos) << e;
  EXPECT_LT(ms.count(), 2000);
  EXPECT_EQ(sim(*s).calls().back().op, "abort");
  EXPECT_EQ(s->position(), 0u);
}

TEST_F(BoardTest, InterruptAbortsAWaitingRun) {
  auto s = sim_session();
  sim(*s).hang_next_run();
  s->device().set_interrupt_check([] { return true; });
  auto ids = model_->prompt(2);
  EXPECT_THROW(s->prefill(ids.data(), 2, false, nullptr), Interrupted);
  EXPECT_EQ(sim(*s).calls().back().op, "abort");
  s->device().set_interrupt_check({});
  EXPECT_NO_THROW(s->prefill(ids.data(), 2, false, nullptr));  // aborted cleanly: still usable
}

TEST_F(BoardTest, OptionsAndChecksBeforeTheBoard) {
  auto make = [&](BoardOptions o) {
    return error_of([&] { BoardDevice d(model_->preset, std::make_unique<SimBoard>(model_->preset), o); });
  };
  EXPECT_NE(make({"", "lpu"}).find("HYPERDEX_XCLBIN"), std::string::npos);
  EXPECT_NE(make({model_->path("missing.xclbin"), "lpu"}).find("cannot read the xclbin"), std::string::npos);
  write_stub_xclbin(model_->path("other.xclbin"), small_preset(kChannels), "lpu",
                    {{"hyperdex.preset", "u55c"}});
  EXPECT_NE(make({model_->path("other.xclbin"), "lpu"}).find("device preset u55c"), std::string::npos);
  // A run that asks for more rows than the program carries is refused on the host.
  auto s = sim_session();
  EXPECT_THROW(board_device(*s).start(ProgramSlot::Decode, RunArgs{0, 2}), DeviceError);
}

TEST(XrtBackend, WithoutXrtTheMessageSaysHowToGetIt) {
  if (xrt_built()) GTEST_SKIP() << "built with XRT (test_xrt_noop.cpp covers it)";
  const std::string e = error_of([] { open_xrt_board(0); });
  EXPECT_NE(e.find("libxrt-dev"), std::string::npos) << e;
  EXPECT_THROW(list_xrt_boards(), DeviceError);
}
