// The instruction encoding and program files: round trips and every rejection.
#include <gtest/gtest.h>

#include <cstring>
#include <limits>
#include <random>
#include <string>

#include "common/error.h"
#include "isa/isa.h"
#include "spec/model_spec.h"

using namespace hyperdex;
using namespace hyperdex::isa;

namespace {

Instruction random_instruction(std::mt19937& rng) {
  std::uniform_int_distribution<uint32_t> u32;
  Instruction in;
  in.op = Opcode(1 + rng() % kMaxOpcode);
  in.flags = uint8_t(rng());
  in.sub = uint8_t(rng() % 7);  // every activation, and one past them
  in.n = u32(rng);
  in.k = u32(rng);
  in.i0 = u32(rng);
  in.i1 = u32(rng);
  in.f0 = float(u32(rng)) / 7.0f;
  in.f1 = -1.5f;
  in.dst = Operand{Space::Io, u32(rng) & 0x7fffffffu, u32(rng)};
  in.a = Operand{Space::Lmem, u32(rng) & 0x7fffffffu, u32(rng)};
  in.b = Operand{Space::Lmem, 64, 3};
  in.flags2 = uint8_t(rng());
  in.i2 = u32(rng);
  in.c = Operand{Space::Lmem, u32(rng) & 0x7fffffffu, u32(rng)};
  in.w0 = HbmRegion{uint64_t(u32(rng)) << 20, u32(rng), u32(rng)};
  in.w1 = HbmRegion{12345678901ull, 64, 7};
  return in;
}

bool same(const Instruction& x, const Instruction& y) {
  uint8_t a[kInstructionBytes], b[kInstructionBytes];
  encode(x, a);
  encode(y, b);
  return std::memcmp(a, b, kInstructionBytes) == 0 && x.op == y.op && x.n == y.n &&
         x.w0.base == y.w0.base && x.dst.space == y.dst.space && x.dst.offset == y.dst.offset &&
         x.f0 == y.f0 && x.flags2 == y.flags2 && x.i2 == y.i2 && x.c.offset == y.c.offset &&
         x.c.stride == y.c.stride;
}

Program sample_program() {
  std::mt19937 rng(7);
  Program p;
  p.kind = ProgramKind::Decode;
  p.max_tokens = 1;
  p.lmem_bytes = 4096;
  p.plan_fingerprint = 0xdeadbeef;
  for (int i = 0; i < 50; ++i) p.code.push_back(random_instruction(rng));
  return p;
}

}  // namespace

TEST(Isa, EncodeDecodeRoundTrip) {
  std::mt19937 rng(1);
  for (int i = 0; i < 1000; ++i) {
    Instruction in = random_instruction(rng);
    uint8_t buf[kInstructionBytes];
    encode(in, buf);
    EXPECT_TRUE(same(in, decode(buf)));
  }
}

TEST(Isa, EncodingIsLittleEndianAtDocumentedOffsets) {
  Instruction in;
  in.op = Opcode::MatMul;
  in.flags = kFlagHasBias;
  in.sub = 3;
  in.n = 0x01020304;
  in.w0.base = 0x1122334455667788ull;
  in.dst = Operand{Space::Io, 0x10, 5};
  uint8_t b[kInstructionBytes];
  encode(in, b);
  EXPECT_EQ(b[0], 3);
  EXPECT_EQ(b[1], kFlagHasBias);
  EXPECT_EQ(b[2], 3);
  EXPECT_EQ(b[4], 0x04);
  EXPECT_EQ(b[7], 0x01);
  EXPECT_EQ(b[32], 0x10);
  EXPECT_EQ(b[35], 0x80);  // the I/O space bit
  EXPECT_EQ(b[36], 5);
  EXPECT_EQ(b[64], 0x88);
  EXPECT_EQ(b[71], 0x11);
}

TEST(Isa, RejectsUnknownOpcodeAndUnusedV5Fields) {
  uint8_t b[kInstructionBytes] = {};
  b[0] = 99;
  EXPECT_THROW(decode(b), FormatError);
  b[0] = kMaxOpcode + 1;  // the first opcode past ISA v5's
  EXPECT_THROW(decode(b), FormatError);
  b[0] = uint8_t(Opcode::TopK);
  EXPECT_EQ(decode(b).op, Opcode::TopK);
  // Bytes 3, 28-31 and 56-63 are v5's flags2, i2 and c: an instruction that does not use
  // them must leave them zero.
  b[0] = uint8_t(Opcode::Add);
  for (size_t at : {3, 28, 57}) {
    uint8_t c[kInstructionBytes] = {};
    c[0] = uint8_t(Opcode::Add);
    c[at] = 1;
    EXPECT_NE(instruction_problem(decode(c)).find("only an expert MATMUL"), std::string::npos)
        << "byte " << at;
  }
  EXPECT_EQ(instruction_problem(decode(b)), "");
}

TEST(Isa, EncodesTheV5FieldsAtTheirOffsets) {
  Instruction in;
  in.op = Opcode::MatMul;
  in.flags2 = kFlag2RouteScale;
  in.i2 = 0x0a0b0c0d;
  in.c = Operand{Space::Lmem, 0x20, 6};
  uint8_t b[kInstructionBytes];
  encode(in, b);
  EXPECT_EQ(b[3], kFlag2RouteScale);
  EXPECT_EQ(b[28], 0x0d);
  EXPECT_EQ(b[31], 0x0a);
  EXPECT_EQ(b[56], 0x20);
  EXPECT_EQ(b[60], 6);
  const Instruction back = decode(b);
  EXPECT_EQ(back.i2, in.i2);
  EXPECT_EQ(back.flags2, in.flags2);
  EXPECT_EQ(back.c.offset, 0x20u);
  EXPECT_EQ(back.c.stride, 6u);
}

TEST(Isa, InstructionProblemsOfTheExpertFields) {
  Instruction mm;
  mm.op = Opcode::MatMul;
  mm.n = 8;
  mm.k = 16;
  mm.i2 = 4;
  mm.c = Operand{Space::Lmem, 64, 8};
  mm.flags2 = kFlag2RouteScale;
  EXPECT_EQ(instruction_problem(mm), "");
  auto expect = [](Instruction in, const char* needle) {
    const std::string why = instruction_problem(in);
    EXPECT_NE(why.find(needle), std::string::npos) << why;
  };
  Instruction bad = mm;
  bad.flags2 = 0x80;
  expect(bad, "unknown flags2");
  bad = mm;
  bad.i2 = 0;
  expect(bad, "without i2");
  for (uint8_t f : {uint8_t(kFlagOutF32), uint8_t(kFlagArgmax), uint8_t(kFlagLogitRows),
                    uint8_t(kFlagHasBias)}) {
    bad = mm;
    bad.flags |= f;
    expect(bad, "expert MATMUL");
  }
  Instruction topk;
  topk.op = Opcode::TopK;
  topk.n = 8;
  topk.k = 2;
  topk.sub = uint8_t(Routing::Renormalize);
  EXPECT_EQ(instruction_problem(topk), "");
  bad = topk;
  bad.k = 9;
  expect(bad, "1 <= k <= n");
  bad.k = 0;
  expect(bad, "1 <= k <= n");
  bad = topk;
  bad.sub = 2;
  expect(bad, "unknown routing");
  EXPECT_NE(disassemble(topk).find("TOPK renormalize"), std::string::npos) << disassemble(topk);
  EXPECT_NE(disassemble(mm).find(" experts=4 pick=lm[0x40]/8 +route_scale"), std::string::npos)
      << disassemble(mm);
}

TEST(Isa, ProgramRoundTrip) {
  Program p = sample_program();
  auto bytes = serialize(p);
  ASSERT_EQ(bytes.size(), kProgramHeaderBytes + p.code.size() * kInstructionBytes);
  Program q = deserialize(bytes.data(), bytes.size());
  EXPECT_EQ(q.kind, p.kind);
  EXPECT_EQ(q.max_tokens, p.max_tokens);
  EXPECT_EQ(q.lmem_bytes, p.lmem_bytes);
  EXPECT_EQ(q.plan_fingerprint, p.plan_fingerprint);
  ASSERT_EQ(q.code.size(), p.code.size());
  for (size_t i = 0; i < p.code.size(); ++i) EXPECT_TRUE(same(p.code[i], q.code[i]));
}

TEST(Isa, ProgramRejectsCorruption) {
  auto bytes = serialize(sample_program());
  auto expect_error = [](std::vector<uint8_t> b, const char* needle) {
    try {
      deserialize(b.data(), b.size(), "test.bin");
      FAIL() << "accepted a bad program (" << needle << ")";
    } catch (const FormatError& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find("recompile"), std::string::npos) << e.what();
    }
  };
  auto flipped_body = bytes;
  flipped_body[kProgramHeaderBytes + 100] ^= 0x40;
  expect_error(flipped_body, "checksum");
  auto flipped_header = bytes;
  flipped_header[21] ^= 1;  // max_tokens
  expect_error(flipped_header, "header");
  auto other_version = bytes;
  other_version[8] = 2;
  expect_error(other_version, "format v2");
  auto truncated = bytes;
  truncated.resize(truncated.size() - 5);
  expect_error(truncated, "truncated");
  auto not_a_program = bytes;
  not_a_program[0] = 'X';
  expect_error(not_a_program, "not a hyperdex program");
}

TEST(Isa, DisassemblyNamesEveryInstruction) {
  Program p = sample_program();
  std::string text = disassemble(p);
  size_t lines = 0;
  for (char c : text) lines += c == '\n';
  EXPECT_EQ(lines, p.code.size() + 1);  // a header line, then one per instruction
  EXPECT_NE(text.find("decode program"), std::string::npos);
}

TEST(Isa, ProgramsCarryIsaVersion5AndRefuseOthers) {
  // v5 gave bytes 3, 28-31 and 56-63 (flags2, i2, c) and TOPK a meaning a v4 reader refuses.
  EXPECT_EQ(kIsaVersion, 5u);
  auto bytes = serialize(sample_program());
  EXPECT_EQ(bytes[12], 5);
  for (uint8_t other : {uint8_t(4), uint8_t(6)}) {
    auto b = bytes;
    b[12] = other;  // the version is checked before the header checksum
    try {
      deserialize(b.data(), b.size(), "old.bin");
      FAIL() << "read an ISA v" << int(other) << " program";
    } catch (const FormatError& e) {
      const std::string msg = e.what();
      EXPECT_NE(msg.find("ISA v" + std::to_string(other)), std::string::npos) << msg;
      EXPECT_NE(msg.find("reads format v1 / ISA v5"), std::string::npos) << msg;
      EXPECT_NE(msg.find("recompile"), std::string::npos) << msg;
    }
  }
}

TEST(Isa, ListingShowsTheV4Fields) {
  Instruction norm;
  norm.op = Opcode::Norm;
  norm.sub = uint8_t(NormKind::RmsNorm);
  norm.n = 512;
  norm.f0 = 1e-5f;
  EXPECT_EQ(disassemble(norm).find("group="), std::string::npos);
  norm.k = 64;
  EXPECT_NE(disassemble(norm).find(" n=512 group=64 eps="), std::string::npos) << disassemble(norm);

  Instruction head;
  head.op = Opcode::MatMul;
  head.flags = kFlagOutF32 | kFlagArgmax;
  head.n = 1000;
  head.k = 64;
  EXPECT_EQ(disassemble(head).find("logit_scale"), std::string::npos);
  head.f0 = 0.0625f;
  EXPECT_NE(disassemble(head).find(" logit_scale=0.0625"), std::string::npos) << disassemble(head);

  Instruction act;
  act.op = Opcode::Act;
  act.sub = uint8_t(ActKind::Clip);
  act.n = 8;
  act.f0 = 8.5f;
  const std::string text = disassemble(act);
  EXPECT_EQ(text.rfind("ACT clip ", 0), 0u) << text;
  EXPECT_NE(text.find(" bound=8.5"), std::string::npos) << text;
  act.sub = uint8_t(ActKind::Silu);
  EXPECT_EQ(disassemble(act).find("bound"), std::string::npos);
  EXPECT_STREQ(act_name(uint8_t(ActKind::Clip)), "clip");
  EXPECT_STREQ(act_name(uint8_t(ActKind::Clip) + 1), "?");
}

TEST(Isa, InstructionProblemsOfTheV4Fields) {
  const float nan = std::numeric_limits<float>::quiet_NaN(), inf = std::numeric_limits<float>::infinity();
  Instruction norm;
  norm.op = Opcode::Norm;
  norm.n = 96;
  for (uint32_t k : {0u, 1u, 32u, 48u, 96u}) {
    norm.k = k;
    EXPECT_EQ(instruction_problem(norm), "") << k;
  }
  for (uint32_t k : {5u, 64u, 97u, 192u}) {
    norm.k = k;
    EXPECT_EQ(instruction_problem(norm),
              "has n = 96 elements, not a multiple of its group width k = " + std::to_string(k));
  }

  Instruction mm;
  mm.op = Opcode::MatMul;
  mm.flags = kFlagOutF32;
  for (float f0 : {0.0f, -0.0f, 1.0f, 0.0625f, 3e38f}) {
    mm.f0 = f0;
    EXPECT_EQ(instruction_problem(mm), "") << f0;
  }
  for (float f0 : {-1.0f, -1e-30f, nan, inf, -inf}) {
    mm.f0 = f0;
    EXPECT_NE(instruction_problem(mm).find("logit scale"), std::string::npos) << f0;
  }
  mm.flags = kFlagHasBias;
  mm.f0 = 1.0f;  // 1 means "no scaling" only where there is something to scale
  EXPECT_NE(instruction_problem(mm).find("without OUT_F32"), std::string::npos);
  mm.f0 = 0.0f;
  EXPECT_EQ(instruction_problem(mm), "");
  for (uint8_t act = 0; act < uint8_t(ActKind::Clip); ++act) {
    mm.sub = act;
    EXPECT_EQ(instruction_problem(mm), "") << int(act);
  }
  mm.sub = uint8_t(ActKind::Clip);
  EXPECT_NE(instruction_problem(mm).find("clip is an ACT-only activation"), std::string::npos);
  mm.sub = 6;
  EXPECT_EQ(instruction_problem(mm), "has an unknown activation 6");
  mm.sub = 0;
  mm.flags = kFlagGlu | kFlagOutF32;  // a gated result is fp16: no encoding
  EXPECT_NE(instruction_problem(mm).find("GLU with OUT_F32"), std::string::npos);

  Instruction act;
  act.op = Opcode::Act;
  act.sub = uint8_t(ActKind::Clip);
  for (float f0 : {1e-30f, 1.0f, 65504.0f, 1e30f}) {
    act.f0 = f0;
    EXPECT_EQ(instruction_problem(act), "") << f0;
  }
  for (float f0 : {0.0f, -0.0f, -1.0f, nan, inf}) {
    act.f0 = f0;
    EXPECT_NE(instruction_problem(act).find("clip bound"), std::string::npos) << f0;
  }
  act.sub = uint8_t(ActKind::Relu);
  act.f0 = 0.0f;
  EXPECT_EQ(instruction_problem(act), "");
  // Other opcodes' k and f0 keep their own meanings (ATTN: head_dim, scale).
  Instruction attn;
  attn.op = Opcode::Attention;
  attn.n = 8;
  attn.k = 3;
  attn.f0 = -2.0f;
  EXPECT_EQ(instruction_problem(attn), "");
}

// ISA v4 (same release as f0): f1 soft-caps an OUT_F32 MATMUL's fp32 results and ATTN's
// scores; each must be finite and >= 0 (0: no cap), and a MATMUL without OUT_F32 has none.
TEST(Isa, InstructionProblemsOfRingStats) {
  Instruction norm;
  norm.op = Opcode::Norm;
  norm.sub = uint8_t(NormKind::RmsNorm);
  norm.flags = kFlagRingStats;
  norm.n = 64;
  norm.i0 = 128;
  norm.i1 = 2;
  EXPECT_EQ(instruction_problem(norm), "");
  norm.sub = uint8_t(NormKind::LayerNorm);
  EXPECT_NE(instruction_problem(norm).find("only an RMS norm"), std::string::npos);
  norm.sub = uint8_t(NormKind::RmsNorm);
  norm.k = 16;
  EXPECT_NE(instruction_problem(norm).find("only an RMS norm"), std::string::npos);
  norm.k = 0;
  norm.i0 = 0;
  EXPECT_NE(instruction_problem(norm).find("both must be > 0"), std::string::npos);
}

TEST(Isa, InstructionProblemsOfTheSoftCaps) {
  const float nan = std::numeric_limits<float>::quiet_NaN(), inf = std::numeric_limits<float>::infinity();
  Instruction mm;
  mm.op = Opcode::MatMul;
  mm.flags = kFlagOutF32 | kFlagArgmax;
  for (float f1 : {0.0f, -0.0f, 1e-30f, 30.0f, 3e38f}) {
    mm.f1 = f1;
    EXPECT_EQ(instruction_problem(mm), "") << f1;
    mm.f0 = 0.25f;  // with a logit scale as well
    EXPECT_EQ(instruction_problem(mm), "") << f1;
    mm.f0 = 0.0f;
  }
  for (float f1 : {-1.0f, -1e-30f, nan, inf, -inf}) {
    mm.f1 = f1;
    const std::string why = instruction_problem(mm);
    EXPECT_NE(why.find("logit soft-cap f1"), std::string::npos) << f1 << ": " << why;
    EXPECT_NE(why.find("finite and >= 0"), std::string::npos) << why;
  }
  mm.f1 = 30.0f;
  mm.f0 = -1.0f;  // the scale is checked too, whatever the cap
  EXPECT_NE(instruction_problem(mm).find("logit scale"), std::string::npos);

  // Without OUT_F32 both f0 and f1 must be 0: a soft-cap needs fp32 results to cap.
  mm.flags = kFlagHasBias;
  mm.f0 = 0.0f;
  for (float f1 : {30.0f, 1.0f, -1.0f, nan}) {
    mm.f1 = f1;
    const std::string why = instruction_problem(mm);
    EXPECT_NE(why.find("without OUT_F32"), std::string::npos) << f1 << ": " << why;
  }
  mm.f1 = 0.0f;
  EXPECT_EQ(instruction_problem(mm), "");
  mm.flags = kFlagGlu;  // a GLU MATMUL too
  mm.f1 = 2.0f;
  EXPECT_NE(instruction_problem(mm).find("without OUT_F32"), std::string::npos);

  Instruction attn;
  attn.op = Opcode::Attention;
  attn.n = 8;
  attn.k = 16;
  attn.i0 = 2;
  attn.f0 = 0.25f;
  for (float f1 : {0.0f, -0.0f, 1e-30f, 50.0f, 3e38f}) {
    attn.f1 = f1;
    EXPECT_EQ(instruction_problem(attn), "") << f1;
  }
  for (float f1 : {-50.0f, -1e-30f, nan, inf, -inf}) {
    attn.f1 = f1;
    const std::string why = instruction_problem(attn);
    EXPECT_NE(why.find("score soft-cap f1"), std::string::npos) << f1 << ": " << why;
  }
  // Other opcodes keep their own f1 (none is checked): an ADD with f1 = -1 is fine.
  Instruction add;
  add.op = Opcode::Add;
  add.f1 = -1.0f;
  EXPECT_EQ(instruction_problem(add), "");
}

TEST(Isa, ListingShowsTheSoftCaps) {
  Instruction head;
  head.op = Opcode::MatMul;
  head.flags = kFlagOutF32 | kFlagArgmax;
  head.n = 1000;
  head.k = 64;
  EXPECT_EQ(disassemble(head).find("softcap"), std::string::npos) << disassemble(head);
  head.f1 = 30.0f;
  EXPECT_NE(disassemble(head).find(" softcap=30"), std::string::npos) << disassemble(head);
  head.f0 = 0.0625f;
  const std::string both = disassemble(head);
  EXPECT_NE(both.find(" logit_scale=0.0625 softcap=30"), std::string::npos) << both;

  Instruction attn;
  attn.op = Opcode::Attention;
  attn.n = 8;
  attn.k = 16;
  attn.i0 = 2;
  attn.f0 = 0.25f;
  EXPECT_EQ(disassemble(attn).find("softcap"), std::string::npos) << disassemble(attn);
  attn.f1 = 50.0f;
  const std::string text = disassemble(attn);
  EXPECT_EQ(text.rfind("ATTN ", 0), 0u) << text;
  EXPECT_NE(text.find(" softcap=50"), std::string::npos) << text;
}
