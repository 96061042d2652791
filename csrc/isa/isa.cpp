#include "isa/isa.h"

#include <cmath>
#include <cstring>
#include <sstream>

#include "common/crc32.h"
#include "common/error.h"
#include "common/file_io.h"
#include "spec/model_spec.h"

namespace hyperdex::isa {
namespace {

// Little-endian field access. The encoding is defined byte by byte so the
// files are the same on every host.
template <typename T>
void put(uint8_t* p, T v) {
  static_assert(std::is_integral<T>::value, "integers only");
  for (size_t i = 0; i < sizeof(T); ++i) p[i] = uint8_t(uint64_t(v) >> (8 * i));
}
template <typename T>
T get(const uint8_t* p) {
  uint64_t v = 0;
  for (size_t i = 0; i < sizeof(T); ++i) v |= uint64_t(p[i]) << (8 * i);
  return T(v);
}
void put_f32(uint8_t* p, float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  put<uint32_t>(p, u);
}
float get_f32(const uint8_t* p) {
  uint32_t u = get<uint32_t>(p);
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

constexpr uint32_t kIoBit = 0x80000000u;

void put_operand(uint8_t* p, const Operand& o) {
  if (o.offset & kIoBit) throw SpecError("operand offset exceeds 2^31 bytes");
  put<uint32_t>(p, o.offset | (o.space == Space::Io ? kIoBit : 0u));
  put<uint32_t>(p + 4, o.stride);
}
Operand get_operand(const uint8_t* p) {
  Operand o;
  uint32_t addr = get<uint32_t>(p);
  o.space = (addr & kIoBit) ? Space::Io : Space::Lmem;
  o.offset = addr & ~kIoBit;
  o.stride = get<uint32_t>(p + 4);
  return o;
}
void put_region(uint8_t* p, const HbmRegion& r) {
  put<uint64_t>(p, r.base);
  put<uint32_t>(p + 8, r.row_bytes);
  put<uint32_t>(p + 12, r.rows);
}
HbmRegion get_region(const uint8_t* p) {
  return HbmRegion{get<uint64_t>(p), get<uint32_t>(p + 8), get<uint32_t>(p + 12)};
}

bool known_opcode(uint8_t op) { return op >= 1 && op <= kMaxOpcode; }

std::string fmt_real(float f) {
  std::ostringstream s;
  s << f;
  return s.str();
}

}  // namespace

const char* act_name(uint8_t a) {
  switch (ActKind(a)) {
    case ActKind::None: return "none";
    case ActKind::Relu: return "relu";
    case ActKind::Gelu: return "gelu";
    case ActKind::GeluTanh: return "gelu_tanh";
    case ActKind::Silu: return "silu";
    case ActKind::Clip: return "clip";
  }
  return "?";
}

// docs/isa.md, per opcode. The operand and region checks need the memory layout and are
// emu::validate_program's.
std::string instruction_problem(const Instruction& in) {
  const bool known_act = in.sub <= uint8_t(ActKind::Clip);
  // ISA v5's fields (flags2, i2, c) belong to the expert MATMUL (and its PREFETCH) only.
  const bool expert_op = in.op == Opcode::MatMul || in.op == Opcode::Prefetch;
  const Operand none{};
  const bool c_used = in.c.space != none.space || in.c.offset != 0 || in.c.stride != 0;
  if (!expert_op && (in.flags2 || in.i2 || c_used))
    return "has flags2, i2 or operand c set, which only an expert MATMUL or PREFETCH uses "
           "(they must be 0)";
  if (expert_op && in.i2 == 0 && (in.flags2 || c_used))
    return "has flags2 or operand c without i2 (the expert count of an expert MATMUL)";
  if (in.flags2 & ~kKnownFlags2) return "has unknown flags2 bits " + std::to_string(in.flags2);
  if (in.i2) {
    if (in.op == Opcode::MatMul &&
        (in.flags & (kFlagOutF32 | kFlagArgmax | kFlagLogitRows | kFlagHasBias)))
      return "is an expert MATMUL (i2 = " + std::to_string(in.i2) +
             " experts) with OUT_F32, ARGMAX, LOGIT_ROWS or HAS_BIAS, which it does not take";
    if (in.op == Opcode::Prefetch && in.flags2) return "is a PREFETCH with flags2 set";
  }
  switch (in.op) {
    case Opcode::Norm:
      // ISA v4: k = 0 normalises the whole row, else each group of k elements on its own.
      if (in.k != 0 && in.n % in.k != 0)
        return "has n = " + std::to_string(in.n) +
               " elements, not a multiple of its group width k = " + std::to_string(in.k);
      // RING_STATS: an RMS norm of the whole row whose mean square is the ring's: i1 devices,
      // i0 elements in all (the ring's rows, each counted as often as it is replicated).
      if (in.flags & kFlagRingStats) {
        if (NormKind(in.sub) != NormKind::RmsNorm || in.k != 0)
          return "sums its statistics over the ring, which only an RMS norm of the whole row "
                 "(k = 0) does";
        if (in.i1 == 0 || in.i0 == 0)
          return "sums its statistics over the ring but has i1 = " + std::to_string(in.i1) +
                 " devices and i0 = " + std::to_string(in.i0) + " elements (both must be > 0)";
      }
      break;
    case Opcode::MatMul:
      if (!known_act) return "has an unknown activation " + std::to_string(in.sub);
      if (ActKind(in.sub) == ActKind::Clip)
        return "has the epilogue activation clip; clip is an ACT-only activation";
      // The GLU epilogue writes fp16 rows; the LM head's fp32 rows are never gated.
      if ((in.flags & kFlagGlu) && (in.flags & kFlagOutF32))
        return "combines GLU with OUT_F32, which is no encoding (a GLU result is fp16)";
      // ISA v4: f0 scales the fp32 results of an OUT_F32 MATMUL (the logit scale).
      // f1 soft-caps them (Gemma 2's final_logit_softcapping).
      if (in.flags & kFlagOutF32) {
        if (!std::isfinite(in.f0) || in.f0 < 0.0f)
          return "has a logit scale f0 = " + fmt_real(in.f0) + " (it must be finite and >= 0)";
        if (!std::isfinite(in.f1) || in.f1 < 0.0f)
          return "has a logit soft-cap f1 = " + fmt_real(in.f1) + " (it must be finite and >= 0)";
      } else if (in.f0 != 0.0f || in.f1 != 0.0f) {
        return "has f0 = " + fmt_real(in.f0) + ", f1 = " + fmt_real(in.f1) +
               " without OUT_F32 (the logit scale and soft-cap apply to fp32 results only; "
               "both must be 0)";
      }
      break;
    case Opcode::Attention:
      if (!std::isfinite(in.f1) || in.f1 < 0.0f)
        return "has a score soft-cap f1 = " + fmt_real(in.f1) + " (it must be finite and >= 0)";
      break;
    case Opcode::Act:
      if (!known_act) return "has an unknown activation " + std::to_string(in.sub);
      if (ActKind(in.sub) == ActKind::Clip && !(std::isfinite(in.f0) && in.f0 > 0.0f))
        return "has a clip bound f0 = " + fmt_real(in.f0) + " (it must be finite and > 0)";
      break;
    case Opcode::TopK:
      // ISA v5: k picks of n experts, weighted as `sub` (Routing) says.
      if (in.sub > uint8_t(Routing::Renormalize))
        return "has an unknown routing " + std::to_string(in.sub);
      if (in.n == 0 || in.k == 0 || in.k > in.n)
        return "picks k = " + std::to_string(in.k) + " of n = " + std::to_string(in.n) +
               " experts (it must be 1 <= k <= n)";
      break;
    default: break;
  }
  return "";
}

const char* opcode_name(Opcode op) {
  switch (op) {
    case Opcode::Embed: return "EMBED";
    case Opcode::Norm: return "NORM";
    case Opcode::MatMul: return "MATMUL";
    case Opcode::Rope: return "ROPE";
    case Opcode::KvStore: return "KVSTORE";
    case Opcode::Attention: return "ATTN";
    case Opcode::Add: return "ADD";
    case Opcode::Mul: return "MUL";
    case Opcode::Act: return "ACT";
    case Opcode::Bias: return "BIAS";
    case Opcode::Argmax: return "ARGMAX";
    case Opcode::Prefetch: return "PREFETCH";
    case Opcode::AllReduce: return "ALLREDUCE";
    case Opcode::AllGather: return "ALLGATHER";
    case Opcode::TopK: return "TOPK";
  }
  return "?";
}

// Layout: docs/isa.md "Binary encoding".
void encode(const Instruction& in, uint8_t out[kInstructionBytes]) {
  std::memset(out, 0, kInstructionBytes);
  out[0] = uint8_t(in.op);
  out[1] = in.flags;
  out[2] = in.sub;
  out[3] = in.flags2;
  put<uint32_t>(out + 4, in.n);
  put<uint32_t>(out + 8, in.k);
  put<uint32_t>(out + 12, in.i0);
  put<uint32_t>(out + 16, in.i1);
  put_f32(out + 20, in.f0);
  put_f32(out + 24, in.f1);
  put<uint32_t>(out + 28, in.i2);
  put_operand(out + 32, in.dst);
  put_operand(out + 40, in.a);
  put_operand(out + 48, in.b);
  put_operand(out + 56, in.c);
  put_region(out + 64, in.w0);
  put_region(out + 80, in.w1);
}

Instruction decode(const uint8_t in[kInstructionBytes]) {
  if (!known_opcode(in[0]))
    throw FormatError("unknown opcode " + std::to_string(in[0]) + " (this hyperdex reads ISA v" +
                      std::to_string(kIsaVersion) + "; recompile the model)");
  Instruction o;
  o.op = Opcode(in[0]);
  o.flags = in[1];
  o.sub = in[2];
  o.flags2 = in[3];
  o.i2 = get<uint32_t>(in + 28);
  o.c = get_operand(in + 56);
  o.n = get<uint32_t>(in + 4);
  o.k = get<uint32_t>(in + 8);
  o.i0 = get<uint32_t>(in + 12);
  o.i1 = get<uint32_t>(in + 16);
  o.f0 = get_f32(in + 20);
  o.f1 = get_f32(in + 24);
  o.dst = get_operand(in + 32);
  o.a = get_operand(in + 40);
  o.b = get_operand(in + 48);
  o.w0 = get_region(in + 64);
  o.w1 = get_region(in + 80);
  return o;
}

// Header: docs/isa.md "Program files".
std::vector<uint8_t> serialize(const Program& p) {
  std::vector<uint8_t> out(kProgramHeaderBytes + p.code.size() * kInstructionBytes, 0);
  uint8_t* body = out.data() + kProgramHeaderBytes;
  for (size_t i = 0; i < p.code.size(); ++i) encode(p.code[i], body + i * kInstructionBytes);
  uint8_t* h = out.data();
  std::memcpy(h, kProgramMagic, 8);
  put<uint32_t>(h + 8, kProgramFormatVersion);
  put<uint32_t>(h + 12, kIsaVersion);
  put<uint32_t>(h + 16, uint32_t(p.kind));
  put<uint32_t>(h + 20, p.max_tokens);
  put<uint64_t>(h + 24, p.lmem_bytes);
  put<uint32_t>(h + 32, uint32_t(p.code.size()));
  put<uint32_t>(h + 36, crc32(body, p.code.size() * kInstructionBytes));
  put<uint32_t>(h + 40, p.plan_fingerprint);
  put<uint32_t>(h + 60, crc32(h, 60));
  return out;
}

Program deserialize(const uint8_t* data, size_t size, const std::string& what) {
  const std::string fix = "; recompile the model (AutoCompiler().compile(...)) to regenerate it";
  if (size < kProgramHeaderBytes || std::memcmp(data, kProgramMagic, 8) != 0)
    throw FormatError(what + " is not a hyperdex program (bad magic or too short)" + fix);
  uint32_t fmt = get<uint32_t>(data + 8), isa_v = get<uint32_t>(data + 12);
  if (fmt != kProgramFormatVersion || isa_v != kIsaVersion)
    throw FormatError(what + " has program format v" + std::to_string(fmt) + " / ISA v" +
                      std::to_string(isa_v) + ", this hyperdex reads format v" +
                      std::to_string(kProgramFormatVersion) + " / ISA v" +
                      std::to_string(kIsaVersion) + fix);
  if (get<uint32_t>(data + 60) != crc32(data, 60))
    throw FormatError(what + " has a corrupt header (checksum mismatch)" + fix);
  Program p;
  uint32_t kind = get<uint32_t>(data + 16);
  if (kind > 1) throw FormatError(what + " has an unknown program kind " + std::to_string(kind));
  p.kind = ProgramKind(kind);
  p.max_tokens = get<uint32_t>(data + 20);
  p.lmem_bytes = get<uint64_t>(data + 24);
  uint32_t count = get<uint32_t>(data + 32);
  p.plan_fingerprint = get<uint32_t>(data + 40);
  size_t need = kProgramHeaderBytes + size_t(count) * kInstructionBytes;
  if (size != need)
    throw FormatError(what + " is " + std::to_string(size) + " bytes but its header needs " +
                      std::to_string(need) + " (truncated or padded)" + fix);
  const uint8_t* body = data + kProgramHeaderBytes;
  if (get<uint32_t>(data + 36) != crc32(body, size_t(count) * kInstructionBytes))
    throw FormatError(what + " is corrupt (instruction checksum mismatch)" + fix);
  p.code.reserve(count);
  for (uint32_t i = 0; i < count; ++i) p.code.push_back(decode(body + size_t(i) * kInstructionBytes));
  return p;
}

void save_program(const Program& program, const std::string& path) {
  auto bytes = serialize(program);
  write_file_atomic(path, bytes.data(), bytes.size());
}

Program load_program(const std::string& path) {
  auto bytes = read_file(path);
  return deserialize(bytes.data(), bytes.size(), path);
}

namespace {

std::string fmt_operand(const Operand& o) {
  std::ostringstream s;
  s << (o.space == Space::Io ? "io[" : "lm[") << "0x" << std::hex << o.offset << std::dec << "]";
  if (o.stride) s << "/" << o.stride;
  return s.str();
}

std::string fmt_region(const HbmRegion& r, const RegionNamer* namer) {
  std::ostringstream s;
  std::string name = namer ? namer->name_of(r.base) : "";
  s << "hbm[" << (name.empty() ? "" : name + " @") << "0x" << std::hex << r.base << std::dec
    << " " << r.rows << "x" << r.row_bytes << "B]";
  return s.str();
}

}  // namespace

std::string disassemble(const Instruction& in, const RegionNamer* namer) {
  std::ostringstream s;
  s << opcode_name(in.op);
  auto flag = [&](uint8_t f, const char* name) {
    if (in.flags & f) s << " +" << name;
  };
  switch (in.op) {
    case Opcode::Embed:
      s << (EmbedSource(in.sub) == EmbedSource::Positions ? " positions" : " tokens") << " dst="
        << fmt_operand(in.dst);
      if (EmbedSource(in.sub) == EmbedSource::Tokens) s << " ids=" << fmt_operand(in.a);
      s << " table=" << fmt_region(in.w0, namer) << " width=" << in.n;
      if (in.i0) s << " pos_offset=" << in.i0;
      if (in.f0 != 1.0f) s << " scale=" << in.f0;
      flag(kFlagAccumulate, "accumulate");
      break;
    case Opcode::Norm:
      s << (NormKind(in.sub) == NormKind::RmsNorm ? " rms" : " layer") << " dst="
        << fmt_operand(in.dst) << " a=" << fmt_operand(in.a) << " gamma=" << fmt_region(in.w0, namer);
      if (in.flags & kFlagHasBias) s << " beta=" << fmt_region(in.w1, namer);
      s << " n=" << in.n;
      if (in.k) s << " group=" << in.k;
      s << " eps=" << in.f0;
      if (in.flags & kFlagRingStats) s << " ring=" << in.i1 << " count=" << in.i0;
      break;
    case Opcode::MatMul:
      s << " dst=" << fmt_operand(in.dst) << " a=" << fmt_operand(in.a)
        << " w=" << fmt_region(in.w0, namer) << " n=" << in.n << " k=" << in.k;
      if (in.i0 && in.i0 != 16) s << " int" << in.i0 << " group=" << in.i1;
      if (in.flags & kFlagHasBias) s << " bias=" << fmt_region(in.w1, namer);
      if (in.sub) s << " act=" << act_name(in.sub);
      if (in.flags & kFlagHasResidual) s << " residual=" << fmt_operand(in.b);
      flag(kFlagGlu, "glu");
      flag(kFlagOutF32, "f32");
      if (in.f0 != 0.0f) s << " logit_scale=" << in.f0;
      if (in.f1 != 0.0f) s << " softcap=" << in.f1;
      flag(kFlagLogitRows, "logit_rows");
      if (in.flags & kFlagArgmax) s << " argmax=" << fmt_operand(in.b);
      if (in.i2) s << " experts=" << in.i2 << " pick=" << fmt_operand(in.c);
      if (in.flags2 & kFlag2RouteScale) s << " +route_scale";
      break;
    case Opcode::Rope:
      s << (RopeStyle(in.sub) == RopeStyle::Gptj ? " gptj" : " neox") << " x=" << fmt_operand(in.dst)
        << " heads=" << in.n << " head_dim=" << in.k << " rot=" << in.i0
        << " table=" << fmt_region(in.w0, namer);
      break;
    case Opcode::KvStore:
      s << " k=" << fmt_operand(in.a) << " v=" << fmt_operand(in.b) << " kcache="
        << fmt_region(in.w0, namer) << " vcache=" << fmt_region(in.w1, namer) << " width=" << in.n;
      break;
    case Opcode::Attention:
      s << " dst=" << fmt_operand(in.dst) << " q=" << fmt_operand(in.a) << " heads=" << in.n
        << " kv_heads=" << in.i0 << " head_dim=" << in.k << " scale=" << in.f0
        << " kcache=" << fmt_region(in.w0, namer) << " vcache=" << fmt_region(in.w1, namer);
      if (in.i1) s << " window=" << in.i1;
      if (in.f1 != 0.0f) s << " softcap=" << in.f1;
      break;
    case Opcode::Add:
    case Opcode::Mul:
      s << " dst=" << fmt_operand(in.dst) << " a=" << fmt_operand(in.a) << " b=" << fmt_operand(in.b)
        << " n=" << in.n;
      break;
    case Opcode::Act:
      s << " " << act_name(in.sub) << " dst=" << fmt_operand(in.dst) << " a=" << fmt_operand(in.a)
        << " n=" << in.n;
      if (ActKind(in.sub) == ActKind::Clip) s << " bound=" << in.f0;
      break;
    case Opcode::Bias:
      s << " dst=" << fmt_operand(in.dst) << " a=" << fmt_operand(in.a)
        << " bias=" << fmt_region(in.w1, namer) << " n=" << in.n;
      break;
    case Opcode::Argmax:
      s << " dst=" << fmt_operand(in.dst) << " logits=" << fmt_operand(in.a) << " n=" << in.n;
      break;
    case Opcode::Prefetch:
      s << " w=" << fmt_region(in.w0, namer);
      if (in.i0 && in.i0 != 16) s << " int" << in.i0 << " group=" << in.i1;
      if (!in.w1.empty()) s << " bias=" << fmt_region(in.w1, namer);
      if (in.i2) s << " experts=" << in.i2 << " pick=" << fmt_operand(in.c);
      break;
    case Opcode::TopK:
      s << (Routing(in.sub) == Routing::Renormalize ? " renormalize" : " softmax")
        << " dst=" << fmt_operand(in.dst) << " logits=" << fmt_operand(in.a) << " n=" << in.n
        << " k=" << in.k;
      break;
    case Opcode::AllReduce:
      s << " dst=" << fmt_operand(in.dst) << " a=" << fmt_operand(in.a) << " n=" << in.n
        << " chunks=" << in.i0 << " ring=" << in.i1;
      if (in.flags & kFlagHasBias) s << " bias=" << fmt_region(in.w1, namer);
      if (in.flags & kFlagHasResidual) s << " residual=" << fmt_operand(in.b);
      break;
    case Opcode::AllGather:
      s << " dst=" << fmt_operand(in.dst) << " a=" << fmt_operand(in.a) << " n=" << in.n
        << " ring=" << in.i1;
      flag(kFlagOutF32, "f32");
      flag(kFlagLogitRows, "logit_rows");
      break;
  }
  return s.str();
}

std::string disassemble(const Program& p, const RegionNamer* namer) {
  std::ostringstream s;
  s << "; " << (p.kind == ProgramKind::Prefill ? "prefill" : "decode") << " program, ISA v"
    << kIsaVersion << ", " << p.code.size() << " instructions, up to " << p.max_tokens
    << " token rows per run, " << p.lmem_bytes << " bytes of on-chip memory\n";
  for (size_t i = 0; i < p.code.size(); ++i) {
    s.width(5);
    s << i << "  " << disassemble(p.code[i], namer) << "\n";
  }
  return s.str();
}

}  // namespace hyperdex::isa
