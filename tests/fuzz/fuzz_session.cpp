// libFuzzer harness: the runtime's reader of a compiled folder, Session's constructor:
// the memory map's numbers as hyperdex/compiled/session.py hands them over (SessionConfig:
// channel sizes, I/O segment and buffers, weight segment, KV cache regions),
// check_session_config and the I/O buffer checks, the parameter file loader
// (load_param_file: sizes and CRC-32s of param/hbm_chNN.bin) and the program pair's checks;
// then, for a session that opens, a script of runtime calls (prefill, decode, read_kv,
// write_kv, truncate) on the emulator with the tiny model's genuine programs.
//
// Input: see fuzz_common.h ("fuzz_session's input").
#include <unistd.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "common/crc32.h"
#include "emu/emulator.h"
#include "fuzz_common.h"
#include "isa/isa.h"
#include "runtime/session.h"

using namespace hyperdex;

namespace {

std::string g_dir;  // this process's scratch folder

std::string model_file(size_t model, const char* what) {
  return g_dir + "/m" + std::to_string(model) + "_" + what + ".bin";
}

// No fsync (write_file_atomic's): the file lives for one input.
void write_plain(const std::string& path, const std::vector<uint8_t>& bytes) {
  std::FILE* f = std::fopen(path.c_str(), "wb");
  if (!f) std::abort();
  if (!bytes.empty() && std::fwrite(bytes.data(), 1, bytes.size(), f) != bytes.size()) std::abort();
  std::fclose(f);
}

// The CRC-32 of `len` bytes of `fill`, remembered (the harness's own work, not the reader's).
uint32_t fill_crc(uint32_t len, uint8_t fill) {
  static std::map<std::pair<uint32_t, uint8_t>, uint32_t> known;
  const auto key = std::make_pair(len, fill);
  if (auto it = known.find(key); it != known.end()) return it->second;
  const std::vector<uint8_t> bytes(len, fill);
  if (known.size() > 4096) known.clear();
  return known[key] = crc32(bytes.data(), bytes.size());
}

void cleanup() {
  for (size_t m = 0; m < fuzz::tiny_models().size(); ++m) {
    std::remove(model_file(m, "prefill").c_str());
    std::remove(model_file(m, "decode").c_str());
  }
  for (uint32_t c = 0; c < fuzz::kChannels; ++c)
    std::remove((g_dir + "/" + param_file_name(c)).c_str());
  ::rmdir(g_dir.c_str());
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  char tmpl[] = "/tmp/hyperdex-fuzz-session-XXXXXX";
  if (!::mkdtemp(tmpl)) std::abort();
  g_dir = tmpl;
  std::atexit(cleanup);
  const auto& models = fuzz::tiny_models();
  for (size_t m = 0; m < models.size(); ++m) {
    isa::save_program(models[m].programs.prefill, model_file(m, "prefill"));
    isa::save_program(models[m].programs.decode, model_file(m, "decode"));
  }
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const auto& models = fuzz::tiny_models();
  fuzz::Reader in(data, size);
  // The ring model's programs need a ring; one device runs the others.
  const size_t model = in.get<uint8_t>() % (models.size() - 1);
  const uint8_t flags = in.get<uint8_t>();

  SessionConfig config;
  for (uint32_t c = 0; c < fuzz::kChannels; ++c) config.layout.channel_bytes.push_back(in.get<uint64_t>());
  config.layout.io_base = in.get<uint64_t>();
  config.layout.io_bytes = in.get<uint64_t>();
  config.io.base = in.get<uint64_t>();
  config.io.ids_offset = in.get<uint32_t>();
  config.io.argmax_offset = in.get<uint32_t>();
  config.io.logits_offset = in.get<uint32_t>();
  config.io.bytes = in.get<uint32_t>();
  config.vocab_size = in.get<uint32_t>();
  config.max_length = in.get<uint32_t>();
  config.plan_fingerprint = in.get<uint32_t>();
  config.weights_bytes = in.get<uint64_t>();
  for (uint32_t c = 0; c < fuzz::kChannels; ++c) {
    const uint32_t len = std::min(in.get<uint32_t>(), fuzz::kMaxParamFileBytes);
    uint32_t crc = in.get<uint32_t>();
    const uint8_t fill = in.get<uint8_t>();
    const std::vector<uint8_t> bytes(len, fill);
    if (flags & fuzz::kSessionFixCrc) crc = fill_crc(len, fill);
    const std::string path = g_dir + "/" + param_file_name(c);
    write_plain(path, bytes);
    config.params.push_back(ParamFile{path, len, crc});
  }
  const uint32_t kv = std::min<uint32_t>(in.get<uint8_t>(), fuzz::kMaxKvRegions);
  for (uint32_t i = 0; i < kv; ++i) {
    KvRegion r;
    r.base = in.get<uint64_t>();
    r.row_bytes = in.get<uint32_t>();
    r.rows = in.get<uint32_t>();
    r.cols = in.get<uint32_t>();
    r.name = "kv" + std::to_string(i);
    config.kv_regions.push_back(r);
  }
  const bool swap = flags & fuzz::kSessionSwapPrograms;
  config.prefill_path = model_file(model, swap ? "decode" : "prefill");
  config.decode_path = model_file(model, swap ? "prefill" : "decode");

  std::unique_ptr<Session> session;
  fuzz::expect_only_our_errors([&] {
    session = std::make_unique<Session>(std::make_unique<emu::Emulator>(fuzz::tiny_preset(), 1), config);
  });
  if (!session) return 0;

  // The script: each step may fail with our errors; the session must stay usable.
  for (int step = 0; step < 16 && in.rest_size() >= 4; ++step) {
    const uint8_t op = in.get<uint8_t>(), a = in.get<uint8_t>(), b = in.get<uint8_t>(),
                  c = in.get<uint8_t>();
    fuzz::expect_only_our_errors([&] {
      const uint64_t vocab = session->vocab_size();
      switch (op % 6) {
        case fuzz::kStepPrefill: {
          const uint32_t n = 1 + a % 8;
          std::vector<int32_t> ids(n);
          for (uint32_t j = 0; j < n; ++j) ids[j] = int32_t((b + 7 * j) % 128);
          const bool all = c & 1;
          std::vector<float> logits;
          const uint64_t want = vocab * (all ? n : 1);
          if (want <= (1u << 22)) logits.resize(want);
          session->prefill(ids.data(), n, all, logits.empty() ? nullptr : logits.data());
          break;
        }
        case fuzz::kStepDecode: {
          std::vector<float> logits;
          if (vocab <= (1u << 22)) logits.resize(vocab);
          session->decode(int32_t(b % 128), logits.empty() ? nullptr : logits.data());
          break;
        }
        case fuzz::kStepReadKv:
        case fuzz::kStepWriteKv: {
          const uint32_t start = a % 16, n = b % 16;
          const uint64_t elems = uint64_t(session->kv_region_count()) * n * session->kv_cols();
          if (elems > (1u << 24)) break;
          std::vector<uint16_t> buf(elems, uint16_t(c));
          if (op % 6 == fuzz::kStepReadKv) session->read_kv(start, n, buf.data());
          else session->write_kv(start, n, buf.data());
          break;
        }
        case fuzz::kStepTruncate: session->truncate(a % 16); break;
        default: session->reset(); break;
      }
    });
  }
  return 0;
}
