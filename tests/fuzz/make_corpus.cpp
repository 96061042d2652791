// Writes the C++ harnesses' seed corpus (tests/fuzz/corpus/fuzz_*/) with the core's own
// writers: programs by isa::serialize from the tiny models of fuzz_common.h, stub xclbins by
// board::make_stub_xclbin, session configs from the same models' memory plans.
// Built with HYPERDEX_FUZZ as hyperdex_fuzz_corpus; `tests/fuzz/run.sh --make-corpus` runs it.
//
//   hyperdex_fuzz_corpus <corpus folder>
#include <sys/stat.h>

#include <cstdio>
#include <map>
#include <utility>
#include <string>
#include <vector>

#include "common/file_io.h"
#include "fuzz_common.h"
#include "isa/isa.h"
#include "xrt/kernel_abi.h"
#include "xrt/xclbin.h"

using namespace hyperdex;

namespace {

void write(const std::string& dir, const std::string& name, const std::vector<uint8_t>& bytes) {
  ::mkdir(dir.c_str(), 0777);
  write_file_atomic(dir + "/" + name, bytes.data(), bytes.size());
  std::printf("%s/%s (%zu bytes)\n", dir.c_str(), name.c_str(), bytes.size());
}

// The findings of tests/cpp/test_fuzz_regressions.cpp, as decode programs on channels of the
// tiny preset's full size.
const uint64_t kChannelEnd = fuzz::tiny_preset().hbm_channel_bytes;
const std::vector<uint64_t> kFullChannels(fuzz::kChannels, kChannelEnd);
const uint64_t kIoBase = kChannelEnd - 8192;

isa::Program program_of(std::vector<isa::Instruction> code) {
  isa::Program p;
  p.kind = isa::ProgramKind::Decode;
  p.max_tokens = 1;
  p.lmem_bytes = 64 << 10;
  p.code = std::move(code);
  return p;
}

std::vector<std::pair<std::string, isa::Program>> regressions() {
  using isa::Operand;
  using isa::Space;
  const isa::HbmRegion last_row{kChannelEnd - 64, 64, 1};  // row 1 and on: past channel 1
  std::vector<std::pair<std::string, isa::Program>> out;

  isa::Instruction bias;  // n = 1024 bias values from a region of one row
  bias.op = isa::Opcode::Bias;
  bias.n = 1024;
  bias.dst = Operand{Space::Lmem, 0, 1024};
  bias.a = Operand{Space::Lmem, 4096, 1024};
  bias.w1 = last_row;
  out.emplace_back("regress_bias_shorter_than_n", program_of({bias}));

  isa::Instruction norm = bias;  // a beta of one row for n = 1024
  norm.op = isa::Opcode::Norm;
  norm.flags = isa::kFlagHasBias;
  norm.f0 = 1e-5f;
  norm.w0 = isa::HbmRegion{0, 64, 32};
  out.emplace_back("regress_norm_beta_shorter_than_n", program_of({norm}));

  isa::Instruction kv;  // a V cache of one row; the run stores position 9
  kv.op = isa::Opcode::KvStore;
  kv.n = 32;
  kv.a = Operand{Space::Lmem, 0, 32};
  kv.b = Operand{Space::Lmem, 64, 32};
  kv.w0 = isa::HbmRegion{0, 64, 64};
  kv.w1 = last_row;
  out.emplace_back("regress_kvstore_short_v_cache", program_of({kv}));

  isa::Instruction attn = kv;  // and reads it back
  attn.op = isa::Opcode::Attention;
  attn.n = 2;
  attn.i0 = 1;
  attn.k = 16;
  attn.f0 = 0.25f;
  attn.dst = Operand{Space::Lmem, 0, 32};
  attn.a = Operand{Space::Lmem, 64, 32};
  attn.b = {};
  out.emplace_back("regress_attention_short_v_cache", program_of({kv, attn}));

  isa::Instruction argmax;  // an int32 stored at I/O offset 2
  argmax.op = isa::Opcode::Argmax;
  argmax.n = 16;
  argmax.dst = Operand{Space::Io, 2, 1};
  argmax.a = Operand{Space::Lmem, 0, 16};
  out.emplace_back("regress_misaligned_operand", program_of({argmax}));

  isa::Instruction rope;  // rotary table rows (fp32) off the 64-byte lines
  rope.op = isa::Opcode::Rope;
  rope.n = 1;
  rope.k = 16;
  rope.i0 = 16;
  rope.dst = Operand{Space::Lmem, 0, 16};
  rope.w0 = isa::HbmRegion{2, 64, 16};
  out.emplace_back("regress_misaligned_region", program_of({rope}));

  isa::Instruction mm;  // a MATMUL feeding an ALLREDUCE of 2^32 - 1 chunks on a ring of
  mm.op = isa::Opcode::MatMul;  // 2^32 - 1: the cost model's hang, and trace spans past 2^64
  mm.n = 64;                    // cycles (the profiler's float-to-integer conversion)
  mm.k = 64;
  mm.dst = Operand{Space::Lmem, 0, 64};
  mm.a = Operand{Space::Lmem, 4096, 64};
  mm.w0 = isa::HbmRegion{0, 128, 64};
  isa::Instruction ar;
  ar.op = isa::Opcode::AllReduce;
  ar.n = 64;
  ar.i0 = 0xFFFFFFFFu;
  ar.i1 = 0xFFFFFFFFu;
  ar.dst = Operand{Space::Lmem, 8192, 64};
  ar.a = mm.dst;
  out.emplace_back("regress_allreduce_chunks", program_of({mm, ar}));
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s <corpus folder>\n", argv[0]);
    return 2;
  }
  const std::string root = argv[1];
  ::mkdir(root.c_str(), 0777);
  const auto& models = fuzz::tiny_models();

  // fuzz_program: each program with the layout it was compiled for; a prefill of a full chunk
  // (logits of every row), a decode at a later position.
  for (const auto& m : models) {
    const MemoryPlan& plan = m.plan;
    write(root + "/fuzz_program", std::string(m.name) + "_prefill",
          fuzz::program_input(plan.channel_bytes, plan.io.base, plan.io.bytes,
                              isa::serialize(m.programs.prefill), 0, fuzz::kMaxTokens - 1, 3));
    write(root + "/fuzz_program", std::string(m.name) + "_decode",
          fuzz::program_input(plan.channel_bytes, plan.io.base, plan.io.bytes,
                              isa::serialize(m.programs.decode), 5, 0, 2));
  }
  // The findings of tests/cpp/test_fuzz_regressions.cpp as seeds, so every run repeats them.
  for (const auto& [name, program] : regressions())
    write(root + "/fuzz_program", name,
          fuzz::program_input(kFullChannels, kIoBase, 8192, isa::serialize(program), 9, 0, 2));

  // fuzz_xclbin: the stub for the tiny preset, and one for a 4-channel preset with the
  // metadata of another preset (check_xclbin's mismatch paths).
  const DevicePreset preset = fuzz::tiny_preset();
  write(root + "/fuzz_xclbin", "stub_fuzz", board::make_stub_xclbin(preset));
  DevicePreset four = preset;
  four.name = "four";
  four.hbm_channels = 4;
  write(root + "/fuzz_xclbin", "stub_four_mismatch",
        board::make_stub_xclbin(four, "lpu", {{board::meta::kPreset, "fuzz"}}));

  // fuzz_session: each single-device model's config with a script that prefills, decodes,
  // moves KV rows and rewinds.
  const std::vector<uint8_t> script = {
      fuzz::kStepPrefill, 4, 3, 1,   // 5 tokens, logits of every row
      fuzz::kStepDecode, 0, 9, 0,    //
      fuzz::kStepReadKv, 0, 6, 0,    // positions [0, 6)
      fuzz::kStepTruncate, 2, 0, 0,  //
      fuzz::kStepWriteKv, 2, 3, 7,   // positions [2, 5)
      fuzz::kStepDecode, 0, 11, 0,   //
      fuzz::kStepReset, 0, 0, 0,     //
      fuzz::kStepPrefill, 0, 5, 0,   // one token
  };
  for (size_t i = 0; i + 1 < models.size(); ++i)
    write(root + "/fuzz_session", models[i].name,
          fuzz::session_input(uint8_t(i), models[i].plan, script));
  return 0;
}
