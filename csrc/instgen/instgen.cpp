#include "instgen/instgen.h"

#include <algorithm>
#include <string>

#include "common/error.h"

namespace hyperdex {
namespace {

using isa::Instruction;
using isa::Opcode;
using isa::Operand;
using isa::Space;

uint32_t round32(uint32_t n) { return (n + 31) / 32 * 32; }

// The activation buffers of one token row, in on-chip memory.
struct Buffers {
  uint32_t hidden, normed, qkv, attn, ffn, proj;  // widths (elements, rounded to 32)
  Operand x, y, qkv_buf, a, f1, f2, z;
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
    f1 = take(ffn, tokens);
    f2 = s.gated_mlp ? take(ffn, tokens) : Operand{};
    z = proj ? take(proj, tokens) : Operand{};
  }

 private:
  Operand take(uint32_t width, uint32_t tokens) {
    Operand o{Space::Lmem, uint32_t(bytes), width};
    bytes += uint64_t(width) * tokens * 2;
    if (bytes > 0x7fffffffull) throw CapacityError("activation buffers exceed 2 GiB of on-chip memory");
    return o;
  }
};

Operand shifted(Operand o, uint32_t elements) {
  o.offset += elements * 2;
  return o;
}

class Emitter {
 public:
  Emitter(const ModelSpec& spec, const MemoryPlan& plan, isa::Program& prog)
      : s_(spec), plan_(plan), prog_(prog) {}

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
  void norm(const std::string& name, Operand dst, Operand src) {
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
    in.n = s_.hidden_size;
    in.f0 = s_.norm_eps;
    emit(in);
  }
  // dst = act(src . W^T + bias) (+ residual); the epilogue is fused (docs/isa.md).
  void matmul(const std::string& weight, Operand dst, Operand src, uint32_t out, uint32_t in_features,
              ActKind act = ActKind::None, const Operand* residual = nullptr, uint8_t extra_flags = 0,
              const std::string& bias_name = "") {
    Instruction in;
    in.op = Opcode::MatMul;
    in.sub = uint8_t(act);
    in.flags = extra_flags;
    in.dst = dst;
    in.a = src;
    in.w0 = region(weight);
    const std::string bias = bias_name.empty() ? weight + ".bias" : bias_name;
    if (const Region* b = plan_.find_or_null(bias)) {
      in.flags |= isa::kFlagHasBias;
      in.w1 = b->ref();
    }
    if (residual) {
      in.flags |= isa::kFlagHasResidual;
      in.b = *residual;
    }
    in.n = out;
    in.k = in_features;
    emit(in);
  }
  void rope(Operand qk, uint32_t heads) {
    Instruction in;
    in.op = Opcode::Rope;
    in.sub = uint8_t(s_.rope_style);
    in.dst = qk;
    in.n = heads;
    in.k = s_.head_dim;
    in.i0 = s_.rope_dim;
    in.w0 = region("rope_table");
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
  void attention(const std::string& layer, Operand dst, Operand q) {
    Instruction in;
    in.op = Opcode::Attention;
    in.dst = dst;
    in.a = q;
    in.n = s_.num_heads;
    in.k = s_.head_dim;
    in.i0 = s_.num_kv_heads;
    in.i1 = s_.sliding_window;
    in.f0 = s_.effective_attn_scale();
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
  void argmax(Operand dst, Operand logits) {
    Instruction in;
    in.op = Opcode::Argmax;
    in.flags = isa::kFlagLogitRows;
    in.dst = dst;
    in.a = logits;
    in.n = s_.vocab_size;
    emit(in);
  }

 private:
  isa::HbmRegion region(const std::string& name) const { return plan_.find(name).ref(); }
  void emit(const Instruction& in) { prog_.code.push_back(in); }

  const ModelSpec& s_;
  const MemoryPlan& plan_;
  isa::Program& prog_;
};

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

isa::Program generate_program(const ModelSpec& s, const MemoryPlan& plan, isa::ProgramKind kind,
                              uint32_t max_tokens) {
  s.validate();
  if (max_tokens == 0 || max_tokens > plan.max_tokens)
    throw SpecError("a program may carry at most the plan's " + std::to_string(plan.max_tokens) +
                    " token rows");
  isa::Program prog;
  prog.kind = kind;
  prog.max_tokens = max_tokens;
  prog.plan_fingerprint = plan.fingerprint();
  Buffers buf(s, max_tokens);
  prog.lmem_bytes = buf.bytes;
  Emitter e(s, plan, prog);

  const uint32_t H = s.hidden_size, hd = s.head_dim;
  const uint32_t q = s.num_heads * hd, kv = s.num_kv_heads * hd;
  const Operand ids{Space::Io, plan.io.ids_offset, 1};
  const Operand logits{Space::Io, plan.io.logits_offset, s.vocab_size};
  const Operand argmax{Space::Io, plan.io.argmax_offset, 1};

  // Embeddings.
  if (s.has_projection()) {
    e.embed_tokens(buf.z, ids);
    e.matmul("proj_in", buf.x, buf.z, H, s.embed_dim);
  } else {
    e.embed_tokens(buf.x, ids);
  }
  if (s.positions == PositionKind::Learned) e.embed_positions(buf.x);

  for (uint32_t l = 0; l < s.num_layers; ++l) {
    const std::string b = "blk." + std::to_string(l) + ".";
    // Attention block.
    Operand attn_in = buf.x;
    if (s.pre_norm) {
      e.norm(b + "attn_norm", buf.y, buf.x);
      attn_in = buf.y;
    }
    e.matmul(b + "attn_qkv", buf.qkv_buf, attn_in, q + 2 * kv, H);
    if (s.positions == PositionKind::Rope) e.rope(buf.qkv_buf, s.num_heads + s.num_kv_heads);
    e.kv_store(b, shifted(buf.qkv_buf, q), shifted(buf.qkv_buf, q + kv));
    e.attention(b, buf.a, buf.qkv_buf);
    e.matmul(b + "attn_output", buf.x, buf.a, H, q, ActKind::None, &buf.x);
    if (!s.pre_norm) e.norm(b + "attn_norm", buf.x, buf.x);

    // MLP block.
    Operand mlp_in = buf.x;
    if (s.pre_norm) {
      e.norm(b + "ffn_norm", buf.y, buf.x);
      mlp_in = buf.y;
    }
    if (s.gated_mlp) {
      e.matmul(b + "ffn_gate", buf.f1, mlp_in, s.intermediate_size, H, s.act);
      e.matmul(b + "ffn_up", buf.f2, mlp_in, s.intermediate_size, H);
      e.binary(Opcode::Mul, buf.f1, buf.f1, buf.f2, s.intermediate_size);
    } else {
      e.matmul(b + "ffn_up", buf.f1, mlp_in, s.intermediate_size, H, s.act);
    }
    e.matmul(b + "ffn_down", buf.x, buf.f1, H, s.intermediate_size, ActKind::None, &buf.x);
    if (!s.pre_norm) e.norm(b + "ffn_norm", buf.x, buf.x);
  }

  // Head.
  Operand head_in = buf.x;
  if (s.final_norm) {
    e.norm("output_norm", buf.y, buf.x);
    head_in = buf.y;
  }
  if (s.has_projection()) {
    e.matmul("proj_out", buf.z, head_in, s.embed_dim, H);
    head_in = buf.z;
  }
  const std::string head = s.tie_word_embeddings ? "tok_embd" : "output";
  e.matmul(head, logits, head_in, s.vocab_size, s.token_embed_dim(), ActKind::None, nullptr,
           isa::kFlagOutF32 | isa::kFlagLogitRows, "output.bias");
  e.argmax(argmax, logits);
  return prog;
}

Programs generate_programs(const ModelSpec& spec, const MemoryPlan& plan) {
  return Programs{generate_program(spec, plan, isa::ProgramKind::Prefill, plan.max_tokens),
                  generate_program(spec, plan, isa::ProgramKind::Decode, 1)};
}

}  // namespace hyperdex
