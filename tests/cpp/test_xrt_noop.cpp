// The real XRT path without a board: Debian's libxrt with its no-op device
// (XCL_EMULATION_MODE=noop, libxrt_noop.so) opens device 0, loads our stub
// xclbin, opens the kernel, allocates and syncs every buffer, starts and waits
// for runs. Nothing computes there (the no-op device completes every command
// without running it), so these tests check the path, the data round trip
// through real xrt::bo objects, the timeout and the errors; test_xrt.cpp checks
// the numbers on the simulated board. Skipped in a build without XRT.
//
// XRT reads XCL_EMULATION_MODE once per process, so these tests rely on ctest
// running each test in its own process (gtest_discover_tests); run in one
// process, the tests of the other mode skip themselves.
#include <gtest/gtest.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>

#include "common/error.h"
#include "runtime/session.h"
#include "test_compiled.h"
#include "xrt/board.h"
#include "xrt/xclbin.h"
#include "xrt/xrt_backend.h"

using namespace hyperdex;
using namespace hyperdex::board;
namespace fs = std::filesystem;

namespace {

enum class XrtMode { Unused, Noop, Hardware };
XrtMode g_mode = XrtMode::Unused;  // which mode XRT was first used in, in this process

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const std::exception& e) {
    return e.what();
  }
  return "(no error)";
}

// XRT looks for lib/libxrt_noop.so.2 under XILINX_XRT; Debian installs it in the
// multiarch folder, so a folder whose lib/ links there stands in for the root.
fs::path make_xrt_root(const fs::path& dir) {
  const fs::path root = dir / "xrt-root";
  fs::create_directories(root);
  std::error_code ec;
  fs::create_directory_symlink(xrt_library_dir(), root / "lib", ec);
  return root;
}

class XrtTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!xrt_built()) GTEST_SKIP() << "hyperdex was built without XRT";
  }
  // False when XRT was already used in the other mode in this process (not under ctest).
  bool use(XrtMode mode) {
    if (g_mode != XrtMode::Unused && g_mode != mode) return false;
    g_mode = mode;
    model_ = std::make_unique<hyperdex::testing::CompiledTiny>("noop", 4, 40, 4);
    xclbin_ = model_->path("lpu.xclbin");
    write_stub_xclbin(xclbin_, model_->preset);
    if (!std::getenv("XILINX_XRT")) setenv("XILINX_XRT", make_xrt_root(model_->dir).c_str(), 1);
    if (mode == XrtMode::Noop) setenv("XCL_EMULATION_MODE", "noop", 1);
    else unsetenv("XCL_EMULATION_MODE");
    return true;
  }
  std::unique_ptr<Session> open(std::chrono::milliseconds timeout = std::chrono::milliseconds(0)) {
    auto dev = std::make_unique<BoardDevice>(model_->preset, open_xrt_board(0), BoardOptions{xclbin_, "lpu"});
    dev->set_run_timeout(timeout);
    return std::make_unique<Session>(std::move(dev), model_->config);
  }

  std::unique_ptr<hyperdex::testing::CompiledTiny> model_;
  std::string xclbin_;
};

}  // namespace

TEST_F(XrtTest, NoopDeviceRunsTheWholePath) {
  if (!use(XrtMode::Noop)) GTEST_SKIP() << "XRT already used without noop here; run through ctest";
  // Opens device 0, loads the xclbin, opens the kernel, allocates a buffer per
  // channel + status + programs, writes the parameters and programs.
  auto s = open();
  EXPECT_NE(s->device().describe().find("no-op device"), std::string::npos) << s->device().describe();
  // Prefill in two chunks and two decode steps: syncs, set_arg, start, wait, each time.
  auto ids = model_->prompt(6);
  std::vector<float> logits(model_->plan.vocab_size);
  EXPECT_NO_THROW(s->prefill(ids.data(), 6, false, logits.data()));
  EXPECT_NO_THROW(s->decode(3, logits.data()));
  EXPECT_NO_THROW(s->decode(4, nullptr));
  EXPECT_EQ(s->position(), 8u);
  // Bytes go through real xrt::bo write, sync and read (the no-op device keeps them).
  std::vector<uint8_t> data(5000), back(5000);
  for (size_t k = 0; k < data.size(); ++k) data[k] = uint8_t(k * 13 + 5);
  s->device().write(2, 4096, data.data(), data.size());
  s->device().read(2, 4096, back.data(), back.size());
  EXPECT_EQ(back, data);
}

TEST_F(XrtTest, NoopRunPastTheTimeoutIsAborted) {
  if (!use(XrtMode::Noop)) GTEST_SKIP() << "XRT already used without noop here; run through ctest";
  // The no-op device completes each command after this delay (xrt.ini).
  const fs::path ini = model_->dir / "xrt.ini";
  std::ofstream(ini) << "[Runtime]\nnoop_completion_delay_us=1500000\n";
  setenv("XRT_INI_PATH", ini.c_str(), 1);
  auto s = open(std::chrono::milliseconds(200));
  auto ids = model_->prompt(2);
  const auto t0 = std::chrono::steady_clock::now();
  const std::string e = error_of([&] { s->prefill(ids.data(), 2, false, nullptr); });
  const auto secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_NE(e.find("run timeout of 200 ms"), std::string::npos) << e;
  EXPECT_LT(secs, 10.0);
  EXPECT_EQ(s->position(), 0u);
  EXPECT_NE(error_of([&] { s->decode(1, nullptr); }).find("unusable"), std::string::npos);
}

TEST_F(XrtTest, MismatchedXclbinIsRefusedBeforeXrtLoadsIt) {
  if (!use(XrtMode::Noop)) GTEST_SKIP() << "XRT already used without noop here; run through ctest";
  write_stub_xclbin(xclbin_, model_->preset, "lpu", {{"hyperdex.preset", "u55c"}});
  const std::string e = error_of([&] { open(); });
  EXPECT_NE(e.find("device preset u55c"), std::string::npos) << e;
}

TEST_F(XrtTest, NoopDeviceIsNotListedAsABoard) {
  if (!use(XrtMode::Noop)) GTEST_SKIP() << "XRT already used without noop here; run through ctest";
  EXPECT_TRUE(list_xrt_boards().empty());
}

TEST_F(XrtTest, WithoutABoardTheErrorSaysSo) {
  if (!use(XrtMode::Hardware)) GTEST_SKIP() << "XRT already used with noop here; run through ctest";
  const std::string e = error_of([&] { open(); });
  EXPECT_NE(e.find("no LPU board found through XRT"), std::string::npos) << e;
  EXPECT_TRUE(list_xrt_boards().empty());
}
