#include "instgen/instgen.h"

#include <algorithm>
#include <string>

#include "common/bounds.h"
#include "common/error.h"
#include "graph/layer_graph.h"

namespace hyperdex {
namespace {

using isa::Instruction;
using isa::Opcode;
using isa::Operand;
using isa::Space;

uint32_t round32(uint32_t n) { return (n + 31) / 32 * 32; }

// An all-reduce travels in chunks of about this many bytes: big enough that the
// per-hop latency stays small against the transfer, small enough that a prefill
// chunk's reduction overlaps the MATMUL producing it (decode rows fit in one).
constexpr uint64_t kRingChunkBytes = 64 * 1024;

Operand shifted(Operand o, uint32_t elements) {
  o.offset += elements * 2;
  return o;
}

// The activation buffers of one token row, in on-chip memory.
struct Buffers {
  uint32_t hidden, normed, qkv, attn, ffn, proj;  // widths (elements, rounded to 32)
  uint32_t router = 0;  // a mixture's: fp32 logits [experts], then k (int32, fp32) picks
  Operand x, y, qkv_buf, a, f1, z, r, m;  // f1: a gated MLP's gate | up in one row
  uint64_t bytes = 0;

  Buffers(const ModelSpec& s, uint32_t tokens) {
    const uint32_t q = s.num_heads * s.head_dim, kv = s.num_kv_heads * s.head_dim;
    hidden = round32(s.hidden_size);
    normed = round32(std::max(s.hidden_size, s.token_embed_dim()));
    qkv = round32(q + 2 * kv);
    attn = round32(q);
    ffn = round32(s.intermediate_size);
    proj = s.has_projection() ? round32(s.embed_dim) : 0;
    x = take(hidden, tokens);
    y = take(normed, tokens);
    qkv_buf = take(qkv, tokens);
    a = take(attn, tokens);
    // A gated MLP's gate and up outputs share a row (gate, then up), so one MATMUL
    // over the fused gate/up region can write both (PassOptions::fuse_gate_up).
    f1 = take(s.gated_mlp ? 2 * ffn : ffn, tokens);
    z = proj ? take(proj, tokens) : Operand{};
    if (s.moe()) {
      router = round32(2 * s.num_experts + 4 * s.experts_per_token);
      r = take(router, tokens);
      m = take(hidden, tokens);
    }
  }

  // R's fp32 router logits and its picks (int32 expert, fp32 weight): 4-byte elements, so
  // their strides count 4 bytes (half R's fp16 width).
  Operand router_logits() const { return Operand{r.space, r.offset, router / 2}; }
  Operand picks(uint32_t experts, uint32_t pick = 0) const {
    return Operand{r.space, r.offset + 4 * experts + 8 * pick, router / 2};
  }

  Operand operator[](graph::Slot slot) const {
    switch (slot.buf) {
      case graph::Buf::X: return shifted(x, slot.elems);
      case graph::Buf::Y: return shifted(y, slot.elems);
      case graph::Buf::Qkv: return shifted(qkv_buf, slot.elems);
      case graph::Buf::A: return shifted(a, slot.elems);
      case graph::Buf::F1: return shifted(f1, slot.elems);
      case graph::Buf::Z: return shifted(z, slot.elems);
      case graph::Buf::M: return shifted(m, slot.elems);
      case graph::Buf::R:  // fp32/int32 contents: router_logits() and picks()
      case graph::Buf::None: break;
    }
    throw SpecError("layer graph: a step reads or writes no buffer");
  }

 private:
  Operand take(uint32_t width, uint32_t tokens) {
    Operand o{Space::Lmem, uint32_t(bytes), width};
    const Checked end = Checked(width) * tokens * 2 + bytes;
    if (!fits(0, end, 0x7fffffffull))
      throw CapacityError("activation buffers exceed 2 GiB of on-chip memory");
    bytes = end.value();
    return o;
  }
};

class Emitter {
 public:
  Emitter(const ModelSpec& spec, const MemoryPlan& plan, const PassOptions& passes,
          uint32_t devices, isa::Program& prog)
      : s_(spec), plan_(plan), passes_(passes), devices_(devices), prog_(prog) {}

  void embed_tokens(Operand dst, Operand ids) {
    Instruction in;
    in.op = Opcode::Embed;
    in.sub = uint8_t(isa::EmbedSource::Tokens);
    in.dst = dst;
    in.a = ids;
    in.w0 = region("tok_embd");
    in.n = s_.token_embed_dim();
    in.f0 = s_.embed_scale;
    emit(in);
  }
  void embed_positions(Operand dst) {
    Instruction in;
    in.op = Opcode::Embed;
    in.sub = uint8_t(isa::EmbedSource::Positions);
    in.flags = isa::kFlagAccumulate;
    in.dst = dst;
    in.w0 = region("pos_embd");
    in.n = s_.hidden_size;
    in.i0 = s_.learned_pos_offset;
    in.f0 = 1.0f;
    emit(in);
  }
  // `n` elements normalised in groups of `group` (0: all n at once).
  void norm(const std::string& name, Operand dst, Operand src, uint32_t n, uint32_t group,
            uint32_t ring_count = 0) {
    Instruction in;
    in.op = Opcode::Norm;
    in.sub = uint8_t(s_.norm);
    in.dst = dst;
    in.a = src;
    in.w0 = region(name + ".weight");
    if (const Region* beta = plan_.find_or_null(name + ".bias")) {
      in.flags |= isa::kFlagHasBias;
      in.w1 = beta->ref();
    }
    in.n = n;
    in.k = group;
    in.f0 = s_.norm_eps;
    if (ring_count && devices_ > 1) {  // statistics over the ring's split rows
      in.flags |= isa::kFlagRingStats;
      in.i0 = ring_count;
      in.i1 = devices_;
    }
    emit(in);
  }
  // dst = clamp(dst, -bound, bound), an ACT of its own (docs/isa.md).
  void clip(Operand x, uint32_t n, float bound) {
    Instruction in;
    in.op = Opcode::Act;
    in.sub = uint8_t(ActKind::Clip);
    in.dst = x;
    in.a = x;
    in.n = n;
    in.f0 = bound;
    emit(in);
  }
  // dst = act(src . W^T + bias) (+ residual). With PassOptions::fuse_epilogue the
  // epilogue runs inside the MATMUL; else BIAS, ACT and ADD follow it, and a
  // residual result goes through `scratch` first (dst is the residual itself).
  void linear(const std::string& weight, Operand dst, Operand src, uint32_t out,
              uint32_t in_features, ActKind act = ActKind::None, const Operand* residual = nullptr,
              Operand scratch = {}) {
    Instruction in = matmul(weight, out, in_features);
    in.a = src;
    const Region* bias = plan_.find_or_null(weight + ".bias");
    if (passes_.fuse_epilogue) {
      in.dst = dst;
      in.sub = uint8_t(act);
      if (bias) {
        in.flags |= isa::kFlagHasBias;
        in.w1 = bias->ref();
      }
      if (residual) {
        in.flags |= isa::kFlagHasResidual;
        in.b = *residual;
      }
      emit(in);
      return;
    }
    const Operand y = residual ? scratch : dst;
    in.dst = y;
    emit(in);
    if (bias) bias_add(y, *bias, out);
    if (act != ActKind::None) activation(y, act, out);
    if (residual) binary(Opcode::Add, dst, y, *residual, out);
  }
  // A row-parallel projection (attention output, MLP down) whose result adds to
  // the residual `x`. On a ring each device holds a slice of the inputs, so its
  // MATMUL gives a partial sum; the ALLREDUCE adds the devices' partial sums, then
  // the bias (once) and the residual, chunk by chunk (PassOptions::chunk_ring).
  void residual_linear(const std::string& weight, Operand x, Operand src, uint32_t out,
                       uint32_t in_features, Operand scratch) {
    if (devices_ == 1) return linear(weight, x, src, out, in_features, ActKind::None, &x, scratch);
    Instruction mm = matmul(weight, out, in_features);
    mm.a = src;
    mm.dst = scratch;
    emit(mm);
    Instruction ar = all_reduce(weight, x, scratch, out, true);
    ar.b = x;
    emit(ar);
  }
  // dst = the ring's sum of `partial` (+ the bias of `weight`, + b with `residual`), chunked.
  Instruction all_reduce(const std::string& weight, Operand dst, Operand partial, uint32_t out,
                         bool residual) const {
    Instruction ar;
    ar.op = Opcode::AllReduce;
    ar.dst = dst;
    ar.a = partial;
    if (residual) ar.flags = isa::kFlagHasResidual;
    if (const Region* bias = plan_.find_or_null(weight + ".bias")) {
      ar.flags |= isa::kFlagHasBias;
      ar.w1 = bias->ref();
    }
    ar.n = out;
    ar.i1 = devices_;
    const uint64_t bytes = uint64_t(out) * prog_.max_tokens * 2;
    ar.i0 = passes_.chunk_ring
                ? uint32_t(std::min<uint64_t>((bytes + kRingChunkBytes - 1) / kRingChunkBytes,
                                              (out + 31) / 32))
                : 1;
    ar.i0 = std::max<uint32_t>(ar.i0, 1);
    return ar;
  }
  // dst = src . W^T + bias, the whole sum on a ring (an ALLREDUCE of the partial sums, its
  // bias added once), for a branch whose output is normed before it joins the residual.
  void reduce_linear(const std::string& weight, Operand dst, Operand src, uint32_t out,
                     uint32_t in_features) {
    if (devices_ == 1) return linear(weight, dst, src, out, in_features);
    Instruction mm = matmul(weight, out, in_features);
    mm.a = src;
    mm.dst = dst;
    emit(mm);
    emit(all_reduce(weight, dst, dst, out, false));
  }
  // A gated MLP over the fused region `name` (gate rows, then up rows): act(gate) * up
  // into f1, the up half's raw values beside it first when the epilogue is not fused.
  void gated(const std::string& name, Operand f1, Operand src, uint32_t ff, uint32_t in_features,
             ActKind act) {
    const Operand f2 = shifted(f1, ff);
    const Region* bias = plan_.find_or_null(name + ".bias");
    Instruction in = matmul(name, ff, in_features);
    in.a = src;
    in.dst = f1;
    if (passes_.fuse_epilogue) {
      in.flags |= isa::kFlagGlu;
      in.sub = uint8_t(act);
      if (bias) {
        in.flags |= isa::kFlagHasBias;
        in.w1 = bias->ref();
      }
      emit(in);
      return;
    }
    in.n = 2 * ff;  // both halves into f1 | f2 (one row), then the epilogue as instructions
    emit(in);
    if (bias) bias_add(f1, *bias, 2 * ff);
    activation(f1, act, ff);
    binary(Opcode::Mul, f1, f1, f2, ff);
  }
  // A mixture's router: fp32 logits of the experts (nothing rounded, so near-ties between
  // experts stay as the model computes them), then TOPK's picks.
  void router(const std::string& weight, Operand logits, Operand src, uint32_t experts,
              uint32_t in_features) {
    Instruction in = matmul(weight, experts, in_features);
    in.flags |= isa::kFlagOutF32;
    in.a = src;
    in.dst = logits;
    emit(in);
  }
  void topk(Operand picks, Operand logits, uint32_t experts, uint32_t k, bool renormalize) {
    Instruction in;
    in.op = Opcode::TopK;
    in.sub = uint8_t(renormalize ? isa::Routing::Renormalize : isa::Routing::Softmax);
    in.dst = picks;
    in.a = logits;
    in.n = experts;
    in.k = k;
    emit(in);
  }
  // An expert's gated MLP (`fused`: gate | up rows, the GLU epilogue) or one of its
  // projections, on the expert `pick` chose.
  void expert_linear(const std::string& weight, Operand dst, Operand src, uint32_t out,
                     uint32_t in_features, ActKind act, bool fused, uint32_t experts,
                     Operand pick) {
    Instruction in = matmul(weight, out, in_features);
    in.i2 = experts;
    in.c = pick;
    in.a = src;
    in.dst = dst;
    if (fused && !passes_.fuse_epilogue) {
      in.n = 2 * out;  // both halves, then the epilogue as instructions (as gated() does)
      emit(in);
      activation(dst, act, out);
      binary(Opcode::Mul, dst, dst, shifted(dst, out), out);
      return;
    }
    if (fused) in.flags |= isa::kFlagGlu;
    if (!fused && !passes_.fuse_epilogue) {
      emit(in);
      if (act != ActKind::None) activation(dst, act, out);
      return;
    }
    in.sub = uint8_t(act);
    emit(in);
  }
  // dst (+)= the pick's weight * (src . W_e^T). The routing weight and the sum are part of
  // the expert MATMUL in every pass setting: the weight lives in the pick, which only the
  // expert MATMUL reads.
  void expert_down(const std::string& weight, Operand dst, Operand src, uint32_t out,
                   uint32_t in_features, uint32_t experts, Operand pick, bool accumulate) {
    Instruction in = matmul(weight, out, in_features);
    in.i2 = experts;
    in.c = pick;
    in.flags2 = isa::kFlag2RouteScale;
    in.a = src;
    in.dst = dst;
    if (accumulate) {
      in.flags |= isa::kFlagHasResidual;
      in.b = dst;
    }
    emit(in);
  }
  // x += sum (on a ring: the devices' partial sums added first, then x).
  void add_reduced(Operand x, Operand sum, uint32_t n) {
    if (devices_ == 1) return binary(Opcode::Add, x, x, sum, n);
    Instruction ar = all_reduce("", x, sum, n, true);
    ar.b = x;
    emit(ar);
  }
  // The LM head: fp32 logits into `logits`; its bias stays fused even without
  // fuse_epilogue (BIAS rounds to fp16, the head must not), and the argmax is
  // its epilogue with fuse_argmax, else an ARGMAX instruction.
  void head(const std::string& weight, Operand logits, Operand src, uint32_t rows,
            uint32_t in_features, float scale, float softcap, Operand argmax_dst) {
    Instruction in = matmul(weight, rows, in_features);
    in.flags |= isa::kFlagOutF32 | isa::kFlagLogitRows;
    in.a = src;
    in.dst = logits;
    if (scale != 1.0f) in.f0 = scale;
    in.f1 = softcap;
    if (const Region* b = plan_.find_or_null("output.bias")) {
      in.flags |= isa::kFlagHasBias;
      in.w1 = b->ref();
    }
    if (passes_.fuse_argmax) {
      in.flags |= isa::kFlagArgmax;
      in.b = argmax_dst;
      emit(in);
      return;
    }
    emit(in);
    Instruction am;
    am.op = Opcode::Argmax;
    am.flags = isa::kFlagLogitRows;
    am.dst = argmax_dst;
    am.a = logits;
    am.n = rows;
    emit(am);
  }
  void rope(const std::string& table, Operand qk, uint32_t heads) {
    Instruction in;
    in.op = Opcode::Rope;
    in.sub = uint8_t(s_.rope_style);
    in.dst = qk;
    in.n = heads;
    in.k = s_.head_dim;
    in.i0 = s_.rope_dim;
    in.w0 = region(table);
    emit(in);
  }
  void kv_store(const std::string& layer, Operand k, Operand v) {
    Instruction in;
    in.op = Opcode::KvStore;
    in.a = k;
    in.b = v;
    in.w0 = region(layer + "k_cache");
    in.w1 = region(layer + "v_cache");
    in.n = s_.num_kv_heads * s_.head_dim;
    emit(in);
  }
  void attention(const std::string& layer, Operand dst, Operand q, uint32_t window,
                 float softcap) {
    Instruction in;
    in.op = Opcode::Attention;
    in.dst = dst;
    in.a = q;
    in.n = s_.num_heads;
    in.k = s_.head_dim;
    in.i0 = s_.num_kv_heads;
    in.i1 = window;
    in.f0 = s_.effective_attn_scale();
    in.f1 = softcap;
    in.w0 = region(layer + "k_cache");
    in.w1 = region(layer + "v_cache");
    emit(in);
  }
  void binary(Opcode op, Operand dst, Operand a, Operand b, uint32_t n) {
    Instruction in;
    in.op = op;
    in.dst = dst;
    in.a = a;
    in.b = b;
    in.n = n;
    emit(in);
  }

 private:
  Instruction matmul(const std::string& weight, uint32_t out, uint32_t in_features) const {
    Instruction in;
    in.op = Opcode::MatMul;
    const Region& w = plan_.find(weight);
    in.w0 = w.ref();
    in.n = out;
    in.k = in_features;
    if (w.quantized()) {  // ISA v3: i0 = code bits, i1 = group size
      in.i0 = w.bits;
      in.i1 = w.group;
    }
    return in;
  }
  void bias_add(Operand x, const Region& bias, uint32_t n) {
    Instruction in;
    in.op = Opcode::Bias;
    in.dst = x;
    in.a = x;
    in.w1 = bias.ref();
    in.n = n;
    emit(in);
  }
  void activation(Operand x, ActKind act, uint32_t n) {
    Instruction in;
    in.op = Opcode::Act;
    in.sub = uint8_t(act);
    in.dst = x;
    in.a = x;
    in.n = n;
    emit(in);
  }
  isa::HbmRegion region(const std::string& name) const { return plan_.find(name).ref(); }
  void emit(const Instruction& in) { prog_.code.push_back(in); }

  const ModelSpec& s_;
  const MemoryPlan& plan_;
  const PassOptions& passes_;
  uint32_t devices_;
  isa::Program& prog_;
};

// Instructions that move bulk data through the HBM streams (the cost model's
// memory engine); small parameter vectors (norm gains, biases) do not count.
bool streams_hbm(const Instruction& in) {
  switch (in.op) {
    case Opcode::Embed:
    case Opcode::MatMul:
    case Opcode::KvStore:
    case Opcode::Attention:
    case Opcode::Prefetch: return true;
    default: return false;
  }
}

// Layer reordering: each MATMUL's weight stream moves up to just after the
// previous HBM stream, as a PREFETCH, so it runs while the vector engine
// finishes the work in between (a norm, the attention tail, the next layer's
// start). Values are unchanged: a PREFETCH only fills the weight buffer.
void hoist_weight_streams(isa::Program& prog) {
  std::vector<Instruction> out;
  out.reserve(prog.code.size() * 3 / 2);
  size_t last_stream = 0;  // index in `out` after the latest HBM stream
  for (const Instruction& in : prog.code) {
    if (in.op == Opcode::MatMul) {
      Instruction pf;
      pf.op = Opcode::Prefetch;
      pf.flags = in.flags & isa::kFlagLogitRows;  // skipped with the LM head it feeds
      pf.w0 = in.w0;
      pf.i0 = in.i0;  // the weight format, for the listing and a controller's stream engine
      pf.i1 = in.i1;
      if (in.flags & isa::kFlagHasBias) pf.w1 = in.w1;
      if (in.i2) {  // an expert's rows: the block the pick names, as many as the MATMUL reads
        pf.i2 = in.i2;
        pf.c = in.c;
        pf.n = in.n * ((in.flags & isa::kFlagGlu) ? 2 : 1);
      }
      out.insert(out.begin() + std::ptrdiff_t(last_stream), pf);
    }
    out.push_back(in);
    // A pick is known once its TOPK ran: no expert stream moves above it.
    if (streams_hbm(in) || in.op == Opcode::TopK) last_stream = out.size();
  }
  prog.code = std::move(out);
}

}  // namespace

uint64_t lmem_bytes_per_token(const ModelSpec& spec) { return Buffers(spec, 1).bytes; }

uint32_t choose_max_tokens(const ModelSpec& spec, const DevicePreset& preset, uint32_t max_length,
                           uint32_t limit) {
  spec.validate();
  const uint64_t per_token = lmem_bytes_per_token(spec);
  if (per_token > preset.lmem_bytes)
    throw CapacityError("one token's activations need " + std::to_string(per_token) +
                        " bytes of on-chip memory, the " + preset.name + " has " +
                        std::to_string(preset.lmem_bytes));
  uint32_t p = 1;
  while (p * 2 <= limit && p * 2 <= max_length && per_token * p * 2 <= preset.lmem_bytes) p *= 2;
  return p;
}

ModelSpec shard_spec(const ModelSpec& spec, uint32_t devices) {
  if (devices == 0 || (devices & (devices - 1)))
    throw SpecError("the device count must be a power of two (1, 2, 4, 8, ...), not " +
                    std::to_string(devices));
  ModelSpec d = spec;
  if (devices == 1) return d;
  auto share = [&](uint32_t n) { return (n + devices - 1) / devices; };
  // A device's query heads all belong to its own KV heads, so ATTN's grouping holds on
  // the shard: with at least as many KV heads as devices, ceil(K/N) KV heads and their
  // whole groups; with fewer, one KV head (replicated) and a share of its group's heads.
  const uint32_t group = spec.num_heads / spec.num_kv_heads;
  if (spec.num_kv_heads >= devices) {
    d.num_kv_heads = share(spec.num_kv_heads);
    d.num_heads = d.num_kv_heads * group;
  } else {
    const uint32_t sharing = devices / spec.num_kv_heads;  // devices per KV head (at least)
    d.num_kv_heads = 1;
    d.num_heads = (group + sharing - 1) / sharing;
  }
  d.intermediate_size = share(spec.intermediate_size);
  if (spec.qk_norm_whole) {
    // The ring sums the norms' statistics: q heads are each on one device (padding is zero),
    // a KV head on devices/K of them when there are fewer KV heads than devices.
    if (spec.num_kv_heads < devices && devices % spec.num_kv_heads)
      throw SpecError("a q/k norm over the whole projection on " + std::to_string(devices) +
                      " devices needs the " + std::to_string(spec.num_kv_heads) +
                      " KV heads replicated evenly: use a device count they divide");
    const uint32_t replicas =
        spec.num_kv_heads < devices ? devices / spec.num_kv_heads : 1;
    d.q_norm_count = spec.num_heads * spec.head_dim;
    d.k_norm_count = spec.num_kv_heads * spec.head_dim * replicas;
  }
  // The embedding table stays whole (a token may be any id); the LM head is a vocabulary
  // slice, a copy of the table's rows when tied.
  d.lm_head_rows = share(spec.vocab_size);
  d.tie_word_embeddings = false;
  return d;
}

isa::Program generate_program(const ModelSpec& s, const MemoryPlan& plan, isa::ProgramKind kind,
                              uint32_t max_tokens, const PassOptions& passes, uint32_t devices) {
  s.validate();
  if (devices == 0) throw SpecError("a program runs on at least one device");
  if (max_tokens == 0 || max_tokens > plan.max_tokens)
    throw SpecError("a program may carry at most the plan's " + std::to_string(plan.max_tokens) +
                    " token rows");
  isa::Program prog;
  prog.kind = kind;
  prog.max_tokens = max_tokens;
  prog.plan_fingerprint = plan.fingerprint();
  Buffers buf(s, max_tokens);
  prog.lmem_bytes = buf.bytes;
  Emitter e(s, plan, passes, devices, prog);

  const Operand ids{Space::Io, plan.io.ids_offset, 1};
  const Operand logits{Space::Io, plan.io.logits_offset, s.logits_size()};
  const Operand argmax{Space::Io, plan.io.argmax_offset, 1};

  // The layer graph, step by step. An unfused epilogue's residual branches go through Y
  // first: the graph reads Y only before them (the norms' outputs are consumed by then).
  for (const graph::Step& st : graph::build_graph(s, passes).steps) {
    switch (st.kind) {
      case graph::StepKind::EmbedTokens: e.embed_tokens(buf[st.dst], ids); break;
      case graph::StepKind::EmbedPositions: e.embed_positions(buf[st.dst]); break;
      case graph::StepKind::Norm:
        e.norm(st.weight, buf[st.dst], buf[st.src], st.n, st.group, st.count);
        break;
      case graph::StepKind::Linear:
        e.linear(st.weight, buf[st.dst], buf[st.src], st.n, st.k, st.act);
        break;
      case graph::StepKind::GatedMlp:
        e.gated(st.weight, buf[st.dst], buf[st.src], st.n, st.k, st.act);
        break;
      case graph::StepKind::Mul:
        e.binary(Opcode::Mul, buf[st.dst], buf[st.dst], buf[st.src], st.n);
        break;
      case graph::StepKind::AddLinear:
        e.residual_linear(st.weight, buf[st.dst], buf[st.src], st.n, st.k, buf.y);
        break;
      case graph::StepKind::ReduceLinear:
        e.reduce_linear(st.weight, buf[st.dst], buf[st.src], st.n, st.k);
        break;
      case graph::StepKind::Add:
        e.binary(Opcode::Add, buf[st.dst], buf[st.dst], buf[st.src], st.n);
        break;
      case graph::StepKind::Clip: e.clip(buf[st.dst], st.n, st.value); break;
      case graph::StepKind::Rope: e.rope(st.weight, buf[st.dst], st.n); break;
      case graph::StepKind::KvStore: e.kv_store(st.weight, buf[st.dst], buf[st.src]); break;
      case graph::StepKind::Attention:
        e.attention(st.weight, buf[st.dst], buf[st.src], st.n, st.value);
        break;
      case graph::StepKind::Head:
        e.head(st.weight, logits, buf[st.src], st.n, st.k, st.value, st.cap, argmax);
        break;
      case graph::StepKind::Router:
        e.router(st.weight, buf.router_logits(), buf[st.src], st.n, st.k);
        break;
      case graph::StepKind::TopK:
        e.topk(buf.picks(st.n), buf.router_logits(), st.n, st.k, st.renormalize);
        break;
      case graph::StepKind::ExpertGatedMlp:
      case graph::StepKind::ExpertLinear:
        e.expert_linear(st.weight, buf[st.dst], buf[st.src], st.n, st.k, st.act,
                        st.kind == graph::StepKind::ExpertGatedMlp, st.experts,
                        buf.picks(st.experts, st.pick));
        break;
      case graph::StepKind::ExpertDown:
        e.expert_down(st.weight, buf[st.dst], buf[st.src], st.n, st.k, st.experts,
                      buf.picks(st.experts, st.pick), st.pick > 0);
        break;
      case graph::StepKind::AddReduced: e.add_reduced(buf[st.dst], buf[st.src], st.n); break;
    }
  }
  if (passes.reorder) hoist_weight_streams(prog);
  return prog;
}

Programs generate_programs(const ModelSpec& spec, const MemoryPlan& plan,
                           const PassOptions& passes, uint32_t devices) {
  return Programs{
      generate_program(spec, plan, isa::ProgramKind::Prefill, plan.max_tokens, passes, devices),
      generate_program(spec, plan, isa::ProgramKind::Decode, 1, passes, devices)};
}

}  // namespace hyperdex
