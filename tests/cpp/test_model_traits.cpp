// Whole tiny models with the newer architectures' traits, compiled (plan, param files,
// programs) and run on the emulator through a Session, against a reference forward pass
// written here from the model's definition: the sandwich norms of Gemma 2/3 (with the
// input norms) and of OLMo 2 / EXAONE 4 (without), per-layer rotary tables (NoPE layers,
// Gemma 3's local table) and the score and logit soft-caps; a mixture of experts (router,
// top-k picks, weighted experts) and the weight bytes a decode step of it streams.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <fstream>
#include <iterator>
#include <memory>
#include <string>
#include <vector>

#include "common/fp16.h"
#include "cost/cost_model.h"
#include "emu/emulator.h"
#include "runtime/session.h"
#include "test_compiled.h"

using namespace hyperdex;
using hyperdex::testing::CompiledTiny;

namespace {

constexpr uint32_t kChannels = 4;
constexpr uint32_t kMaxLength = 16;
constexpr uint32_t kChunk = 4;  // prefill rows per run: a 7-token prompt takes two runs

float round16(double v) { return half_to_float(float_to_half(float(v))); }

// What the reference computes; each field off is a deliberately wrong model, to show the
// emulator's logits are far from it (so the comparison can fail).
struct Variant {
  bool input_norm = true;    // as the spec says (false: the opposite)
  bool post_norm = true;
  bool attn_cap = true;
  bool final_cap = true;
  bool layer_rope = true;    // false: every layer on the global table (NoPE ones too)
  bool renormalize = true;   // the routing weights as the spec says (false: the opposite)
  int top_k_delta = 0;       // experts picked per token: the spec's plus this
};

// The model of docs/architecture.md's layer graph for a gated RMSNorm Llama-shaped spec, in
// double, rounded to fp16 where the instructions round (docs/isa.md), token by token.
class Reference {
 public:
  Reference(const CompiledTiny& m, Variant v) : m_(m), s_(m.spec), v_(v) {
    k_.resize(s_.num_layers);
    vv_.resize(s_.num_layers);
  }

  // Logits of the token at the next position.
  std::vector<double> step(int32_t id) {
    const uint32_t H = s_.hidden_size, pos = pos_++;
    const auto emb = w("tok_embd.weight");
    std::vector<double> x(emb.begin() + size_t(id) * H, emb.begin() + size_t(id + 1) * H);
    const bool input_norm = v_.input_norm ? s_.branch_input_norm : !s_.branch_input_norm;
    for (uint32_t l = 0; l < s_.num_layers; ++l) {
      const std::string b = "blk." + std::to_string(l) + ".";
      const auto in = input_norm ? rms(x, norm_gain(b + "attn_norm.weight")) : x;
      const auto q = matvec(b + "attn_q.weight", in), k = matvec(b + "attn_k.weight", in),
                 val = matvec(b + "attn_v.weight", in);
      uint32_t table = s_.rope_of(l);
      if (!v_.layer_rope) table = 1;
      auto qr = rope(q, s_.num_heads, pos, table), kr = rope(k, s_.num_kv_heads, pos, table);
      k_[l].push_back(kr);
      vv_[l].push_back(val);
      const auto o = attention(l, qr);
      branch(x, matvec(b + "attn_output.weight", o), b + "attn_post_norm.weight");
      const auto min = input_norm ? rms(x, norm_gain(b + "ffn_norm.weight")) : x;
      if (s_.moe()) {
        const auto m = experts(b, min);
        for (size_t j = 0; j < x.size(); ++j) x[j] = round16(x[j] + m[j]);
        continue;
      }
      branch(x, matvec(b + "ffn_down.weight", gated_mlp(b + "ffn_gate", b + "ffn_up", min)),
             b + "ffn_post_norm.weight");
    }
    const auto y = rms(x, w("output_norm.weight"));
    std::vector<double> logits(s_.vocab_size);
    for (uint32_t r = 0; r < s_.vocab_size; ++r) {
      double d = 0;
      for (uint32_t j = 0; j < H; ++j) d += emb[size_t(r) * H + j] * y[j];
      const double c = s_.final_logit_softcap;
      logits[r] = v_.final_cap && c > 0 ? c * std::tanh(d / c) : d;
    }
    return logits;
  }

 private:
  std::vector<double> gated_mlp(const std::string& gate_name, const std::string& up_name,
                                const std::vector<double>& in) const {
    const auto gate = matvec(gate_name + ".weight", in), up = matvec(up_name + ".weight", in);
    std::vector<double> f(gate.size());
    for (size_t j = 0; j < f.size(); ++j)
      f[j] = round16(round16(gate[j] / (1.0 + std::exp(-gate[j]))) * up[j]);
    return f;
  }
  // The mixture: fp32 router logits (unrounded), softmax, the k most probable experts (ties
  // to the lower index), each expert's output times its weight, summed in pick order.
  std::vector<double> experts(const std::string& b, const std::vector<double>& in) const {
    const auto R = w(b + "ffn_router.weight");
    const uint32_t E = s_.num_experts, H = s_.hidden_size;
    std::vector<double> p(E);
    double mx = -1e300, sum = 0;
    for (uint32_t e = 0; e < E; ++e) {
      double d = 0;
      for (uint32_t j = 0; j < H; ++j) d += R[size_t(e) * H + j] * in[j];
      mx = std::max(mx, p[e] = d);
    }
    for (double& e : p) sum += (e = std::exp(e - mx));
    for (double& e : p) e /= sum;
    const uint32_t k = uint32_t(int(s_.experts_per_token) + v_.top_k_delta);
    std::vector<uint32_t> order(E);
    for (uint32_t e = 0; e < E; ++e) order[e] = e;
    std::stable_sort(order.begin(), order.end(), [&](uint32_t a, uint32_t c) { return p[a] > p[c]; });
    const bool renormalize = v_.renormalize ? s_.router_renormalize : !s_.router_renormalize;
    double picked = 0;
    for (uint32_t i = 0; i < k; ++i) picked += p[order[i]];
    std::vector<double> m(H, 0.0);
    for (uint32_t i = 0; i < k; ++i) {
      const std::string e = "." + std::to_string(order[i]);
      const auto d = matvec(b + "ffn_down" + e + ".weight",
                            gated_mlp(b + "ffn_gate" + e, b + "ffn_up" + e, in));
      const double weight = renormalize ? p[order[i]] / picked : p[order[i]];
      for (uint32_t j = 0; j < H; ++j) {
        const double scaled = round16(d[j] * weight);
        m[j] = i == 0 ? scaled : round16(m[j] + scaled);
      }
    }
    return m;
  }
  std::vector<double> w(const std::string& name) const {
    const auto f = m_.values(name);
    return std::vector<double>(f.begin(), f.end());
  }
  // A norm's gain, or ones where the model has none (a wrong variant's extra norm).
  std::vector<double> norm_gain(const std::string& name) const {
    if (m_.tensors.count(name)) return w(name);
    return std::vector<double>(s_.hidden_size, 1.0);
  }
  std::vector<double> rms(const std::vector<double>& x, const std::vector<double>& gain) const {
    double ms = 0;
    for (double e : x) ms += e * e;
    const double r = 1.0 / std::sqrt(ms / double(x.size()) + double(s_.norm_eps));
    std::vector<double> y(x.size());
    for (size_t j = 0; j < x.size(); ++j) y[j] = round16(x[j] * r * gain[j]);
    return y;
  }
  std::vector<double> matvec(const std::string& name, const std::vector<double>& x) const {
    const auto W = w(name);
    const size_t in = x.size(), out = W.size() / in;
    std::vector<double> y(out);
    for (size_t r = 0; r < out; ++r) {
      double d = 0;
      for (size_t j = 0; j < in; ++j) d += W[r * in + j] * x[j];
      y[r] = round16(d);
    }
    return y;
  }
  // x += post_norm(branch) with the sandwich, else x += branch; one rounding.
  void branch(std::vector<double>& x, const std::vector<double>& out, const std::string& post) const {
    const bool norm = v_.post_norm && s_.branch_output_norm;
    const auto y = norm ? rms(out, w(post)) : out;
    for (size_t j = 0; j < x.size(); ++j) x[j] = round16(x[j] + y[j]);
  }
  // NeoX rotation of `heads` heads by the angles of `table` (0: none) at `pos`; the local
  // table has its own frequencies and never the attention factor.
  std::vector<double> rope(std::vector<double> v, uint32_t heads, uint32_t pos, uint32_t table) const {
    if (table == 0) return v;
    const uint32_t hd = s_.head_dim, half = s_.rope_dim / 2;
    const auto& freq = table == 2 ? s_.rope_local_inv_freq : s_.rope_inv_freq;
    const double factor = table == 2 ? 1.0 : double(s_.rope_attention_factor);
    for (uint32_t h = 0; h < heads; ++h)
      for (uint32_t i = 0; i < half; ++i) {
        const double a = double(pos) * double(freq[i]);
        const double c = std::cos(a) * factor, sn = std::sin(a) * factor;
        double& x1 = v[h * hd + i];
        double& x2 = v[h * hd + i + half];
        const double n1 = round16(x1 * c - x2 * sn), n2 = round16(x2 * c + x1 * sn);
        x1 = n1;
        x2 = n2;
      }
    return v;
  }
  std::vector<double> attention(uint32_t l, const std::vector<double>& q) const {
    const uint32_t hd = s_.head_dim, group = s_.num_heads / s_.num_kv_heads;
    const double scale = s_.effective_attn_scale(), cap = v_.attn_cap ? s_.attn_softcap : 0.0;
    std::vector<double> o(size_t(s_.num_heads) * hd);
    const size_t keys = k_[l].size();
    for (uint32_t h = 0; h < s_.num_heads; ++h) {
      const uint32_t g = h / group;
      std::vector<double> sc(keys);
      double mx = -1e300, sum = 0;
      for (size_t j = 0; j < keys; ++j) {
        double d = 0;
        for (uint32_t i = 0; i < hd; ++i) d += q[h * hd + i] * k_[l][j][g * hd + i];
        d *= scale;
        sc[j] = cap > 0 ? cap * std::tanh(d / cap) : d;
        mx = std::max(mx, sc[j]);
      }
      for (double& e : sc) sum += (e = std::exp(e - mx));
      for (uint32_t i = 0; i < hd; ++i) {
        double acc = 0;
        for (size_t j = 0; j < keys; ++j) acc += sc[j] / sum * vv_[l][j][g * hd + i];
        o[h * hd + i] = round16(acc);
      }
    }
    return o;
  }

  const CompiledTiny& m_;
  const ModelSpec& s_;
  Variant v_;
  uint32_t pos_ = 0;
  std::vector<std::vector<std::vector<double>>> k_, vv_;  // [layer][position][kv * hd]
};

std::vector<float> local_inv_freq(uint32_t rope_dim) {
  std::vector<float> f;
  for (uint32_t i = 0; i < rope_dim / 2; ++i)
    f.push_back(float(std::pow(10.0, -double(2 * i) / rope_dim)));
  return f;
}

// Gemma 2/3: sandwich norms with input norms, a local rotary table on layer 0, score and
// logit soft-caps small enough to bend most values.
ModelSpec gemma_like() {
  ModelSpec s = hyperdex::testing::tiny_llama();
  s.architecture = "Gemma3ForCausalLM";
  s.branch_output_norm = true;
  s.layer_rope = {2, 1};
  s.rope_local_inv_freq = local_inv_freq(s.rope_dim);
  s.attn_softcap = 1.0f;
  s.final_logit_softcap = 1.0f;
  return s;
}

// OLMo 2 / EXAONE 4: only the post norms; layer 0 without rotary (NoPE).
ModelSpec olmo2_like() {
  ModelSpec s = hyperdex::testing::tiny_llama();
  s.architecture = "Olmo2ForCausalLM";
  s.branch_input_norm = false;
  s.branch_output_norm = true;
  s.layer_rope = {0, 1};
  return s;
}

// A mixture of 5 experts, 2 picked per token (renormalized), on Llama's attention; each
// expert's gate | up block (2 x 21 rows) is not a multiple of the 4 channels, so the plan pads.
ModelSpec mixtral_like() {
  ModelSpec s = hyperdex::testing::tiny_llama();
  s.architecture = "MixtralForCausalLM";
  s.intermediate_size = 21;
  s.num_experts = 5;
  s.experts_per_token = 2;
  s.router_renormalize = true;
  return s;
}

double max_diff(const std::vector<float>& got, const std::vector<double>& want) {
  double d = 0;
  for (size_t j = 0; j < want.size(); ++j) d = std::max(d, std::fabs(double(got[j]) - want[j]));
  return d;
}

// Prefills 7 tokens (two runs) with every row's logits, then decodes one; returns the 8
// logit rows.
std::vector<std::vector<float>> run_on_emulator(const CompiledTiny& m) {
  Session s(std::make_unique<emu::Emulator>(m.preset, 2), m.config);
  EXPECT_EQ(s.prefill_chunk(), kChunk);
  const auto ids = m.prompt(7);
  const uint32_t V = m.spec.vocab_size;
  std::vector<float> all(size_t(ids.size()) * V);
  s.prefill(ids.data(), uint32_t(ids.size()), true, all.data());
  std::vector<std::vector<float>> rows;
  for (size_t t = 0; t < ids.size(); ++t) rows.emplace_back(all.begin() + t * V, all.begin() + (t + 1) * V);
  std::vector<float> next(V);
  s.decode(42, next.data());
  rows.push_back(next);
  return rows;
}

std::vector<std::vector<double>> run_reference(const CompiledTiny& m, Variant v) {
  Reference ref(m, v);
  auto ids = m.prompt(7);
  ids.push_back(42);
  std::vector<std::vector<double>> rows;
  for (int32_t id : ids) rows.push_back(ref.step(id));
  return rows;
}

// The largest difference over all rows (from row `first` on) between the emulator's logits
// and the reference of variant `v`.
double distance(const CompiledTiny& m, const std::vector<std::vector<float>>& got, Variant v,
                size_t first = 0) {
  const auto want = run_reference(m, v);
  double d = 0;
  for (size_t t = first; t < got.size(); ++t) d = std::max(d, max_diff(got[t], want[t]));
  return d;
}

constexpr double kTolerance = 1e-2;  // fp16 roundings in a different order, two layers deep

}  // namespace

TEST(ModelTraits, GemmaSandwichLocalRopeAndSoftCapsRunAsTheReference) {
  CompiledTiny m("traits_gemma", gemma_like(), kChannels, kMaxLength, kChunk);
  const auto got = run_on_emulator(m);
  for (const auto& row : got)
    for (float v : row) ASSERT_LE(std::fabs(v), 1.0f) << "the final soft-cap bounds every logit";
  const double right = distance(m, got, Variant{});
  EXPECT_LT(right, kTolerance);
  // Each trait changes the logits far beyond that: the emulator really applies it.
  Variant no_post;
  no_post.post_norm = false;
  Variant no_attn_cap;
  no_attn_cap.attn_cap = false;
  Variant no_final_cap;
  no_final_cap.final_cap = false;
  Variant global_rope;
  global_rope.layer_rope = false;
  Variant no_input_norm;
  no_input_norm.input_norm = false;
  for (const auto& [name, v] : {std::pair<const char*, Variant>{"no post norms", no_post},
                                {"no score cap", no_attn_cap},
                                {"no logit cap", no_final_cap},
                                {"global table on layer 0", global_rope},
                                {"no input norms", no_input_norm}}) {
    const double wrong = distance(m, got, v);
    EXPECT_GT(wrong, 5 * kTolerance) << name << " (right: " << right << ")";
  }
}

TEST(ModelTraits, Olmo2PostNormsOnlyAndANopeLayerRunAsTheReference) {
  CompiledTiny m("traits_olmo2", olmo2_like(), kChannels, kMaxLength, kChunk);
  EXPECT_EQ(m.tensors.count("blk.0.attn_norm.weight"), 0u);
  EXPECT_EQ(m.tensors.count("blk.0.attn_post_norm.weight"), 1u);
  const auto got = run_on_emulator(m);
  const double right = distance(m, got, Variant{});
  EXPECT_LT(right, kTolerance);
  Variant no_post;
  no_post.post_norm = false;
  Variant with_input_norm;  // an input norm of gain 1 where the model has none
  with_input_norm.input_norm = false;
  Variant rope_everywhere;  // layer 0 rotated as well
  rope_everywhere.layer_rope = false;
  EXPECT_GT(distance(m, got, no_post), 5 * kTolerance) << right;
  EXPECT_GT(distance(m, got, with_input_norm), 5 * kTolerance) << right;
  // Position 0 rotates by angle 0: only later positions tell a NoPE layer apart.
  EXPECT_GT(distance(m, got, rope_everywhere, 1), 5 * kTolerance) << right;
}

// The param files hold each rotary table's rows where the plan puts them: the local table
// rope_table_row(spec, r, 2), the global one table 1.
TEST(ModelTraits, ParamFilesHoldBothRotaryTables) {
  ModelSpec s = gemma_like();
  s.rope_attention_factor = 0.5f;  // table 1 only
  CompiledTiny m("traits_rope_files", s, kChannels, kMaxLength, kChunk);
  ASSERT_EQ(m.config.params.size(), kChannels);
  std::vector<std::vector<char>> files;
  for (const auto& p : m.config.params) {
    std::ifstream f(p.path, std::ios::binary);
    files.emplace_back(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
    ASSERT_EQ(files.back().size(), m.plan.weights_bytes) << p.path;
  }
  const uint32_t half = s.rope_dim / 2;
  size_t differ = 0;
  for (const auto& [name, table] : {std::pair<const char*, uint32_t>{"rope_table", 1}, {"rope_table_local", 2}}) {
    const Region& r = m.plan.find(name);
    ASSERT_EQ(r.rows, kMaxLength);
    for (uint32_t row = 0; row < r.rows; ++row) {
      const auto& file = files[row % kChannels];
      const uint64_t at = r.base + uint64_t(row / kChannels) * r.row_bytes;
      ASSERT_LE(at + half * 8, file.size());
      std::vector<float> got(2 * half);
      std::memcpy(got.data(), file.data() + at, half * 8);
      EXPECT_EQ(got, rope_table_row(s, row, table)) << name << " row " << row;
      const auto other = rope_table_row(s, row, 3 - table);
      differ += got != other;
    }
  }
  EXPECT_EQ(differ, 2u * kMaxLength);  // every row differs between the tables (factor, frequencies)
}

TEST(ModelTraits, MixtureOfExpertsRunsAsTheReference) {
  // A larger scale spreads the router's probabilities, so the picks are clear choices.
  for (const bool renormalize : {true, false}) {
    ModelSpec s = mixtral_like();
    s.router_renormalize = renormalize;
    CompiledTiny m("traits_moe", s, kChannels, kMaxLength, kChunk, 0.4f);
    const Region& gate_up = m.plan.find("blk.0.ffn_gate_up_exps");
    EXPECT_EQ(gate_up.experts, 5u);
    EXPECT_EQ(gate_up.expert_rows, 42u);
    EXPECT_EQ(gate_up.rows, 5u * 44u) << "each expert's block padded to a multiple of 4 channels";
    const auto got = run_on_emulator(m);
    const double right = distance(m, got, Variant{});
    EXPECT_LT(right, kTolerance) << "renormalize " << renormalize;
    Variant other_weights;
    other_weights.renormalize = false;
    Variant one_more;
    one_more.top_k_delta = 1;
    Variant one_fewer;
    one_fewer.top_k_delta = -1;
    EXPECT_GT(distance(m, got, other_weights), 5 * kTolerance) << right;
    EXPECT_GT(distance(m, got, one_more), 5 * kTolerance) << right;
    EXPECT_GT(distance(m, got, one_fewer), 5 * kTolerance) << right;
  }
}

// A decode step streams the router and the picked experts' rows only: the emulator's count of
// weight bytes equals the cost model's, and both are the dense regions plus k of E experts.
TEST(ModelTraits, MixtureDecodeStreamsOnlyThePickedExperts) {
  const ModelSpec s = mixtral_like();
  CompiledTiny m("traits_moe_bytes", s, kChannels, kMaxLength, kChunk, 0.4f);
  Session session(std::make_unique<emu::Emulator>(m.preset, 2), m.config);
  const auto ids = m.prompt(5);
  std::vector<float> logits(s.vocab_size);
  session.prefill(ids.data(), uint32_t(ids.size()), false, logits.data());
  session.decode(7, logits.data());
  const uint64_t read = dynamic_cast<emu::Emulator&>(session.device()).weight_bytes_read();

  const isa::Program decode = isa::load_program(m.config.decode_path);
  const cost::RunCost cost = cost::CostModel(decode, m.preset).run(RunArgs{5, 1, false, true});
  EXPECT_EQ(read, cost.weight_bytes);

  // Every matrix region once (the tied table as the LM head), but an expert region: k of its
  // experts' rows.
  ASSERT_TRUE(s.tie_word_embeddings);
  uint64_t want = 0, all = 0;
  for (const Region& r : m.plan.regions) {
    if (r.kind != RegionKind::Matrix) continue;
    const uint64_t rows = r.experts ? uint64_t(s.experts_per_token) * r.expert_rows : r.rows;
    want += rows * r.row_bytes;
    all += uint64_t(r.experts ? r.experts * r.expert_rows : r.rows) * r.row_bytes;
  }
  EXPECT_EQ(read, want);
  EXPECT_EQ(all - read, 3u * 2u * (m.plan.find("blk.0.ffn_gate_up_exps").expert_rows *
                                       m.plan.find("blk.0.ffn_gate_up_exps").row_bytes +
                                   m.plan.find("blk.0.ffn_down_exps").expert_rows *
                                       m.plan.find("blk.0.ffn_down_exps").row_bytes))
      << "3 of the 5 experts of each of the 2 layers are never read";
}
