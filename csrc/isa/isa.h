// The LPU instruction set, v4 (docs/isa.md is the specification; keep them in step).
//
// One instruction is one whole layer operation (a matrix stream, a norm, an
// attention step), so a decode program is a few hundred instructions. Every
// instruction processes the token rows of the current run (RunArgs::n_tokens
// rows, at absolute positions start_pos, start_pos + 1, ...).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace hyperdex::isa {

// 3: quantized MATMUL weights (i0 bits, i1 group). 4: NORM by groups (k), the logit scale of
// an OUT_F32 MATMUL (f0), the clip activation of ACT (ActKind::Clip, bound f0). 5: mixtures
// of experts: TOPK, the expert MATMUL (i2 experts, operand c selects one, flags2 ROUTE_SCALE).
constexpr uint32_t kIsaVersion = 5;
constexpr uint32_t kProgramFormatVersion = 1;
constexpr char kProgramMagic[8] = {'H', 'D', 'X', 'P', 'R', 'O', 'G', '\0'};
constexpr size_t kInstructionBytes = 96;
constexpr size_t kProgramHeaderBytes = 64;

enum class Opcode : uint8_t {
  Embed = 1,      // dst[t] (+)= scale * table[row(t)]
  Norm = 2,       // dst[t] = norm(a[t]) * gamma (+ beta); k != 0: each group of k on its own
  MatMul = 3,     // dst[t] = epilogue(a[t] . W^T); i0/i1: quantized weights (bits, group);
                  // OUT_F32: f0 scales the fp32 results (0 or 1: no scaling)
  Rope = 4,       // rotate heads of dst[t] in place
  KvStore = 5,    // K/V cache rows start_pos.. = a[t], b[t]
  Attention = 6,  // dst[t] = softmax(q k^T * scale) v over the cache, causal
  Add = 7,        // dst = a + b
  Mul = 8,        // dst = a * b
  Act = 9,        // dst = act(a); Clip: clamp to [-f0, f0]
  Bias = 10,      // dst[t] = a[t] + bias
  Argmax = 11,    // dst (int32) = first index of max over a (fp32 logits row)
  Prefetch = 12,  // start streaming w0 (and w1) into the weight buffer; no values change
  AllReduce = 13, // dst = epilogue(sum of a over the ring's devices), chunked
  AllGather = 14, // dst[d * n ..] = a of ring device d
  TopK = 15,      // dst[t] = the k largest of softmax(a[t]) over n experts: (expert, weight) pairs
};
constexpr uint8_t kMaxOpcode = 15;

// Instruction flags (a bit set; meaning per opcode in docs/isa.md).
enum Flag : uint8_t {
  kFlagAccumulate = 1 << 0,   // Embed: add into dst instead of overwriting
  kFlagHasBias = 1 << 1,      // MatMul/Norm: w1 holds a bias (beta)
  kFlagHasResidual = 1 << 2,  // MatMul: add operand b after the activation
  kFlagOutF32 = 1 << 3,       // MatMul: dst is fp32 and nothing is rounded to fp16
  kFlagLogitRows = 1 << 4,    // MatMul: only the last token row, unless RunArgs::logits_all
  kFlagGlu = 1 << 5,          // MatMul: w0 holds gate rows then up rows; dst = act(gate) * up
  kFlagArgmax = 1 << 6,       // MatMul (OutF32): also write the last row's argmax (int32) to b
  kFlagRingStats = 1 << 7,    // Norm (RMS, whole row): the mean square is summed over the ring
                              // of i1 devices and divided by i0 (OLMo 2's q/k norm, split heads)
};

// The second flag byte (ISA v5; meaning per opcode in docs/isa.md).
enum Flag2 : uint8_t {
  kFlag2RouteScale = 1 << 0,  // expert MatMul: the result times the routing weight c selects
};
constexpr uint8_t kKnownFlags2 = kFlag2RouteScale;

// How TOPK weighs the experts it picks (Instruction::sub).
enum class Routing : uint8_t {
  Softmax = 0,      // each pick's softmax probability over all n experts
  Renormalize = 1,  // those probabilities divided by the picks' sum (Mixtral)
};

enum class Space : uint8_t { Lmem = 0, Io = 1 };

// An activation operand: rows of fp16 (or fp32/int32 where the opcode says so)
// at `offset` bytes into on-chip memory (Lmem) or the host-visible I/O region (Io),
// token row t starting at offset + t * stride elements.
struct Operand {
  Space space = Space::Lmem;
  uint32_t offset = 0;  // bytes, < 2^31
  uint32_t stride = 0;  // elements between token rows
};

// A striped HBM region: row r in pseudo-channel r % C at byte base + (r / C) * row_bytes.
struct HbmRegion {
  uint64_t base = 0;
  uint32_t row_bytes = 0;
  uint32_t rows = 0;
  bool empty() const { return rows == 0; }
};

struct Instruction {
  Opcode op = Opcode::Add;
  uint8_t flags = 0;
  uint8_t flags2 = 0;  // ISA v5: the second flag byte (Flag2)
  uint8_t sub = 0;  // ActKind, NormKind, RopeStyle, Embed source or Routing, per opcode
  uint32_t n = 0;   // primary width (output features, heads, elements)
  uint32_t k = 0;   // secondary width (input features, head_dim, NORM group width)
  uint32_t i0 = 0;  // opcode-specific integers (kv heads, rope dims, position offset,
                    // MATMUL weight bits and group size)
  uint32_t i1 = 0;
  float f0 = 0.0f;  // opcode-specific reals (eps, scale, logit scale, clip bound)
  float f1 = 0.0f;
  // ISA v5, MATMUL: i2 > 0 makes it an expert MATMUL: w0 holds i2 equal blocks of rows (one
  // per expert) and c points at the (expert, weight) pair of a TOPK's output that picks the
  // block, per token row (c.stride in 4-byte elements). 0 and an unused c otherwise.
  uint32_t i2 = 0;
  Operand dst, a, b, c;
  HbmRegion w0, w1;
};
// The rows of one expert's block in an expert MATMUL's w0 (0 when i2 does not divide them).
inline uint32_t expert_block_rows(const Instruction& in) {
  return in.i2 && in.w0.rows % in.i2 == 0 ? in.w0.rows / in.i2 : 0;
}

enum class ProgramKind : uint32_t { Prefill = 0, Decode = 1 };

struct Program {
  ProgramKind kind = ProgramKind::Prefill;
  uint32_t max_tokens = 1;     // token rows one run may carry
  uint64_t lmem_bytes = 0;     // on-chip memory the program uses
  uint32_t plan_fingerprint = 0;  // the memory plan the addresses refer to
  std::vector<Instruction> code;
};

// Embed sources (Instruction::sub for Opcode::Embed).
enum class EmbedSource : uint8_t { Tokens = 0, Positions = 1 };

const char* opcode_name(Opcode op);
// "relu", "clip", ...; "?" for a value no ActKind has.
const char* act_name(uint8_t act);

// What is wrong with the fields of `in` that need no memory layout to check (docs/isa.md:
// the NORM group width, the MATMUL logit scale, activations and the clip bound), in words
// ("has ..."), or "" when nothing is. emu::validate_program runs it on every instruction
// when a program is loaded, before the operand checks.
std::string instruction_problem(const Instruction& in);

// Binary encoding (little-endian, 96 bytes per instruction, docs/isa.md).
void encode(const Instruction& inst, uint8_t out[kInstructionBytes]);
// Throws FormatError on an unknown opcode or non-zero reserved bytes.
Instruction decode(const uint8_t in[kInstructionBytes]);

std::vector<uint8_t> serialize(const Program& program);
// Checks magic, versions, size and checksum; throws FormatError saying what is wrong.
Program deserialize(const uint8_t* data, size_t size, const std::string& what = "program");
void save_program(const Program& program, const std::string& path);  // atomic (tmp + rename)
Program load_program(const std::string& path);

// Readable listing, one line per instruction. `region_name` maps an HBM base
// offset to a name (may be empty).
struct RegionNamer {
  virtual ~RegionNamer() = default;
  virtual std::string name_of(uint64_t base) const = 0;
};
std::string disassemble(const Program& program, const RegionNamer* namer = nullptr);
std::string disassemble(const Instruction& inst, const RegionNamer* namer = nullptr);

}  // namespace hyperdex::isa
