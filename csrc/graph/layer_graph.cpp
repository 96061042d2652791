#include "graph/layer_graph.h"

#include <utility>

#include "common/error.h"

namespace hyperdex::graph {
namespace {

class Builder {
 public:
  Builder(const ModelSpec& spec, const PassOptions& passes) : s_(spec), p_(passes) {}

  Graph build() {
    prologue();
    for (uint32_t l = 0; l < s_.num_layers; ++l) layer(l);
    epilogue();
    return std::move(g_);
  }

 private:
  // -- the model ---------------------------------------------------------------------------

  void prologue() {
    const uint32_t H = s_.hidden_size;
    matrix("tok_embd", {"tok_embd.weight"}, s_.vocab_size, s_.token_embed_dim(),
           Split::Replicated, false);
    // Tables first: the programs index them, so they sit before the layers.
    if (s_.positions == PositionKind::Learned)
      matrix("pos_embd", {"pos_embd.weight"}, s_.learned_pos_rows, H, Split::Replicated, false);
    for (uint32_t table = 1; table <= 2; ++table) {
      bool used = false;
      for (uint32_t l = 0; l < s_.num_layers; ++l) used = used || s_.rope_of(l) == table;
      if (used)
        declare({rope_table_name(table), WeightKind::RopeTable, 0, s_.rope_dim / 2, {},
                 Split::Replicated, false});
    }

    Step embed = step(StepKind::EmbedTokens, "tok_embd");
    embed.dst = {s_.has_projection() ? Buf::Z : Buf::X};
    embed.n = s_.token_embed_dim();
    add(embed);
    if (s_.has_projection())
      linear("proj_in", {Buf::X}, {Buf::Z}, H, s_.embed_dim, false, Split::Replicated,
             Split::Replicated, ActKind::None, false);
    if (s_.positions == PositionKind::Learned) {
      Step pos = step(StepKind::EmbedPositions, "pos_embd");
      pos.dst = {Buf::X};
      pos.n = H;
      add(pos);
    }
  }

  void layer(uint32_t l) {
    const std::string b = "blk." + std::to_string(l) + ".";
    const uint32_t H = s_.hidden_size, hd = s_.head_dim;
    const uint32_t q = s_.num_heads * hd, kv = s_.num_kv_heads * hd;
    const Slot x{Buf::X}, y{Buf::Y}, qkv{Buf::Qkv}, a{Buf::A};
    layer_ = l;

    // Attention. The normed input (y) is dead once Q/K/V exist.
    Slot attn_in = x;
    if (s_.pre_norm && s_.branch_input_norm) {
      norm(b + "attn_norm", y, x, H);
      attn_in = y;
    }
    if (p_.fuse_qkv) {
      matrix(b + "attn_qkv", {b + "attn_q.weight", b + "attn_k.weight", b + "attn_v.weight"},
             q + 2 * kv, H, Split::Replicated, true);
      if (s_.qkv_bias)
        vector(b + "attn_qkv.bias", {b + "attn_q.bias", b + "attn_k.bias", b + "attn_v.bias"},
               q + 2 * kv, Split::Replicated);
      linear_step(b + "attn_qkv", qkv, attn_in, q + 2 * kv, H, ActKind::None);
    } else {
      linear(b + "attn_q", qkv, attn_in, q, H, s_.qkv_bias, Split::QHeadRows, Split::QHeadRows);
      linear(b + "attn_k", at(qkv, q), attn_in, kv, H, s_.qkv_bias, Split::KvHeadRows,
             Split::KvHeadRows);
      linear(b + "attn_v", at(qkv, q + kv), attn_in, kv, H, s_.qkv_bias, Split::KvHeadRows,
             Split::KvHeadRows);
    }
    if (s_.qk_norm) {
      const uint32_t group = s_.qk_norm_whole ? 0 : hd;
      norm(b + "attn_q_norm", qkv, qkv, q, group, s_.qk_norm_bias, Split::QHeadRows);
      if (s_.qk_norm_whole) g_.steps.back().count = s_.q_norm_count;
      norm(b + "attn_k_norm", at(qkv, q), at(qkv, q), kv, group, s_.qk_norm_bias,
           Split::KvHeadRows);
      if (s_.qk_norm_whole) g_.steps.back().count = s_.k_norm_count;
    }
    // The clamp follows the q/k norms (OLMoE clamps the normed q and k; OLMo has no q/k norm).
    if (s_.clip_qkv > 0.0f) {
      Step clip = step(StepKind::Clip);
      clip.dst = clip.src = qkv;
      clip.n = q + 2 * kv;
      clip.value = s_.clip_qkv;
      add(clip);
    }
    if (const uint32_t table = s_.rope_of(l)) {
      Step rope = step(StepKind::Rope, rope_table_name(table));
      rope.dst = qkv;
      rope.n = s_.num_heads + s_.num_kv_heads;
      add(rope);
    }
    Step store = step(StepKind::KvStore, b);
    store.dst = at(qkv, q);
    store.src = at(qkv, q + kv);
    add(store);
    Step attn = step(StepKind::Attention, b);
    attn.dst = a;
    attn.src = qkv;
    attn.n = s_.window(l);
    attn.value = s_.attn_softcap;
    add(attn);

    if (s_.parallel_block) {
      // Both branches read the layer input: the MLP's input is made (and its up projection
      // run) before the attention output changes x; then both add to x.
      if (!s_.shared_norm) norm(b + "ffn_norm", y, x, H);
      mlp(b, y);
      add_linear(b + "attn_output", a, H, q, s_.attn_out_bias, Split::QHeadColumns);
      add_linear(b + "ffn_down", {Buf::F1}, H, s_.intermediate_size, s_.mlp_bias,
                 Split::FfnColumns);
      return;
    }
    branch_out(b + "attn_output", b + "attn_post_norm", a, q, s_.attn_out_bias,
               Split::QHeadColumns);
    if (!s_.pre_norm) norm(b + "attn_norm", x, x, H);
    Slot mlp_in = x;
    if (s_.pre_norm && s_.branch_input_norm) {
      norm(b + "ffn_norm", y, x, H);
      mlp_in = y;
    }
    if (s_.moe()) return experts(b, mlp_in);
    mlp(b, mlp_in);
    branch_out(b + "ffn_down", b + "ffn_post_norm", {Buf::F1}, s_.intermediate_size, s_.mlp_bias,
               Split::FfnColumns);
    if (!s_.pre_norm) norm(b + "ffn_norm", x, x, H);
  }

  // A mixture of experts: the router's logits, the token's k picks, then per pick the
  // expert's gated MLP and its down projection, weighted, summed in M; M joins x once (after
  // the ring's sum of the devices' partial sums). Each expert is a block of its own in the
  // regions, so a pick streams only that expert's rows.
  void experts(const std::string& b, Slot in) {
    const uint32_t H = s_.hidden_size, ff = s_.intermediate_size, E = s_.num_experts;
    const Slot f1{Buf::F1}, m{Buf::M};
    matrix(b + "ffn_router", {b + "ffn_router.weight"}, E, H, Split::Replicated, false);
    Step router = step(StepKind::Router, b + "ffn_router");
    router.dst = {Buf::R};
    router.src = in;
    router.n = E;
    router.k = H;
    add(router);
    Step topk = step(StepKind::TopK);
    topk.dst = topk.src = {Buf::R};
    topk.n = E;
    topk.k = s_.experts_per_token;
    topk.renormalize = s_.router_renormalize;
    add(topk);

    auto per_expert = [&](const char* what) {
      std::vector<std::string> names;
      for (uint32_t e = 0; e < E; ++e)
        names.push_back(b + what + "." + std::to_string(e) + ".weight");
      return names;
    };
    auto expert_matrix = [&](const std::string& name, std::vector<std::string> sources,
                             uint32_t rows, uint32_t cols, Split split) {
      declare({name, WeightKind::Matrix, rows, cols, std::move(sources), split, true, E});
    };
    if (p_.fuse_gate_up) {
      std::vector<std::string> sources;  // each expert's gate rows then its up rows
      const auto gates = per_expert("ffn_gate"), ups = per_expert("ffn_up");
      for (uint32_t e = 0; e < E; ++e) {
        sources.push_back(gates[e]);
        sources.push_back(ups[e]);
      }
      expert_matrix(b + "ffn_gate_up_exps", std::move(sources), E * 2 * ff, H, Split::Replicated);
    } else {
      expert_matrix(b + "ffn_gate_exps", per_expert("ffn_gate"), E * ff, H, Split::FfnRows);
      expert_matrix(b + "ffn_up_exps", per_expert("ffn_up"), E * ff, H, Split::FfnRows);
    }
    expert_matrix(b + "ffn_down_exps", per_expert("ffn_down"), E * H, ff, Split::FfnColumns);

    for (uint32_t pick = 0; pick < s_.experts_per_token; ++pick) {
      auto expert_step = [&](StepKind kind, const std::string& weight, Slot dst, Slot src,
                             uint32_t n, uint32_t k, ActKind act) {
        Step st = step(kind, weight);
        st.dst = dst;
        st.src = src;
        st.n = n;
        st.k = k;
        st.act = act;
        st.experts = E;
        st.pick = pick;
        add(st);
      };
      if (p_.fuse_gate_up) {
        expert_step(StepKind::ExpertGatedMlp, b + "ffn_gate_up_exps", f1, in, ff, H, s_.act);
      } else {
        expert_step(StepKind::ExpertLinear, b + "ffn_gate_exps", f1, in, ff, H, s_.act);
        expert_step(StepKind::ExpertLinear, b + "ffn_up_exps", at(f1, ff), in, ff, H,
                    ActKind::None);
        Step mul = step(StepKind::Mul);
        mul.dst = f1;
        mul.src = at(f1, ff);
        mul.n = ff;
        add(mul);
      }
      expert_step(StepKind::ExpertDown, b + "ffn_down_exps", m, f1, H, ff, ActKind::None);
    }
    Step sum = step(StepKind::AddReduced);
    sum.dst = {Buf::X};
    sum.src = m;
    sum.n = H;
    add(sum);
  }

  // The MLP up to its down projection: F1 = act(up) or act(gate) * up.
  void mlp(const std::string& b, Slot in) {
    const uint32_t H = s_.hidden_size, ff = s_.intermediate_size;
    const Slot f1{Buf::F1};
    if (!s_.gated_mlp) {
      linear(b + "ffn_up", f1, in, ff, H, s_.mlp_bias, Split::FfnRows, Split::FfnRows, s_.act);
      return;
    }
    if (p_.fuse_gate_up) {
      // Gate rows then up rows: one stream for the GLU epilogue (docs/isa.md).
      matrix(b + "ffn_gate_up", {b + "ffn_gate.weight", b + "ffn_up.weight"}, 2 * ff, H,
             Split::Replicated, true);
      if (s_.mlp_bias)
        vector(b + "ffn_gate_up.bias", {b + "ffn_gate.bias", b + "ffn_up.bias"}, 2 * ff,
               Split::Replicated);
      Step glu = step(StepKind::GatedMlp, b + "ffn_gate_up");
      glu.dst = f1;
      glu.src = in;
      glu.n = ff;
      glu.k = H;
      glu.act = s_.act;
      add(glu);
      return;
    }
    // The gate and up projections beside each other in F1's row, then their product.
    linear(b + "ffn_gate", f1, in, ff, H, s_.mlp_bias, Split::FfnRows, Split::FfnRows, s_.act);
    linear(b + "ffn_up", at(f1, ff), in, ff, H, s_.mlp_bias, Split::FfnRows, Split::FfnRows);
    Step mul = step(StepKind::Mul);
    mul.dst = f1;
    mul.src = at(f1, ff);
    mul.n = ff;
    add(mul);
  }

  void epilogue() {
    const uint32_t H = s_.hidden_size;
    Slot head_in{Buf::X};
    if (s_.final_norm) {
      norm("output_norm", {Buf::Y}, head_in, H);
      head_in = {Buf::Y};
    }
    if (s_.has_projection()) {
      linear("proj_out", {Buf::Z}, head_in, s_.embed_dim, H, false, Split::Replicated,
             Split::Replicated, ActKind::None, false);
      head_in = {Buf::Z};
    }
    if (s_.separate_head())
      matrix("output", {"output.weight"}, s_.logits_size(), s_.token_embed_dim(),
             Split::VocabRows, s_.quantize_lm_head);
    if (s_.lm_head_bias) vector("output.bias", {"output.bias"}, s_.logits_size(), Split::VocabRows);
    Step head = step(StepKind::Head, s_.separate_head() ? "output" : "tok_embd");
    head.src = head_in;
    head.n = s_.logits_size();
    head.k = s_.token_embed_dim();
    head.value = s_.logit_scale;
    head.cap = s_.final_logit_softcap;
    add(head);
  }

  // -- building blocks ---------------------------------------------------------------------

  static Slot at(Slot s, uint32_t elems) { return {s.buf, s.elems + elems}; }
  static Step step(StepKind kind, std::string weight = {}) {
    Step st;
    st.kind = kind;
    st.weight = std::move(weight);
    return st;
  }

  void declare(Weight w) {
    if (!g_.find(w.name)) g_.weights.push_back(std::move(w));
  }
  void matrix(const std::string& name, std::vector<std::string> sources, uint32_t rows,
              uint32_t cols, Split split, bool quantize) {
    declare({name, WeightKind::Matrix, rows, cols, std::move(sources), split, quantize});
  }
  void vector(const std::string& name, std::vector<std::string> sources, uint32_t len,
              Split split) {
    declare({name, WeightKind::Vector, len, 0, std::move(sources), split, false});
  }
  void add(Step st) {
    st.layer = layer_;
    g_.steps.push_back(std::move(st));
  }

  // One of the model's norms over the hidden size (a LayerNorm's beta as the spec says).
  void norm(const std::string& name, Slot dst, Slot src, uint32_t n) {
    norm(name, dst, src, n, 0, s_.norm == NormKind::LayerNorm && s_.norm_bias,
         Split::Replicated);
  }
  // A norm of `n` elements in groups of `group` (0: all), of this model's norm kind.
  void norm(const std::string& name, Slot dst, Slot src, uint32_t n, uint32_t group, bool bias,
            Split split) {
    vector(name + ".weight", {name + ".weight"}, n, split);
    if (bias) vector(name + ".bias", {name + ".bias"}, n, split);
    Step st = step(StepKind::Norm, name);
    st.dst = dst;
    st.src = src;
    st.n = n;
    st.group = group;
    add(st);
  }
  void linear(const std::string& name, Slot dst, Slot src, uint32_t out, uint32_t in, bool bias,
              Split split, Split bias_split, ActKind act = ActKind::None, bool quantize = true) {
    matrix(name, {name + ".weight"}, out, in, split, quantize);
    if (bias) vector(name + ".bias", {name + ".bias"}, out, bias_split);
    linear_step(name, dst, src, out, in, act);
  }
  void linear_step(const std::string& name, Slot dst, Slot src, uint32_t out, uint32_t in,
                   ActKind act) {
    Step st = step(StepKind::Linear, name);
    st.dst = dst;
    st.src = src;
    st.n = out;
    st.k = in;
    st.act = act;
    add(st);
  }
  // A branch's row-parallel output projection into the residual stream: added directly, or
  // (branch_output_norm) reduced into Y, normed there by `post_norm`, then added.
  void branch_out(const std::string& name, const std::string& post_norm, Slot src, uint32_t in,
                  bool bias, Split split) {
    const uint32_t H = s_.hidden_size;
    if (!s_.branch_output_norm) return add_linear(name, src, H, in, bias, split);
    row_parallel(StepKind::ReduceLinear, name, {Buf::Y}, src, H, in, bias, split);
    norm(post_norm, {Buf::Y}, {Buf::Y}, H);
    Step sum = step(StepKind::Add);
    sum.dst = {Buf::X};
    sum.src = {Buf::Y};
    sum.n = H;
    add(sum);
  }

  // A row-parallel projection added to the residual stream (its bias added once).
  void add_linear(const std::string& name, Slot src, uint32_t out, uint32_t in, bool bias,
                  Split split) {
    row_parallel(StepKind::AddLinear, name, {Buf::X}, src, out, in, bias, split);
  }

  // A row-parallel projection's weights (its bias replicated: added once, after the sum)
  // and the step that runs it.
  void row_parallel(StepKind kind, const std::string& name, Slot dst, Slot src, uint32_t out,
                    uint32_t in, bool bias, Split split) {
    matrix(name, {name + ".weight"}, out, in, split, true);
    if (bias) vector(name + ".bias", {name + ".bias"}, out, Split::Replicated);
    Step st = step(kind, name);
    st.dst = dst;
    st.src = src;
    st.n = out;
    st.k = in;
    add(st);
  }

  const ModelSpec& s_;
  const PassOptions& p_;
  Graph g_;
  uint32_t layer_ = 0;
};

}  // namespace

const char* split_name(Split s) {
  switch (s) {
    case Split::Replicated: return "replicated";
    case Split::QHeadRows: return "q_head_rows";
    case Split::KvHeadRows: return "kv_head_rows";
    case Split::QHeadColumns: return "q_head_columns";
    case Split::FfnRows: return "ffn_rows";
    case Split::FfnColumns: return "ffn_columns";
    case Split::VocabRows: return "vocab_rows";
  }
  return "?";
}

const char* rope_table_name(uint32_t table) {
  return table == 2 ? "rope_table_local" : "rope_table";
}

const Weight* Graph::find(const std::string& name) const {
  for (const auto& w : weights)
    if (w.name == name) return &w;
  return nullptr;
}

Graph build_graph(const ModelSpec& spec, const PassOptions& passes) {
  spec.validate();
  return Builder(spec, passes).build();
}

std::vector<Tensor> model_tensors(const ModelSpec& spec) {
  // The checkpoint's view: fp16, unfused, the head tied or not as the model says.
  ModelSpec fp16 = spec;
  fp16.weight_bits = 16;
  fp16.group_size = 0;
  fp16.quantize_lm_head = false;
  PassOptions unfused;
  unfused.fuse_qkv = false;
  unfused.fuse_gate_up = false;
  std::vector<Tensor> out;
  for (const Weight& w : build_graph(fp16, unfused).weights) {
    if (w.kind == WeightKind::RopeTable) continue;
    if (w.experts) {  // one tensor per expert
      for (const std::string& source : w.sources)
        out.push_back(Tensor{source, {w.rows / w.experts, w.cols}, w.split, w.quantize});
      continue;
    }
    if (w.sources.size() != 1)
      throw SpecError("layer graph: unfused region " + w.name + " has " +
                      std::to_string(w.sources.size()) + " sources");
    Tensor t{w.sources[0], {}, w.split, w.quantize};
    t.shape = w.kind == WeightKind::Matrix ? std::vector<uint32_t>{w.rows, w.cols}
                                           : std::vector<uint32_t>{w.rows};
    out.push_back(std::move(t));
  }
  return out;
}

}  // namespace hyperdex::graph
