// libFuzzer harness: the ISA program file reader (isa::deserialize, behind load_program and
// _core.program_from_bytes) and everything that takes a program from a file: the listing
// (hdex-objdump), the cost model and profiler (hdex-objdump, profiling), the emulator's
// program check (validate_program) and, for a program it accepts, a run on the emulator.
//
// Input (fuzz_common.h): a device layout and run arguments, then the program file. Each
// input is read twice: as it is, and with its two CRC-32s recomputed, so that mutations
// reach the fields behind the checksums.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdlib>

#include "common/crc32.h"
#include "cost/cost_model.h"
#include "cost/profiler.h"
#include "emu/emulator.h"
#include "fuzz_common.h"
#include "isa/isa.h"

using namespace hyperdex;

namespace {

void put_u32(uint8_t* p, uint32_t v) {
  for (int i = 0; i < 4; ++i) p[i] = uint8_t(v >> (8 * i));
}

// The program's header and instruction CRCs made to match its bytes.
std::vector<uint8_t> with_fixed_crcs(const uint8_t* data, size_t size) {
  std::vector<uint8_t> b(data, data + size);
  if (b.size() < isa::kProgramHeaderBytes) return b;
  uint8_t* body = b.data() + isa::kProgramHeaderBytes;
  const size_t body_bytes = b.size() - isa::kProgramHeaderBytes;
  put_u32(b.data() + 36, crc32(body, body_bytes));
  put_u32(b.data() + 60, crc32(b.data(), 60));
  return b;
}

void exercise(const isa::Program& p, const DeviceLayout& layout, const RunArgs& args) {
  const DevicePreset preset = fuzz::tiny_preset();
  // Re-encoding what was decoded must give a program that decodes to the same encoding.
  const std::vector<uint8_t> again = isa::serialize(p);
  const isa::Program p2 = isa::deserialize(again.data(), again.size(), "re-encoded program");
  if (isa::serialize(p2) != again) std::abort();

  // The listing, with and without region names (hdex-objdump).
  struct Namer : isa::RegionNamer {
    std::string name_of(uint64_t base) const override { return base % 2 ? "" : "r"; }
  } namer;
  (void)isa::disassemble(p, &namer);

  // The cost model and profiler, as hdex-objdump and profiling use them on a program read
  // from a file (runs of a few rows: their work grows with the rows asked for).
  fuzz::expect_only_our_errors([&] {
    cost::CostModel model(p, preset);
    (void)model.run(args);
    (void)cost::floors(p, preset, args);
  });
  fuzz::expect_only_our_errors([&] {
    isa::Program prefill = p, decode = p;
    prefill.kind = isa::ProgramKind::Prefill;
    decode.kind = isa::ProgramKind::Decode;
    cost::Profiler prof(prefill, decode, preset, 1);
    prof.set_keep_timeline(true);
    (void)prof.prefill(args.start_pos, args.n_tokens, args.logits_all);
    (void)prof.decode(args.start_pos);
    (void)prof.chrome_trace();
  });

  // The emulator: the program check every backend runs, then a run of what it accepts.
  fuzz::expect_only_our_errors([&] {
    emu::Emulator dev(preset, 1);
    dev.allocate(layout);
    const ProgramSlot slot =
        p.kind == isa::ProgramKind::Decode ? ProgramSlot::Decode : ProgramSlot::Prefill;
    dev.load_program(slot, p);
    dev.start(slot, args);
    dev.wait();
  });
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  (void)fuzz::tiny_preset();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  fuzz::Reader in(data, size);
  DeviceLayout layout;
  for (uint32_t c = 0; c < fuzz::kChannels; ++c) layout.channel_bytes.push_back(in.get<uint32_t>());
  layout.io_base = in.get<uint32_t>();
  layout.io_bytes = in.get<uint32_t>();
  RunArgs args;
  args.start_pos = in.get<uint16_t>() % (2 * fuzz::kMaxLength);
  const uint8_t rows = in.get<uint8_t>();
  const uint8_t flags = in.get<uint8_t>();
  args.logits_all = flags & 1;
  args.want_logits = flags & 2;
  const uint8_t* prog = in.rest();
  const size_t prog_size = in.rest_size();

  for (int pass = 0; pass < 2; ++pass) {
    const std::vector<uint8_t> bytes =
        pass == 0 ? std::vector<uint8_t>(prog, prog + prog_size) : with_fixed_crcs(prog, prog_size);
    if (pass == 1 && bytes == std::vector<uint8_t>(prog, prog + prog_size)) break;
    fuzz::expect_only_our_errors([&] {
      const isa::Program p = isa::deserialize(bytes.data(), bytes.size(), "fuzzed program");
      // 1..8 rows, never more than the program allows (a run past it is the caller's error).
      args.n_tokens = std::max<uint32_t>(1, std::min<uint32_t>({uint32_t(rows % 8) + 1, p.max_tokens}));
      exercise(p, layout, args);
    });
  }
  return 0;
}
