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
#include "graph/layer_graph.h"
#include "instgen/instgen.h"
#include "mapper/memory_plan.h"
#include "mapper/param_writer.h"
#include "runtime/session.h"
#include "test_util.h"

namespace hyperdex::testing {

class CompiledTiny {
 public:
  // The tiny Llama of test_util.h, its tensors drawn in a fixed order (the tests that use
  // it rely on nothing but that order staying put).
  CompiledTiny(const std::string& tag, uint32_t channels, uint32_t max_length, uint32_t max_tokens)
      : spec(tiny_llama()), preset(small_preset(channels)) {
    std::mt19937 rng(11);
    const int64_t H = spec.hidden_size, I = spec.intermediate_size, V = spec.vocab_size;
    const int64_t q = int64_t(spec.num_heads) * spec.head_dim;
    const int64_t kv = int64_t(spec.num_kv_heads) * spec.head_dim;
    make(rng, "tok_embd.weight", {V, H}, false);
    make(rng, "output_norm.weight", {H}, true);
    for (uint32_t l = 0; l < spec.num_layers; ++l) {
      const std::string b = "blk." + std::to_string(l) + ".";
      make(rng, b + "attn_norm.weight", {H}, true);
      make(rng, b + "ffn_norm.weight", {H}, true);
      make(rng, b + "attn_q.weight", {q, H}, false);
      make(rng, b + "attn_k.weight", {kv, H}, false);
      make(rng, b + "attn_v.weight", {kv, H}, false);
      make(rng, b + "attn_output.weight", {H, q}, false);
      make(rng, b + "ffn_gate.weight", {I, H}, false);
      make(rng, b + "ffn_up.weight", {I, H}, false);
      make(rng, b + "ffn_down.weight", {H, I}, false);
    }
    compile(tag, max_length, max_tokens);
  }
  // Any fp16 spec: one random tensor per graph::model_tensors entry, in its order (norm
  // gains around 1, the rest around 0, scaled by `scale`).
  CompiledTiny(const std::string& tag, const ModelSpec& s, uint32_t channels, uint32_t max_length,
               uint32_t max_tokens, float scale = 0.2f, uint32_t seed = 11)
      : spec(s), preset(small_preset(channels)) {
    std::mt19937 rng(seed);
    for (const graph::Tensor& t : graph::model_tensors(spec)) {
      std::vector<int64_t> shape(t.shape.begin(), t.shape.end());
      const bool gain = t.name.size() > 11 && t.name.compare(t.name.size() - 11, 11, "norm.weight") == 0;
      make(rng, t.name, std::move(shape), gain, scale);
    }
    compile(tag, max_length, max_tokens);
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

  // The fp32 values of a tensor (fp16 bits widened), for references.
  std::vector<float> values(const std::string& name) const {
    const auto& h = tensors.at(name).first;
    std::vector<float> f(h.size());
    for (size_t i = 0; i < h.size(); ++i) f[i] = half_to_float(h[i]);
    return f;
  }

  ModelSpec spec;
  DevicePreset preset;
  MemoryPlan plan;
  std::filesystem::path dir;
  SessionConfig config;
  // The canonical tensors written to the param files: fp16 bits and shape.
  std::map<std::string, std::pair<std::vector<uint16_t>, std::vector<int64_t>>> tensors;

 private:
  // Norm gains 1 + N(0, 0.1), the rest N(0, 0.2) times scale / 0.2 (one distribution for
  // all tensors: it carries state from one draw to the next).
  void make(std::mt19937& rng, const std::string& name, std::vector<int64_t> shape, bool gain,
            float scale = 0.2f) {
    size_t n = 1;
    for (int64_t s : shape) n *= size_t(s);
    std::vector<uint16_t> v(n);
    for (auto& x : v) {
      const float r = dist_(rng);
      x = float_to_half(gain ? 1.0f + 0.5f * r : scale == 0.2f ? r : r * (scale / 0.2f));
    }
    tensors[name] = {std::move(v), std::move(shape)};
  }
  std::normal_distribution<float> dist_{0.0f, 0.2f};
  // Plans the spec, writes the param files and both programs, and fills `config`.
  void compile(const std::string& tag, uint32_t max_length, uint32_t max_tokens) {
    plan = plan_memory(spec, preset, max_length, max_tokens);
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    dir = std::filesystem::temp_directory_path() /
          ("hdx_" + tag + "_" + std::to_string(::getpid()) + "_" + (info ? info->name() : "x"));
    std::filesystem::create_directories(dir);
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
};

}  // namespace hyperdex::testing
