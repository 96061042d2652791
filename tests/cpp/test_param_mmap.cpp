// The emulator maps param files copy-on-write instead of copying them (MappedMemory,
// Device::map_file, Session's load path): the mapping shows the file's bytes, never writes
// into the file, declines what it cannot map (the copy path then reports what is wrong),
// and a model loaded either way computes the same logits.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "common/error.h"
#include "common/file_io.h"
#include "device/recording.h"
#include "emu/emulator.h"
#include "runtime/session.h"
#include "test_compiled.h"

using namespace hyperdex;

namespace {

const uint64_t kPage = uint64_t(::sysconf(_SC_PAGESIZE));

std::vector<uint8_t> pattern(size_t n, uint8_t seed) {
  std::vector<uint8_t> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = uint8_t(i * 131 + seed + (i >> 12));
  return v;
}

// A file in the temporary folder, removed at the end of the test.
struct TempFile {
  explicit TempFile(const std::string& tag, const std::vector<uint8_t>& bytes)
      : path((std::filesystem::temp_directory_path() /
              ("hdx_mmap_" + tag + "_" + std::to_string(::getpid())))
                 .string()) {
    std::ofstream(path, std::ios::binary)
        .write(reinterpret_cast<const char*>(bytes.data()), std::streamsize(bytes.size()));
  }
  ~TempFile() { std::remove(path.c_str()); }
  std::string path;
};

// Sets HYPERDEX_MMAP for the scope (each test runs in a process of its own under ctest).
struct MmapEnv {
  explicit MmapEnv(const char* value) { ::setenv("HYPERDEX_MMAP", value, 1); }
  ~MmapEnv() { ::unsetenv("HYPERDEX_MMAP"); }
};

TEST(MappedMemory, IsZeroedAndWritable) {
  MappedMemory m(3 * kPage + 100);
  ASSERT_NE(m.get(), nullptr);
  EXPECT_EQ(m.size(), 3 * kPage + 100);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(m.get()) % kPage, 0u);
  for (uint64_t i = 0; i < m.size(); i += 97) EXPECT_EQ(m.get()[i], 0) << i;
  m.get()[m.size() - 1] = 7;
  MappedMemory moved(std::move(m));
  EXPECT_EQ(m.get(), nullptr);
  EXPECT_EQ(moved.get()[moved.size() - 1], 7);
  MappedMemory empty(0);  // like a zero-byte channel: still a valid pointer
  EXPECT_NE(empty.get(), nullptr);
}

// An access just outside the memory faults (guard pages) rather than hitting a neighbour;
// under AddressSanitizer so does one past the 64-byte-rounded size, as on the heap.
TEST(MappedMemoryDeathTest, GuardPagesFault) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  MappedMemory m(kPage + 100);
  volatile uint8_t* p = m.get();
  EXPECT_DEATH(p[-1] = 1, "");
  EXPECT_DEATH(p[2 * kPage] = 1, "");
#if defined(__SANITIZE_ADDRESS__)
  EXPECT_DEATH(p[kPage + 128] = 1, "");
#endif
  p[kPage + 127] = 1;  // inside the rounded size
}

TEST(MappedMemory, MapsAFileCopyOnWrite) {
  const auto bytes = pattern(2 * kPage + 300, 5);  // the last page only partly the file's
  TempFile f("cow", bytes);
  MappedMemory m(8 * kPage);
  m.get()[2 * kPage + 300] = 9;  // replaced by the mapping: past the file's end reads zero
  ASSERT_TRUE(m.map_file(0, f.path, bytes.size()));
  EXPECT_EQ(std::memcmp(m.get(), bytes.data(), bytes.size()), 0);
  for (uint64_t i = bytes.size(); i < 3 * kPage; ++i) ASSERT_EQ(m.get()[i], 0) << i;
  // the rest of the memory is untouched and writable, and so are the mapped bytes
  m.get()[0] ^= 0xff;
  m.get()[bytes.size() + 10] = 1;
  m.get()[8 * kPage - 1] = 2;
  EXPECT_EQ(read_file(f.path), bytes);  // the file never sees a write
  // at a later page boundary too
  ASSERT_TRUE(m.map_file(4 * kPage, f.path, bytes.size()));
  EXPECT_EQ(std::memcmp(m.get() + 4 * kPage, bytes.data(), bytes.size()), 0);
}

TEST(MappedMemory, DeclinesWhatItCannotMap) {
  const auto bytes = pattern(kPage + 64, 1);
  TempFile f("decline", bytes);
  MappedMemory m(4 * kPage);
  EXPECT_FALSE(m.map_file(64, f.path, bytes.size()));             // not on a page boundary
  EXPECT_FALSE(m.map_file(0, f.path, bytes.size() - 1));          // the file is longer
  EXPECT_FALSE(m.map_file(0, f.path, bytes.size() + 1));          // the file is shorter
  EXPECT_FALSE(m.map_file(0, f.path + ".none", bytes.size()));    // missing
  EXPECT_FALSE(m.map_file(0, std::filesystem::temp_directory_path().string(), kPage));  // a folder
  EXPECT_FALSE(m.map_file(3 * kPage, f.path, bytes.size()));      // past the end
  EXPECT_FALSE(m.map_file(0, f.path, 0));
  EXPECT_FALSE(MappedMemory().map_file(0, f.path, bytes.size()));
  for (uint64_t i = 0; i < m.size(); i += 61) ASSERT_EQ(m.get()[i], 0) << i;
}

// A compiled tiny Llama whose weight segment spans several pages per channel.
class ParamMmapTest : public ::testing::Test {
 protected:
  void SetUp() override {
    model_ = std::make_unique<hyperdex::testing::CompiledTiny>("param_mmap", 4, 32, 8);
    ASSERT_GT(model_->config.weights_bytes, 0u);
  }
  std::unique_ptr<Session> open() {
    return std::make_unique<Session>(std::make_unique<emu::Emulator>(model_->preset, 1),
                                     model_->config);
  }
  static const emu::Emulator& emulator(Session& s) {
    return dynamic_cast<const emu::Emulator&>(s.device());
  }
  std::vector<float> logits(Session& s) {
    const auto ids = model_->prompt(11);
    std::vector<float> out(size_t(s.vocab_size()) * 11 + s.vocab_size());
    s.prefill(ids.data(), 11, true, out.data());
    s.decode(3, out.data() + size_t(s.vocab_size()) * 11);
    return out;
  }
  std::string load_error() {
    try {
      open();
    } catch (const FormatError& e) {
      return e.what();
    }
    return "(no error)";
  }

  std::unique_ptr<hyperdex::testing::CompiledTiny> model_;
};

TEST_F(ParamMmapTest, WeightsAreMappedAndGiveTheLogitsOfACopy) {
  auto mapped = open();
  EXPECT_EQ(emulator(*mapped).file_backed_bytes(),
            model_->config.weights_bytes * model_->preset.hbm_channels);
  const auto want = [&] {
    MmapEnv copy("0");
    auto copied = open();
    EXPECT_EQ(emulator(*copied).file_backed_bytes(), 0u);
    return logits(*copied);
  }();
  EXPECT_EQ(logits(*mapped), want);
  // reset and a second run on the same mapping, then a second session on the same files
  mapped->reset();
  EXPECT_EQ(logits(*mapped), want);
  mapped.reset();
  auto again = open();
  EXPECT_EQ(logits(*again), want);
}

TEST_F(ParamMmapTest, WritesIntoTheWeightsNeverReachTheFile) {
  auto s = open();
  const auto before = read_file(model_->config.params[1].path);
  std::vector<uint8_t> junk(64, 0xab);
  s->device().write(1, 0, junk.data(), junk.size());
  std::vector<uint8_t> back(64);
  s->device().read(1, 0, back.data(), back.size());
  EXPECT_EQ(back, junk);
  EXPECT_EQ(read_file(model_->config.params[1].path), before);
}

TEST_F(ParamMmapTest, ARecordingDeviceStillSeesEveryWrite) {
  auto rec = std::make_unique<RecordingDevice>(std::make_unique<emu::Emulator>(model_->preset, 1));
  RecordingDevice* r = rec.get();
  Session s(std::move(rec), model_->config);
  uint64_t written = 0;
  for (const DeviceCall& c : r->calls())
    if (c.kind == DeviceCall::Kind::Write) written += c.bytes;
  EXPECT_EQ(written, model_->config.weights_bytes * model_->preset.hbm_channels);
  EXPECT_EQ(dynamic_cast<emu::Emulator&>(r->inner()).file_backed_bytes(), 0u);
}

TEST_F(ParamMmapTest, DamagedFilesFailAsOnTheCopyPath) {
  const std::string f = model_->config.params[2].path;
  const auto good = read_file(f);
  auto damaged = good;
  damaged[good.size() / 2] ^= 0x40;
  write_file_atomic(f, damaged.data(), damaged.size());
  for (const char* mode : {"1", "0"}) {
    MmapEnv env(mode);
    const std::string msg = load_error();
    EXPECT_NE(msg.find("CRC-32 mismatch"), std::string::npos) << mode << ": " << msg;
    EXPECT_NE(msg.find(f), std::string::npos) << msg;
  }
  write_file_atomic(f, good.data(), good.size() - 10);
  const std::string truncated = load_error();
  EXPECT_NE(truncated.find("has the wrong size"), std::string::npos) << truncated;
  write_file_atomic(f, good.data(), good.size());
  EXPECT_EQ(load_error(), "(no error)");
  std::filesystem::remove(f);
  const std::string missing = load_error();
  EXPECT_NE(missing.find("missing parameter file " + f), std::string::npos) << missing;
}

}  // namespace
