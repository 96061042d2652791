// A compiled tiny Llama in a temporary folder (random weights, both programs, the
// session config), for tests that run whole models through a device backend.
#pragma once
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "common/error.h"
#include "common/fp16.h"
#include "instgen/instgen.h"
#include "mapper/memory_plan.h"
#include "mapper/param_writer.h"
#include "runtime/session.h"
#include "test_util.h"

namespace hyperdex::testing {

class CompiledTiny {
 public:
  CompiledTiny(const std::string& tag, uint32_t channels, uint32_t max_length, uint32_t max_tokens)
      : spec(tiny_llama()), preset(small_preset(channels)) {
    plan = plan_memory(spec, preset, max_length, max_tokens);
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    dir = std::filesystem::temp_directory_path() /
          ("hdx_" + tag + "_" + std::to_string(::getpid()) + "_" + (info ? info->name() : "x"));
    std::filesystem::create_directories(dir);
    std::mt19937 rng(11);
    std::normal_distribution<float> d(0.0f, 0.2f);
    std::map<std::string, std::pair<std::vector<uint16_t>, std::vector<int64_t>>> tensors;
    auto make = [&](const std::string& name, std::vector<int64_t> shape, bool gain) {
      size_t n = 1;
      for (int64_t s : shape) n *= size_t(s);
      std::vector<uint16_t> v(n);
      for (auto& x : v) x = float_to_half(gain ? 1.0f + 0.5f * d(rng) : d(rng));
      tensors[name] = {std::move(v), std::move(shape)};
    };
    const int64_t H = spec.hidden_size, I = spec.intermediate_size, V = spec.vocab_size;
    const int64_t q = int64_t(spec.num_heads) * spec.head_dim;
    const int64_t kv = int64_t(spec.num_kv_heads) * spec.head_dim;
    make("tok_embd.weight", {V, H}, false);
    make("output_norm.weight", {H}, true);
    for (uint32_t l = 0; l < spec.num_layers; ++l) {
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
    auto files = write_params(spec, plan, [&](const std::string& name) {
      auto it = tensors.find(name);
      if (it == tensors.end()) throw SpecError("no tensor " + name);
      return TensorView{it->second.first.data(), it->second.second};
    }, dir.string());
    Programs programs = generate_programs(spec, plan);
    isa::save_program(programs.prefill, (dir / "prefill.bin").string());
    isa::save_program(programs.decode, (dir / "decode.bin").string());
    config.layout.channel_bytes = plan.channel_bytes;
    config.layout.io_base = plan.io.base;
    config.layout.io_bytes = plan.io.bytes;
    config.io = plan.io;
    config.vocab_size = plan.vocab_size;
    config.max_length = plan.max_length;
    config.plan_fingerprint = plan.fingerprint();
    config.weights_bytes = plan.weights_bytes;
    config.params = files;
    config.prefill_path = (dir / "prefill.bin").string();
    config.decode_path = (dir / "decode.bin").string();
    for (const Region& r : plan.regions)
      if (r.kind == RegionKind::KvCache)
        config.kv_regions.push_back(KvRegion{r.base, r.row_bytes, r.rows, r.cols, r.name});
  }
  ~CompiledTiny() {
    std::error_code ec;
    std::filesystem::remove_all(dir, ec);
  }
  CompiledTiny(const CompiledTiny&) = delete;
  CompiledTiny& operator=(const CompiledTiny&) = delete;

  std::string path(const std::string& name) const { return (dir / name).string(); }
  std::vector<int32_t> prompt(uint32_t n) const {
    std::vector<int32_t> ids(n);
    for (uint32_t i = 0; i < n; ++i) ids[i] = int32_t((i * 37 + 11) % spec.vocab_size);
    return ids;
  }

  ModelSpec spec;
  DevicePreset preset;
  MemoryPlan plan;
  std::filesystem::path dir;
  SessionConfig config;
};

}  // namespace hyperdex::testing
