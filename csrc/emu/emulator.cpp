#include "emu/emulator.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <new>
#include <sstream>

#include "common/bounds.h"
#include "common/error.h"
#include "common/fp16.h"

namespace hyperdex::emu {
namespace {

using isa::Instruction;
using isa::Opcode;

// fp16 rounding points of the spec: a value becomes fp16 and is read back.
inline float round16(float v) { return half_to_float(float_to_half(v)); }

// `bound`: the clip activation's f0 (ACT only; isa::instruction_problem keeps clip out of
// every epilogue).
float activate(ActKind act, float x, float bound = 0.0f) {
  switch (act) {
    case ActKind::None: return x;
    case ActKind::Relu: return x > 0.0f ? x : 0.0f;
    case ActKind::Gelu: return 0.5f * x * (1.0f + std::erf(x * 0.70710678118654752f));
    case ActKind::GeluTanh: {
      const float k = 0.7978845608028654f;  // sqrt(2/pi)
      return 0.5f * x * (1.0f + std::tanh(k * (x + 0.044715f * x * x * x)));
    }
    case ActKind::Silu: return x / (1.0f + std::exp(-x));
    case ActKind::Clip: return std::min(std::max(x, -bound), bound);  // NaN stays NaN
  }
  return x;
}

Emulator::Buffer alloc_zeroed(uint64_t bytes) {
  uint64_t rounded = (std::max<uint64_t>(bytes, 1) + 63) / 64 * 64;
  void* p = std::aligned_alloc(64, rounded);
  if (!p) throw DeviceError("emulator: cannot allocate " + std::to_string(bytes) + " bytes");
  std::memset(p, 0, rounded);
  return Emulator::Buffer(static_cast<uint8_t*>(p));
}

size_t env_threads() {
  if (const char* v = std::getenv("HYPERDEX_NUM_THREADS")) {
    long n = std::strtol(v, nullptr, 10);
    if (n > 0) return size_t(n);
  }
  return 0;
}

// First row whose logits a LogitRows instruction writes, and how many.
inline std::pair<uint32_t, uint32_t> logit_rows(const Instruction& in, const RunArgs& run) {
  if ((in.flags & isa::kFlagLogitRows) && !run.logits_all) return {run.n_tokens - 1, 1};
  return {0, run.n_tokens};
}

// The first index of the maximum; NaN never wins, ties keep the first index.
int32_t argmax_row(const float* row, uint32_t n) {
  int32_t best = 0;
  float best_v = -std::numeric_limits<float>::infinity();
  for (uint32_t j = 0; j < n; ++j)
    if (row[j] > best_v) {
      best_v = row[j];
      best = int32_t(j);
    }
  return best;
}

}  // namespace

Emulator::Emulator(const DevicePreset& preset, size_t num_threads)
    : preset_(preset), kern_(best_kernels()), pool_(num_threads ? num_threads : env_threads()) {
  preset_.validate();
}

Emulator::~Emulator() = default;

std::string Emulator::describe() const {
  std::ostringstream s;
  s << "emulator of '" << preset_.name << "' (" << preset_.hbm_channels << " HBM pseudo-channels, "
    << kern_.name << " kernels, " << pool_.size() << " threads)";
  return s.str();
}

void Emulator::allocate(const DeviceLayout& layout) {
  check_layout(layout, preset_, "the device");
  hbm_.clear();
  channel_ptrs_.clear();
  file_backed_bytes_ = 0;
  for (uint64_t b : layout.channel_bytes) {
    try {
      hbm_.emplace_back(b);
    } catch (const std::bad_alloc&) {
      hbm_.clear();
      channel_ptrs_.clear();
      throw DeviceError("emulator: cannot allocate " + std::to_string(b) + " bytes");
    }
    channel_ptrs_.push_back(hbm_.back().get());
  }
  layout_ = layout;
  programs_ = {};
}

namespace {
// "write of 8 bytes at offset 1234 lies outside pseudo-channel 0 (4096 bytes)"
std::string outside_channel(const char* op, uint32_t channel, uint64_t offset, size_t bytes,
                            const DeviceLayout& layout) {
  std::string s = std::string(op) + " of " + std::to_string(bytes) + " bytes at offset " +
                  std::to_string(offset) + " lies outside pseudo-channel " + std::to_string(channel);
  if (channel < layout.channel_bytes.size())
    s += " (" + std::to_string(layout.channel_bytes[channel]) + " bytes)";
  return s;
}
}  // namespace

void Emulator::write(uint32_t channel, uint64_t offset, const void* src, size_t bytes) {
  if (channel >= hbm_.size() || !fits(offset, bytes, layout_.channel_bytes[channel]))
    throw DeviceError(outside_channel("write", channel, offset, bytes, layout_));
  std::memcpy(hbm_[channel].get() + offset, src, bytes);
}

void Emulator::read(uint32_t channel, uint64_t offset, void* dst, size_t bytes) {
  if (channel >= hbm_.size() || !fits(offset, bytes, layout_.channel_bytes[channel]))
    throw DeviceError(outside_channel("read", channel, offset, bytes, layout_));
  std::memcpy(dst, hbm_[channel].get() + offset, bytes);
}

bool Emulator::map_file(uint32_t channel, uint64_t offset, const std::string& path, uint64_t bytes) {
  if (channel >= hbm_.size() || !fits(offset, bytes, layout_.channel_bytes[channel]))
    throw DeviceError(outside_channel("map of a file", channel, offset, bytes, layout_));
  try {
    if (!hbm_[channel].map_file(offset, path, bytes)) return false;
  } catch (const std::bad_alloc&) {
    // A hole in the channel: nothing may use this allocation any more.
    hbm_.clear();
    channel_ptrs_.clear();
    programs_ = {};
    throw DeviceError("emulator: cannot restore the memory of pseudo-channel " +
                      std::to_string(channel) + " after a failed mapping of " + path);
  }
  file_backed_bytes_ += bytes;
  return true;
}

// Every operand and region must stay inside what was allocated, for the
// largest run the program allows, so a corrupt program fails here and not
// with a wild memory access.
void validate_program(const isa::Program& p, const DevicePreset& preset,
                      const DeviceLayout& layout) {
  const uint64_t io_bytes = layout.io_bytes;
  auto fail = [&](size_t i, const std::string& why) {
    throw FormatError("instruction " + std::to_string(i) + " (" + isa::opcode_name(p.code[i].op) +
                      ") " + why + "; the program does not match this memory layout, recompile");
  };
  // Operand `name` holds `rows` token rows of `width` elements of `elem` bytes, row t at
  // offset + t * stride elements: all of it must lie inside its memory.
  auto check_operand = [&](size_t i, const char* name, const isa::Operand& o, Checked width,
                           uint64_t elem, uint32_t rows) {
    const bool io = o.space == isa::Space::Io;
    const uint64_t limit = io ? io_bytes : p.lmem_bytes;
    auto where = [&] {
      return std::string("operand ") + name + " (" + (io ? "I/O" : "on-chip") + " offset " +
             std::to_string(o.offset) + ", stride " + std::to_string(o.stride) + ", " +
             std::to_string(rows) + " rows of " +
             (width.ok() ? std::to_string(width.value()) : std::string("over 2^64")) + " x " +
             std::to_string(elem) + " bytes)";
    };
    if (!width.ok()) fail(i, "has an " + where() + " wider than 2^64 bytes");
    if (rows > 1 && o.stride < width.value())
      fail(i, "has an " + where() + " whose stride is below its width");
    const Checked span = (Checked(rows ? rows - 1 : 0) * o.stride + width) * elem;
    if (!fits(Checked(o.offset), span, limit))
      fail(i, "has an " + where() + " that reads or writes past its memory (" +
                  std::to_string(limit) + " bytes)");
    // Every row then starts on an element (check_layout aligns the I/O segment).
    if (o.offset % elem != 0)
      fail(i, "has an " + where() + " whose offset is not a multiple of its " +
                  std::to_string(elem) + "-byte elements");
  };
  // Region `name` must have rows of at least `row_need` bytes and lie inside the allocation.
  auto check_region = [&](size_t i, const char* name, const isa::HbmRegion& r, Checked row_need) {
    const std::string what = std::string("HBM region ") + name + " (base " + std::to_string(r.base) +
                             ", " + std::to_string(r.rows) + " rows of " +
                             std::to_string(r.row_bytes) + " bytes)";
    if (r.rows == 0) fail(i, "names an empty " + what);
    if (!row_need.ok() || row_need.value() > r.row_bytes)
      fail(i, "reads rows longer than the rows of its " + what);
    const std::string why =
        striped_region_problem(r.base, r.row_bytes, r.rows, preset.hbm_channels, layout);
    if (!why.empty()) fail(i, "names an " + what + " past the allocation: " + why);
    // docs/isa.md: regions start on 64-byte lines and rows are multiples of 64 bytes, so
    // every row is aligned for the fp16 and fp32 values read from it.
    if (r.base % 64 != 0 || r.row_bytes % 64 != 0)
      fail(i, "names an " + what + " whose base or row_bytes is not a multiple of 64 bytes");
  };
  const uint32_t T = p.max_tokens;
  // An expert MATMUL (ISA v5): w0 is i2 equal blocks, each a whole number of rows per channel
  // (so every expert starts on channel 0 and streams from all channels), and c holds each
  // token row's (expert, weight) pick.
  auto check_experts = [&](size_t i, const Instruction& in) {
    const uint32_t block = isa::expert_block_rows(in);
    if (block == 0)
      fail(i, "has " + std::to_string(in.w0.rows) + " weight rows, not " + std::to_string(in.i2) +
                  " equal expert blocks");
    if (block % preset.hbm_channels != 0)
      fail(i, "has expert blocks of " + std::to_string(block) +
                  " rows, not a multiple of the " + std::to_string(preset.hbm_channels) +
                  " pseudo-channels");
    check_operand(i, "c", in.c, 2, 4, T);
  };
  if (p.lmem_bytes > preset.lmem_bytes)
    throw CapacityError("the program needs " + std::to_string(p.lmem_bytes) +
                        " bytes of on-chip memory, the " + preset.name + " has " +
                        std::to_string(preset.lmem_bytes));
  for (size_t i = 0; i < p.code.size(); ++i) {
    const Instruction& in = p.code[i];
    // Fields that mean nothing in any layout (a NORM group width that does not divide n, a
    // logit scale without fp32 results, clip in an epilogue): the program itself is wrong.
    if (const std::string why = isa::instruction_problem(in); !why.empty())
      throw FormatError("instruction " + std::to_string(i) + " (" + isa::opcode_name(in.op) + ") " +
                        why + "; recompile the model");
    switch (in.op) {
      case Opcode::Embed:
        check_operand(i, "dst", in.dst, in.n, 2, T);
        if (isa::EmbedSource(in.sub) == isa::EmbedSource::Tokens) check_operand(i, "a", in.a, 1, 4, T);
        check_region(i, "w0", in.w0, Checked(in.n) * 2);
        break;
      case Opcode::Norm:
        check_operand(i, "dst", in.dst, in.n, 2, T);
        check_operand(i, "a", in.a, in.n, 2, T);
        check_region(i, "w0", in.w0, 64);
        if (in.flags & isa::kFlagHasBias) {
          check_region(i, "w1", in.w1, 64);
          if (uint64_t(in.w1.rows) * 32 < in.n) fail(i, "has a beta shorter than n");
        }
        if (uint64_t(in.w0.rows) * 32 < in.n) fail(i, "has a gamma shorter than n");
        break;
      case Opcode::MatMul: {
        // A GLU MATMUL streams gate rows then up rows: twice n weight rows and biases.
        const uint64_t rows = uint64_t(in.n) * ((in.flags & isa::kFlagGlu) ? 2 : 1);
        check_operand(i, "dst", in.dst, in.n, (in.flags & isa::kFlagOutF32) ? 4 : 2, T);
        check_operand(i, "a", in.a, in.k, 2, T);
        if (in.flags & isa::kFlagHasResidual) check_operand(i, "b", in.b, in.n, 2, T);
        if (in.flags & isa::kFlagArgmax) {
          if (!(in.flags & isa::kFlagOutF32) || (in.flags & isa::kFlagHasResidual))
            fail(i, "fuses an argmax without fp32 logits, or with a residual");
          check_operand(i, "b", in.b, 1, 4, 1);
        }
        if (in.i0 == 0 || in.i0 == 16) {
          if (in.i1 != 0) fail(i, "has a group size for fp16 weights");
          check_region(i, "w0", in.w0, Checked(in.k) * 2);
        } else {
          const isa::QRowFormat f{in.i0, in.i1, in.k};
          if (const std::string why = f.check(); !why.empty())
            fail(i, "has an invalid quantized weight format (" + why + ")");
          check_region(i, "w0", in.w0, f.data_bytes());
        }
        if (in.i2) {
          check_experts(i, in);
          if (isa::expert_block_rows(in) < rows) fail(i, "has fewer rows per expert than outputs");
        } else if (in.w0.rows < rows) {
          fail(i, "has fewer weight rows than outputs");
        }
        if (in.flags & isa::kFlagHasBias) {
          check_region(i, "w1", in.w1, 64);
          if (uint64_t(in.w1.rows) * 32 < rows) fail(i, "has a bias shorter than n");
        }
        break;
      }
      case Opcode::Prefetch:
        check_region(i, "w0", in.w0, 0);
        if (!in.w1.empty()) check_region(i, "w1", in.w1, 0);
        if (in.i2) check_experts(i, in);
        if (uint64_t(in.n) > (in.i2 ? isa::expert_block_rows(in) : in.w0.rows))
          fail(i, "prefetches more rows than its region (or expert block) has");
        break;
      case Opcode::TopK:
        check_operand(i, "a", in.a, in.n, 4, T);
        check_operand(i, "dst", in.dst, Checked(in.k) * 2, 4, T);
        break;
      case Opcode::AllReduce:
        check_operand(i, "dst", in.dst, in.n, 2, T);
        check_operand(i, "a", in.a, in.n, 2, T);
        if (in.flags & isa::kFlagHasResidual) check_operand(i, "b", in.b, in.n, 2, T);
        if (in.flags & isa::kFlagHasBias) {
          check_region(i, "w1", in.w1, 64);
          if (uint64_t(in.w1.rows) * 32 < in.n) fail(i, "has a bias shorter than n");
        }
        if (in.i1 == 0) fail(i, "names a ring of 0 devices");
        break;
      case Opcode::AllGather: {
        const uint64_t elem = (in.flags & isa::kFlagOutF32) ? 4 : 2;
        check_operand(i, "dst", in.dst, Checked(in.n) * std::max<uint32_t>(in.i1, 1), elem, T);
        check_operand(i, "a", in.a, in.n, elem, T);
        if (in.i1 == 0) fail(i, "names a ring of 0 devices");
        break;
      }
      case Opcode::Rope:
        check_operand(i, "dst", in.dst, Checked(in.n) * in.k, 2, T);
        if (in.i0 > in.k || in.i0 % 2) fail(i, "has rot_dim odd or above head_dim");
        check_region(i, "w0", in.w0, Checked(in.i0) * 4);
        break;
      case Opcode::KvStore:
        check_operand(i, "a", in.a, in.n, 2, T);
        check_operand(i, "b", in.b, in.n, 2, T);
        check_region(i, "w0", in.w0, Checked(in.n) * 2);
        check_region(i, "w1", in.w1, Checked(in.n) * 2);
        // A run checks positions against the K cache's rows only.
        if (in.w1.rows < in.w0.rows) fail(i, "has a V cache (w1) shorter than its K cache (w0)");
        break;
      case Opcode::Attention:
        if (in.i0 == 0 || in.n % in.i0) fail(i, "has heads not a multiple of kv_heads");
        check_operand(i, "dst", in.dst, Checked(in.n) * in.k, 2, T);
        check_operand(i, "a", in.a, Checked(in.n) * in.k, 2, T);
        check_region(i, "w0", in.w0, Checked(in.i0) * in.k * 2);
        check_region(i, "w1", in.w1, Checked(in.i0) * in.k * 2);
        if (in.w1.rows < in.w0.rows) fail(i, "has a V cache (w1) shorter than its K cache (w0)");
        break;
      case Opcode::Add:
      case Opcode::Mul:
        check_operand(i, "b", in.b, in.n, 2, T);
        [[fallthrough]];
      case Opcode::Act:
        check_operand(i, "dst", in.dst, in.n, 2, T);
        check_operand(i, "a", in.a, in.n, 2, T);
        break;
      case Opcode::Bias:
        check_operand(i, "dst", in.dst, in.n, 2, T);
        check_operand(i, "a", in.a, in.n, 2, T);
        check_region(i, "w1", in.w1, 64);
        if (uint64_t(in.w1.rows) * 32 < in.n) fail(i, "has a bias shorter than n");
        break;
      case Opcode::Argmax:
        check_operand(i, "dst", in.dst, 1, 4, 1);
        check_operand(i, "a", in.a, in.n, 4, T);
        break;
    }
  }
}

void Emulator::load_program(ProgramSlot slot, const isa::Program& program) {
  if (hbm_.empty()) throw DeviceError("load_program before allocate");
  validate_program(program, preset_, layout_);
  programs_[size_t(slot)] = std::make_unique<isa::Program>(program);
  if (program.lmem_bytes > lmem_bytes_) {
    lmem_ = alloc_zeroed(program.lmem_bytes);
    lmem_bytes_ = program.lmem_bytes;
  }
}

void Emulator::attach_ring(std::shared_ptr<RingLink> link, uint32_t rank) {
  if (!link || rank >= link->size()) throw DeviceError("a ring rank outside the ring");
  set_ring_position(RingPosition{rank, link->size()});
  link_ = link->size() > 1 ? std::move(link) : nullptr;
}

void Emulator::start(ProgramSlot slot, const RunArgs& run) {
  ++run_id_;  // first, so every device of a ring counts every run
  weight_bytes_read_ = 0;
  const size_t all = std::numeric_limits<size_t>::max();
  if (!link_) return run_program(slot, run, 0, all);
  try {
    run_program(slot, run, 0, all);
  } catch (...) {
    link_->abort(run_id_);  // the neighbours must not wait for this device
    throw;
  }
}

void Emulator::run_range(ProgramSlot slot, const RunArgs& args, size_t begin, size_t end) {
  if (link_) throw DeviceError("run_range runs one device; this emulator is part of a ring");
  const size_t len = program(slot).code.size();
  if (begin > end || end > len)
    throw DeviceError("instruction range [" + std::to_string(begin) + ", " + std::to_string(end) +
                      ") is not inside the program's " + std::to_string(len) + " instructions");
  ++run_id_;
  weight_bytes_read_ = 0;
  run_program(slot, args, begin, end);
}

const isa::Program& Emulator::program(ProgramSlot slot) const {
  const auto& prog = programs_[size_t(slot)];
  if (!prog) throw DeviceError("no program loaded in that slot");
  return *prog;
}

void Emulator::run_program(ProgramSlot slot, const RunArgs& run, size_t begin, size_t end) {
  const isa::Program& prog = program(slot);
  if (run.n_tokens == 0 || run.n_tokens > prog.max_tokens)
    throw DeviceError("a run carries 1.." + std::to_string(prog.max_tokens) + " token rows, not " +
                      std::to_string(run.n_tokens));
  const auto timeout = run_timeout();
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  end = std::min(end, prog.code.size());
  for (size_t i = begin; i < end; ++i) {
    const Instruction& in = prog.code[i];
    if (interrupted()) throw Interrupted("interrupted");
    if (timeout.count() > 0 && std::chrono::steady_clock::now() > deadline)
      throw DeviceError("the run took longer than the run timeout of " +
                        std::to_string(timeout.count()) + " ms and was stopped");
    // A prefill chunk that is not the last needs no logits (docs/isa.md).
    if (!run.want_logits && (in.flags & isa::kFlagLogitRows)) continue;
    execute(in, run);
  }
}

void Emulator::read_lmem(uint64_t offset, void* dst, size_t bytes) const {
  if (!fits(offset, bytes, lmem_bytes_))
    throw DeviceError("read outside on-chip memory (" + std::to_string(lmem_bytes_) + " bytes)");
  std::memcpy(dst, lmem_.get() + offset, bytes);
}

void Emulator::write_lmem(uint64_t offset, const void* src, size_t bytes) {
  if (!fits(offset, bytes, lmem_bytes_))
    throw DeviceError("write outside on-chip memory (" + std::to_string(lmem_bytes_) + " bytes)");
  std::memcpy(lmem_.get() + offset, src, bytes);
}

uint8_t* Emulator::addr(const isa::Operand& o) {
  if (o.space == isa::Space::Io) return hbm_[0].get() + layout_.io_base + o.offset;
  return lmem_.get() + o.offset;
}

void Emulator::gather_vector(const isa::HbmRegion& r, uint32_t n, float* out) {
  StripedRows rows = striped(r);
  for (uint32_t i = 0; i < n; i += 32) {
    uint32_t take = std::min<uint32_t>(32, n - i);
    kern_.half_to_float_n(reinterpret_cast<const uint16_t*>(rows.row(i / 32)), out + i, take);
  }
}

void Emulator::execute(const Instruction& in, const RunArgs& run) {
  switch (in.op) {
    case Opcode::Embed: return exec_embed(in, run);
    case Opcode::Norm: return exec_norm(in, run);
    case Opcode::MatMul: return exec_matmul(in, run);
    case Opcode::Rope: return exec_rope(in, run);
    case Opcode::KvStore: return exec_kv_store(in, run);
    case Opcode::Attention: return exec_attention(in, run);
    case Opcode::Add:
    case Opcode::Mul:
    case Opcode::Act:
    case Opcode::Bias: return exec_elementwise(in, run);
    case Opcode::Argmax: return exec_argmax(in, run);
    case Opcode::Prefetch: return;  // moves weights into the buffer early; no values change
    case Opcode::AllReduce:
    case Opcode::AllGather: return exec_ring(in, run);
    case Opcode::TopK: return exec_topk(in, run);
  }
}

void Emulator::exec_embed(const Instruction& in, const RunArgs& run) {
  StripedRows table = striped(in.w0);
  const bool tokens = isa::EmbedSource(in.sub) == isa::EmbedSource::Tokens;
  const int32_t* ids = tokens ? reinterpret_cast<const int32_t*>(addr(in.a)) : nullptr;
  for (uint32_t t = 0; t < run.n_tokens; ++t) {
    int64_t row = tokens ? int64_t(ids[size_t(t) * std::max<uint32_t>(in.a.stride, 1)])
                         : int64_t(run.start_pos) + t + in.i0;
    if (row < 0 || row >= int64_t(in.w0.rows))
      throw DeviceError(std::string(tokens ? "token id " : "position ") + std::to_string(row) +
                        " is outside the embedding table's " + std::to_string(in.w0.rows) + " rows");
    const uint16_t* src = reinterpret_cast<const uint16_t*>(table.row(uint64_t(row)));
    uint16_t* dst = row16(in.dst, t);
    const bool accumulate = in.flags & isa::kFlagAccumulate;
    if (!accumulate && in.f0 == 1.0f) {
      std::memcpy(dst, src, size_t(in.n) * 2);
      continue;
    }
    for (uint32_t j = 0; j < in.n; ++j) {
      float v = half_to_float(src[j]);
      if (in.f0 != 1.0f) v = round16(v * in.f0);
      if (accumulate) v = v + half_to_float(dst[j]);
      dst[j] = float_to_half(v);
    }
  }
}

void Emulator::exec_norm(const Instruction& in, const RunArgs& run) {
  const uint32_t n = in.n;
  std::vector<float> gamma(n), beta;
  gather_vector(in.w0, n, gamma.data());
  if (in.flags & isa::kFlagHasBias) {
    beta.resize(n);
    gather_vector(in.w1, n, beta.data());
  }
  if (ones_.size() < n) ones_.assign(n, 1.0f);
  const bool rms = NormKind(in.sub) == NormKind::RmsNorm;
  // ISA v4: k != 0 normalises each group of k elements on its own (per-head q/k norms);
  // gamma and beta still hold n values. validate_program has checked that k divides n.
  const uint32_t g = in.k ? in.k : n;
  // RING_STATS: each row's sum of squares is the ring's (summed in ring order, as an
  // all-reduce sums), over i0 elements in all.
  std::vector<float> ring_ms;
  if (in.flags & isa::kFlagRingStats) {
    std::vector<float> x(n);
    ring_ms.resize(run.n_tokens);
    for (uint32_t t = 0; t < run.n_tokens; ++t) {
      kern_.half_to_float_n(row16(in.a, t), x.data(), n);
      ring_ms[t] = kern_.dot_f32(x.data(), x.data(), n);
    }
    ring_ms = ring_sum(in, std::move(ring_ms));
    for (float& s : ring_ms) s /= float(in.i0);
  }
  pool_.parallel_for(0, run.n_tokens, 1, [&](size_t lo, size_t hi) {
    std::vector<float> x(n), y(n);
    for (size_t t = lo; t < hi; ++t) {
      kern_.half_to_float_n(row16(in.a, uint32_t(t)), x.data(), n);
      for (uint32_t j0 = 0; j0 < n; j0 += g) {
        float* xg = x.data() + j0;
        if (rms) {
          float ms = ring_ms.empty() ? kern_.dot_f32(xg, xg, g) / float(g) : ring_ms[t];
          float rstd = 1.0f / std::sqrt(ms + in.f0);
          for (uint32_t j = j0; j < j0 + g; ++j) y[j] = (x[j] * rstd) * gamma[j];
        } else {
          float mean = kern_.dot_f32(xg, ones_.data(), g) / float(g);
          for (uint32_t j = j0; j < j0 + g; ++j) x[j] -= mean;
          float var = kern_.dot_f32(xg, xg, g) / float(g);
          float rstd = 1.0f / std::sqrt(var + in.f0);
          for (uint32_t j = j0; j < j0 + g; ++j) {
            y[j] = (x[j] * rstd) * gamma[j];
            if (!beta.empty()) y[j] += beta[j];
          }
        }
      }
      kern_.float_to_half_n(y.data(), row16(in.dst, uint32_t(t)), n);
    }
  });
}

void Emulator::exec_matmul(const Instruction& in, const RunArgs& run) {
  // Not a structured binding: the epilogue's lambda captures `first`, which C++17 (and
  // clang before 16) does not allow for a binding.
  const std::pair<uint32_t, uint32_t> logit_range = logit_rows(in, run);
  const uint32_t first = logit_range.first, count = logit_range.second;
  const uint32_t n = in.n, k = in.k;
  const size_t xs = (size_t(k) + 15) / 16 * 16;
  scratch_x_.resize(size_t(count) * xs);
  const uint32_t ys = (in.flags & isa::kFlagGlu) ? 2 * n : n;
  scratch_y_.resize(size_t(count) * ys);
  for (uint32_t t = 0; t < count; ++t)
    kern_.half_to_float_n(row16(in.a, first + t), scratch_x_.data() + t * xs, k);
  // ys weight rows of `w` times `rows` input rows; each weight row is read once.
  auto multiply = [&](const StripedRows& w, const float* x, uint32_t rows, float* y) {
    if (in.i0 == 0 || in.i0 == 16) {
      matmul_f16(kern_, w, ys, k, x, xs, rows, y, ys, pool_);
    } else {  // ISA v3: the fp16 MATMUL over the dequantized weights, bit for bit
      matmul_q(kern_, w, isa::QRowFormat{in.i0, in.i1, k}, ys, x, xs, rows, y, ys, pool_);
    }
    weight_bytes_read_ += uint64_t(ys) * in.w0.row_bytes;
  };
  // ISA v5, an expert MATMUL: each token row's pick (c) names its expert's block of w0 and
  // the weight ROUTE_SCALE multiplies by. The rows that picked the same expert share one
  // stream of its block, so a decode step reads exactly the picked experts' rows.
  std::vector<float> route(count, 1.0f);
  if (in.i2 == 0) {
    multiply(striped(in.w0), scratch_x_.data(), count, scratch_y_.data());
  } else {
    std::vector<uint32_t> expert(count);
    for (uint32_t t = 0; t < count; ++t) {
      const uint8_t* pick = addr(in.c) + (size_t(first) + t) * in.c.stride * 4;
      int32_t e;
      std::memcpy(&e, pick, 4);
      std::memcpy(&route[t], pick + 4, 4);
      if (e < 0 || uint32_t(e) >= in.i2)
        throw DeviceError("an expert MATMUL's pick names expert " + std::to_string(e) + " of " +
                          std::to_string(in.i2) + " (is operand c a TOPK's output?)");
      expert[t] = uint32_t(e);
    }
    const uint32_t block = isa::expert_block_rows(in);  // a multiple of the channels
    std::vector<float> x_e, y_e;
    for (uint32_t e = 0; e < in.i2; ++e) {
      std::vector<uint32_t> rows;
      for (uint32_t t = 0; t < count; ++t)
        if (expert[t] == e) rows.push_back(t);
      if (rows.empty()) continue;
      isa::HbmRegion r = in.w0;
      r.base += uint64_t(e) * (block / preset_.hbm_channels) * r.row_bytes;
      x_e.resize(rows.size() * xs);
      y_e.resize(rows.size() * ys);
      for (size_t i = 0; i < rows.size(); ++i)
        std::copy_n(scratch_x_.data() + rows[i] * xs, xs, x_e.data() + i * xs);
      multiply(striped(r), x_e.data(), uint32_t(rows.size()), y_e.data());
      for (size_t i = 0; i < rows.size(); ++i)
        std::copy_n(y_e.data() + i * ys, ys, scratch_y_.data() + size_t(rows[i]) * ys);
    }
  }
  const bool route_scale = in.flags2 & isa::kFlag2RouteScale;

  const bool glu = in.flags & isa::kFlagGlu;
  const uint32_t rows = glu ? 2 * n : n;  // gate rows, then up rows
  std::vector<float> bias;
  if (in.flags & isa::kFlagHasBias) {
    bias.resize(rows);
    gather_vector(in.w1, rows, bias.data());
  }
  const ActKind act = ActKind(in.sub);
  const uint16_t* act16 = (in.flags & isa::kFlagOutF32) ? nullptr : act_table(act);
  if (in.flags & isa::kFlagOutF32) {
    // The LM head: fp32 out, nothing rounded (docs/isa.md). ISA v4: f0 scales the results
    // before the activation (Cohere's logit_scale); 0 and 1 leave them as they are; then f1
    // soft-caps them, cap * tanh(v / cap) (Gemma 2's final_logit_softcapping).
    const bool scaled = in.f0 != 0.0f && in.f0 != 1.0f;
    const float cap = in.f1;
    const bool as_is = bias.empty() && !scaled && cap == 0.0f && act == ActKind::None;
    for (uint32_t t = 0; t < count; ++t) {
      float* dst = reinterpret_cast<float*>(addr(in.dst)) + size_t(t) * in.dst.stride;
      const float* y = scratch_y_.data() + size_t(t) * n;
      if (as_is) {  // most LM heads: the dot products are the logits
        std::copy_n(y, n, dst);
        continue;
      }
      for (uint32_t j = 0; j < n; ++j) {
        float v = y[j];
        if (!bias.empty()) v += bias[j];
        if (scaled) v *= in.f0;
        if (cap > 0.0f) v = cap * std::tanh(v / cap);
        dst[j] = activate(act, v);
      }
    }
    // The fused argmax reads the last row as ARGMAX would (same tie and NaN rules), so it
    // sees the scaled values.
    if (in.flags & isa::kFlagArgmax)
      *reinterpret_cast<int32_t*>(addr(in.b)) = argmax_row(
          reinterpret_cast<const float*>(addr(in.dst)) + size_t(count - 1) * in.dst.stride, n);
    return;
  }
  // Epilogue, one fp16 rounding after each stage, so the fused instruction
  // equals the unfused MATMUL, BIAS, ACT, ADD sequence bit for bit.
  const bool residual = in.flags & isa::kFlagHasResidual;
  // GLU: the gate takes bias and activation, the up half its bias, then one
  // rounded product: the gate MATMUL, up MATMUL and MUL sequence bit for bit.
  // Slices of rows, so that each rounding is one SIMD conversion pair (the same bits
  // as round16) and the activation the only per-element call.
  constexpr size_t kSlice = 1024;
  const size_t slices = (size_t(n) + kSlice - 1) / kSlice;
  pool_.parallel_for(0, size_t(count) * slices, 1, [&](size_t lo, size_t hi) {
    float v[kSlice], up[kSlice], res[kSlice];
    uint16_t h[kSlice];
    for (size_t task = lo; task < hi; ++task) {
      const uint32_t t = uint32_t(task / slices);
      const size_t j0 = (task % slices) * kSlice, len = std::min(kSlice, size_t(n) - j0);
      auto round_all = [&](float* r) {
        kern_.float_to_half_n(r, h, len);
        kern_.half_to_float_n(h, r, len);
      };
      const float* y = scratch_y_.data() + size_t(t) * ys + j0;
      std::copy(y, y + len, v);
      round_all(v);
      if (!bias.empty()) {
        for (size_t j = 0; j < len; ++j) v[j] += bias[j0 + j];
        round_all(v);
      }
      if (act16) {  // v holds fp16 values: look their activations up
        kern_.float_to_half_n(v, h, len);
        for (size_t j = 0; j < len; ++j) h[j] = act16[h[j]];
        kern_.half_to_float_n(h, v, len);
      } else if (act != ActKind::None) {
        for (size_t j = 0; j < len; ++j) v[j] = activate(act, v[j]);
        round_all(v);
      }
      if (glu) {
        std::copy(y + n, y + n + len, up);
        round_all(up);
        if (!bias.empty()) {
          for (size_t j = 0; j < len; ++j) up[j] += bias[n + j0 + j];
          round_all(up);
        }
        for (size_t j = 0; j < len; ++j) v[j] *= up[j];
        round_all(v);
      }
      if (route_scale) {  // the expert's routing weight, after its activation (docs/isa.md)
        for (size_t j = 0; j < len; ++j) v[j] *= route[t];
        round_all(v);
      }
      if (residual) {  // read before the store: dst may be the residual's own rows
        kern_.half_to_float_n(row16(in.b, first + t) + j0, res, len);
        for (size_t j = 0; j < len; ++j) v[j] += res[j];
      }
      kern_.float_to_half_n(v, row16(in.dst, first + t) + j0, len);
    }
  });
}

void Emulator::exec_topk(const Instruction& in, const RunArgs& run) {
  const uint32_t n = in.n, k = in.k;
  const bool renormalize = isa::Routing(in.sub) == isa::Routing::Renormalize;
  std::vector<float> p(n);
  std::vector<uint32_t> picked(k);
  for (uint32_t t = 0; t < run.n_tokens; ++t) {
    const float* logits = reinterpret_cast<const float*>(addr(in.a)) + size_t(t) * in.a.stride;
    // softmax in fp32: the maximum subtracted, exponentials summed in index order.
    float mx = -std::numeric_limits<float>::infinity();
    for (uint32_t j = 0; j < n; ++j) mx = std::max(mx, logits[j]);
    float sum = 0.0f;
    for (uint32_t j = 0; j < n; ++j) sum += p[j] = std::exp(logits[j] - mx);
    for (uint32_t j = 0; j < n; ++j) p[j] /= sum;
    // The k largest, largest first; ties to the lower index; NaN never wins over a number.
    std::vector<bool> taken(n, false);
    float picked_sum = 0.0f;
    for (uint32_t i = 0; i < k; ++i) {
      int64_t best = -1;
      for (uint32_t j = 0; j < n; ++j)
        if (!taken[j] && (best < 0 || p[j] > p[size_t(best)] || (std::isnan(p[size_t(best)]) &&
                                                                  !std::isnan(p[j]))))
          best = j;
      taken[size_t(best)] = true;
      picked[i] = uint32_t(best);
      picked_sum += p[size_t(best)];
    }
    uint8_t* out = addr(in.dst) + size_t(t) * in.dst.stride * 4;
    for (uint32_t i = 0; i < k; ++i) {
      const int32_t e = int32_t(picked[i]);
      const float w = renormalize ? p[picked[i]] / picked_sum : p[picked[i]];
      std::memcpy(out + 8 * i, &e, 4);
      std::memcpy(out + 8 * i + 4, &w, 4);
    }
  }
}

void Emulator::exec_rope(const Instruction& in, const RunArgs& run) {
  StripedRows table = striped(in.w0);
  const uint32_t half = in.i0 / 2;
  const bool neox = RopeStyle(in.sub) == RopeStyle::Neox;
  if (run.n_tokens > 0 && uint64_t(run.start_pos) + run.n_tokens > in.w0.rows) {
    const uint64_t first_past = std::max<uint64_t>(run.start_pos, in.w0.rows);
    throw DeviceError("position " + std::to_string(first_past) + " is past the rotary table's " +
                      std::to_string(in.w0.rows) + " rows (max_length)");
  }
  // Every (token, head) on its own: prefill's rotations spread over the pool. The rotated
  // dims are widened and rounded by the SIMD conversions (the same bits as the scalar ones).
  pool_.parallel_for(0, size_t(run.n_tokens) * in.n, 64, [&](size_t lo, size_t hi) {
    std::vector<float> in_f(in.i0), out_f(in.i0);
    for (size_t task = lo; task < hi; ++task) {
      const uint32_t t = uint32_t(task / in.n), h = uint32_t(task % in.n);
      const float* cs = reinterpret_cast<const float*>(table.row(uint64_t(run.start_pos) + t));
      uint16_t* x = row16(in.dst, t) + size_t(h) * in.k;
      kern_.half_to_float_n(x, in_f.data(), in.i0);
      for (uint32_t i = 0; i < half; ++i) {
        const size_t i1 = neox ? i : 2 * i, i2 = neox ? i + half : 2 * i + 1;
        const float c = cs[2 * i], s = cs[2 * i + 1];
        const float x1 = in_f[i1], x2 = in_f[i2];
        out_f[i1] = x1 * c - x2 * s;
        out_f[i2] = x2 * c + x1 * s;
      }
      kern_.float_to_half_n(out_f.data(), x, in.i0);
    }
  });
}

void Emulator::exec_kv_store(const Instruction& in, const RunArgs& run) {
  StripedRows kc = striped(in.w0), vc = striped(in.w1);
  for (uint32_t t = 0; t < run.n_tokens; ++t) {
    const uint64_t pos = uint64_t(run.start_pos) + t;
    if (pos >= in.w0.rows)
      throw DeviceError("position " + std::to_string(pos) + " is past the KV cache's " +
                        std::to_string(in.w0.rows) + " rows (max_length)");
    std::memcpy(kc.row(pos), row16(in.a, t), size_t(in.n) * 2);
    std::memcpy(vc.row(pos), row16(in.b, t), size_t(in.n) * 2);
  }
}

void Emulator::exec_attention(const Instruction& in, const RunArgs& run) {
  StripedRows kc = striped(in.w0), vc = striped(in.w1);
  const uint32_t heads = in.n, hd = in.k, group = in.n / in.i0;
  const float scale = in.f0, softcap = in.f1;
  // Each position's K and V rows, found once (a division each) for all heads and tokens.
  const uint64_t positions = std::min<uint64_t>(uint64_t(run.start_pos) + run.n_tokens, in.w0.rows);
  std::vector<const uint16_t*> k_rows(positions), v_rows(positions);
  for (uint64_t j = 0; j < positions; ++j) {
    k_rows[j] = reinterpret_cast<const uint16_t*>(kc.row(j));
    v_rows[j] = reinterpret_cast<const uint16_t*>(vc.row(j));
  }
  pool_.parallel_for(0, size_t(run.n_tokens) * heads, 1, [&](size_t lo, size_t hi) {
    std::vector<float> q(hd), acc(hd), scores;
    std::vector<const uint16_t*> rows;  // the positions' key (then value) slices
    for (size_t task = lo; task < hi; ++task) {
      const uint32_t t = uint32_t(task / heads), h = uint32_t(task % heads);
      const uint64_t pos = uint64_t(run.start_pos) + t;
      if (pos >= in.w0.rows) throw DeviceError("attention past the KV cache (max_length)");
      const uint64_t first = in.i1 && pos + 1 > in.i1 ? pos + 1 - in.i1 : 0;
      const size_t kv_off = size_t(h / group) * hd, len = size_t(pos - first + 1);
      kern_.half_to_float_n(row16(in.a, t) + size_t(h) * hd, q.data(), hd);
      rows.resize(len);
      scores.resize(len);
      for (size_t j = 0; j < len; ++j) rows[j] = k_rows[first + j] + kv_off;
      dot_f16_many(kern_, rows.data(), len, hd, q.data(), scores.data());
      float best = -std::numeric_limits<float>::infinity();
      for (float& s : scores) {
        s *= scale;
        if (softcap > 0.0f) s = softcap * std::tanh(s / softcap);
        best = std::max(best, s);
      }
      float sum = 0.0f;
      for (float& s : scores) {
        s = std::exp(s - best);
        sum += s;
      }
      for (float& s : scores) s /= sum;  // each position's weight
      for (size_t j = 0; j < len; ++j) rows[j] = v_rows[first + j] + kv_off;
      std::fill(acc.begin(), acc.end(), 0.0f);
      axpy_f16_many(kern_, scores.data(), rows.data(), len, acc.data(), hd);
      kern_.float_to_half_n(acc.data(), row16(in.dst, t) + size_t(h) * hd, hd);
    }
  });
}

void Emulator::exec_elementwise(const Instruction& in, const RunArgs& run) {
  std::vector<float> bias;
  if (in.op == Opcode::Bias) {
    bias.resize(in.n);
    gather_vector(in.w1, in.n, bias.data());
  }
  const ActKind act = ActKind(in.sub);
  const uint16_t* act16 = in.op == Opcode::Act ? act_table(act) : nullptr;
  pool_.parallel_for(0, size_t(run.n_tokens) * in.n, 4096, [&](size_t lo, size_t hi) {
    for (size_t i = lo; i < hi; ++i) {
      const uint32_t t = uint32_t(i / in.n), j = uint32_t(i % in.n);
      if (act16) {
        row16(in.dst, t)[j] = act16[row16(in.a, t)[j]];
        continue;
      }
      const float a = half_to_float(row16(in.a, t)[j]);
      float v = 0.0f;
      switch (in.op) {
        case Opcode::Add: v = a + half_to_float(row16(in.b, t)[j]); break;
        case Opcode::Mul: v = a * half_to_float(row16(in.b, t)[j]); break;
        case Opcode::Act: v = activate(act, a, in.f0); break;
        case Opcode::Bias: v = a + bias[j]; break;
        default: break;
      }
      row16(in.dst, t)[j] = float_to_half(v);
    }
  });
}

const uint16_t* Emulator::act_table(ActKind act) {
  if (act != ActKind::Gelu && act != ActKind::GeluTanh && act != ActKind::Silu) return nullptr;
  std::vector<uint16_t>& table = act_tables_[size_t(act)];
  if (table.empty()) {
    table.resize(size_t{1} << 16);
    for (uint32_t h = 0; h < table.size(); ++h)
      table[h] = float_to_half(activate(act, half_to_float(uint16_t(h))));
  }
  return table.data();
}

void Emulator::exec_argmax(const Instruction& in, const RunArgs& run) {
  const auto [first, count] = logit_rows(in, run);
  (void)first;
  const float* row = reinterpret_cast<const float*>(addr(in.a)) + size_t(count - 1) * in.a.stride;
  *reinterpret_cast<int32_t*>(addr(in.dst)) = argmax_row(row, in.n);
}

// A ring of one: the sum over the ring is the device's own rows, the gather its own part.
// Larger rings exchange through the link (ring_allreduce, ring_allgather).
void Emulator::exec_ring(const Instruction& in, const RunArgs& run) {
  const uint32_t size = ring_position().size;
  if (in.i1 != size)
    throw DeviceError(std::string(isa::opcode_name(in.op)) + " needs a ring of " +
                      std::to_string(in.i1) + " devices; this emulator is in a ring of " +
                      std::to_string(size));
  const auto [first, count] = logit_rows(in, run);
  if (size > 1) {
    if (in.op == Opcode::AllGather) return ring_allgather(in, first, count);
    return ring_allreduce(in, first, count);
  }
  if (in.op == Opcode::AllGather) {
    const size_t elem = (in.flags & isa::kFlagOutF32) ? 4 : 2;
    for (uint32_t t = 0; t < count; ++t)
      std::memmove(addr(in.dst) + size_t(t) * in.dst.stride * elem,
                   addr(in.a) + size_t(t) * in.a.stride * elem, size_t(in.n) * elem);
    return;
  }
  std::vector<float> bias;
  if (in.flags & isa::kFlagHasBias) {
    bias.resize(in.n);
    gather_vector(in.w1, in.n, bias.data());
  }
  const bool residual = in.flags & isa::kFlagHasResidual;
  for (uint32_t t = first; t < first + count; ++t)
    for (uint32_t j = 0; j < in.n; ++j) {
      float v = half_to_float(row16(in.a, t)[j]);
      if (!bias.empty()) v = round16(v + bias[j]);
      if (residual) v = v + half_to_float(row16(in.b, t)[j]);
      row16(in.dst, t)[j] = float_to_half(v);
    }
}

// The sum over the ring of each device's `partial` (fp32, one value per row), in the ring
// order of ring_allreduce, so every device holds the same total.
std::vector<float> Emulator::ring_sum(const Instruction& in, std::vector<float> partial) {
  const uint32_t rank = ring_position().rank, size = ring_position().size;
  if (in.i1 != size)
    throw DeviceError(std::string(isa::opcode_name(in.op)) + " sums over a ring of " +
                      std::to_string(in.i1) + " devices; this emulator is in a ring of " +
                      std::to_string(size));
  if (size == 1) return partial;
  const size_t bytes = partial.size() * sizeof(float);
  auto exchange = [&](bool send_first) {
    if (send_first) {
      std::vector<uint8_t> msg(bytes);
      std::memcpy(msg.data(), partial.data(), bytes);
      link_->send(rank, run_id_, std::move(msg));
      return;
    }
    std::vector<uint8_t> got = link_->receive(rank, run_id_);
    if (got.size() != bytes) throw DeviceError("ring link: a statistic of the wrong size");
    std::vector<float> v(partial.size());
    std::memcpy(v.data(), got.data(), bytes);
    partial = std::move(v);
  };
  std::vector<float> own = partial;
  if (rank > 0) {
    exchange(false);  // the running sum so far
    for (size_t i = 0; i < own.size(); ++i) partial[i] += own[i];
  }
  exchange(true);  // on round the ring; the last device starts the total back round
  if (rank + 1 < size) {
    exchange(false);  // the total
    if (rank + 2 < size) exchange(true);
  }
  return partial;
}

// Per chunk of columns: the fp32 partial sums travel 0 -> 1 -> ... -> N-1, each device
// adding its own (the ring order docs/isa.md fixes), then the total travels on from N-1
// round the ring to N-2, so every device ends with the same sum and applies the
// epilogue (round, bias, residual) itself.
void Emulator::ring_allreduce(const Instruction& in, uint32_t first, uint32_t count) {
  const uint32_t rank = ring_position().rank, size = ring_position().size;
  std::vector<float> bias;
  if (in.flags & isa::kFlagHasBias) {
    bias.resize(in.n);
    gather_vector(in.w1, in.n, bias.data());
  }
  const bool residual = in.flags & isa::kFlagHasResidual;
  const uint32_t chunks = std::max<uint32_t>(1, std::min(in.i0, in.n));
  const uint32_t width = (in.n + chunks - 1) / chunks;
  std::vector<float> acc;
  for (uint32_t j0 = 0; j0 < in.n; j0 += width) {
    const uint32_t w = std::min(width, in.n - j0);
    const size_t bytes = size_t(count) * w * 4;
    acc.assign(size_t(count) * w, 0.0f);
    if (rank > 0) {
      std::vector<uint8_t> got = link_->receive(rank, run_id_);
      if (got.size() != bytes) throw DeviceError("ring link: a partial sum of the wrong size");
      std::memcpy(acc.data(), got.data(), bytes);
    }
    for (uint32_t t = 0; t < count; ++t) {
      const uint16_t* a = row16(in.a, first + t) + j0;
      for (uint32_t j = 0; j < w; ++j) acc[size_t(t) * w + j] += half_to_float(a[j]);
    }
    auto send = [&] {
      std::vector<uint8_t> msg(bytes);
      std::memcpy(msg.data(), acc.data(), bytes);
      link_->send(rank, run_id_, std::move(msg));
    };
    if (rank + 1 < size) {
      send();  // the running sum goes on
      std::vector<uint8_t> got = link_->receive(rank, run_id_);  // the total comes back round
      if (got.size() != bytes) throw DeviceError("ring link: a total of the wrong size");
      std::memcpy(acc.data(), got.data(), bytes);
      if (rank + 2 < size) send();  // N-1 already has it
    } else {
      send();  // the last device holds the total: it starts it round the ring
    }
    for (uint32_t t = 0; t < count; ++t) {
      uint16_t* dst = row16(in.dst, first + t) + j0;
      const uint16_t* res = residual ? row16(in.b, first + t) + j0 : nullptr;
      for (uint32_t j = 0; j < w; ++j) {
        float v = round16(acc[size_t(t) * w + j]);
        if (!bias.empty()) v = round16(v + bias[j0 + j]);
        if (res) v = v + half_to_float(res[j]);
        dst[j] = float_to_half(v);
      }
    }
  }
}

// N-1 steps: each device passes on the part it received last (its own first), so
// after them it holds every device's part, placed by the rank it came from.
void Emulator::ring_allgather(const Instruction& in, uint32_t first, uint32_t count) {
  const uint32_t rank = ring_position().rank, size = ring_position().size;
  const size_t elem = (in.flags & isa::kFlagOutF32) ? 4 : 2;
  const size_t part = size_t(in.n) * elem;
  std::vector<uint8_t> piece(size_t(count) * part);
  for (uint32_t t = 0; t < count; ++t)
    std::memcpy(piece.data() + t * part, addr(in.a) + size_t(first + t) * in.a.stride * elem, part);
  auto place = [&](uint32_t from, const std::vector<uint8_t>& p) {
    for (uint32_t t = 0; t < count; ++t)
      std::memcpy(addr(in.dst) + (size_t(first + t) * in.dst.stride + size_t(from) * in.n) * elem,
                  p.data() + t * part, part);
  };
  std::vector<uint8_t> own = piece;
  for (uint32_t step = 1; step < size; ++step) {
    link_->send(rank, run_id_, std::move(piece));
    piece = link_->receive(rank, run_id_);
    if (piece.size() != own.size()) throw DeviceError("ring link: a part of the wrong size");
    place((rank + size - step) % size, piece);
  }
  place(rank, own);  // last: the destination may overlap the source
}

}  // namespace hyperdex::emu
