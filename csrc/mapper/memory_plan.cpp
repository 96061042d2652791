#include "mapper/memory_plan.h"

#include <cmath>
#include <sstream>

#include "common/bounds.h"
#include "common/crc32.h"
#include "common/error.h"
#include "graph/layer_graph.h"

namespace hyperdex {
namespace {

uint64_t align_up(uint64_t v, uint64_t a) { return (v + a - 1) / a * a; }

class Planner {
 public:
  Planner(const ModelSpec& spec, MemoryPlan& plan) : spec_(spec), plan_(plan) {}

  // `experts` > 0: rows are that many experts' rows, each expert padded to a block.
  void matrix(const std::string& name, std::vector<std::string> sources, uint32_t rows,
              uint32_t cols, bool quantize = false, uint32_t experts = 0) {
    uint32_t expert_rows = 0;
    if (experts) {
      expert_rows = rows / experts;
      const uint64_t block = align_up(expert_rows, plan_.num_channels);
      const Checked all = Checked(block) * experts;
      if (!fits(0, all, 0xffffffffull))
        throw CapacityError("region " + name + " has more than 2^32 rows");
      rows = uint32_t(all.value());
    }
    if (!quantize || !spec_.quantized()) {
      add(name, RegionKind::Matrix, uint32_t(align_up(uint64_t(cols) * 2, kRowAlignBytes)), rows,
          cols, std::move(sources));
    } else {
      const isa::QRowFormat f{spec_.weight_bits, spec_.group_for(cols), cols};
      if (const std::string why = f.check(); !why.empty())
        throw SpecError("region " + name + ": " + why);
      add(name, RegionKind::QMatrix, uint32_t(align_up(f.data_bytes(), kRowAlignBytes)), rows,
          cols, std::move(sources));
      plan_.regions.back().bits = f.bits;
      plan_.regions.back().group = f.group;
    }
    plan_.regions.back().experts = experts;
    plan_.regions.back().expert_rows = expert_rows;
  }
  void vector(const std::string& name, std::vector<std::string> sources, uint32_t len) {
    add(name, RegionKind::Vector, kVectorRowElems * 2, (len + kVectorRowElems - 1) / kVectorRowElems,
        len, std::move(sources));
  }
  void rope_table(const std::string& name, uint32_t positions) {
    add(name, RegionKind::RopeTable,
        uint32_t(align_up(uint64_t(spec_.rope_dim / 2) * 8, kRowAlignBytes)), positions,
        spec_.rope_dim / 2, {});
  }
  void kv_cache(const std::string& name, uint32_t positions) {
    uint32_t width = spec_.num_kv_heads * spec_.head_dim;
    add(name, RegionKind::KvCache, uint32_t(align_up(uint64_t(width) * 2, kRowAlignBytes)),
        positions, width, {});
  }
  uint64_t cursor() const { return cursor_; }
  void align_cursor() {
    const Checked c = align_up_checked(cursor_, kSegmentAlign);
    if (!c.ok()) throw CapacityError("the memory plan exceeds 2^64 bytes of a pseudo-channel");
    cursor_ = c.value();
  }

 private:
  void add(const std::string& name, RegionKind kind, uint32_t row_bytes, uint32_t rows, uint32_t cols,
           std::vector<std::string> sources) {
    Region r;
    r.name = name;
    r.kind = kind;
    r.base = cursor_;
    r.row_bytes = row_bytes;
    r.rows = rows;
    r.cols = cols;
    r.sources = std::move(sources);
    const Checked end =
        align_up_checked(Checked(cursor_) + r.bytes_per_channel(plan_.num_channels), kRowAlignBytes);
    if (!end.ok()) throw CapacityError("region " + name + " ends past 2^64 bytes of a pseudo-channel");
    cursor_ = end.value();
    plan_.regions.push_back(std::move(r));
  }

  const ModelSpec& spec_;
  MemoryPlan& plan_;
  uint64_t cursor_ = 0;
};

std::string gib(uint64_t bytes) {
  std::ostringstream s;
  s.precision(3);
  s << double(bytes) / double(1ull << 30) << " GiB";
  return s.str();
}

}  // namespace

const Region* MemoryPlan::find_or_null(const std::string& name) const {
  for (const auto& r : regions)
    if (r.name == name) return &r;
  return nullptr;
}

const Region& MemoryPlan::find(const std::string& name) const {
  if (const Region* r = find_or_null(name)) return *r;
  throw SpecError("memory plan has no region '" + name + "'");
}

uint64_t MemoryPlan::total_bytes() const {
  uint64_t t = 0;
  for (uint64_t b : channel_bytes) t += b;
  return t;
}

uint32_t MemoryPlan::fingerprint() const {
  std::ostringstream s;
  s << kPlanFormatVersion << ' ' << num_channels << ' ' << max_length << ' ' << max_tokens << ' '
    << vocab_size << ' ' << weights_bytes << ' ' << kv_base << ' ' << kv_bytes << ' ' << io.base
    << ' ' << io.ids_offset << ' ' << io.argmax_offset << ' ' << io.logits_offset << ' ' << io.bytes;
  for (const auto& r : regions) {
    s << '|' << r.name << ' ' << int(r.kind) << ' ' << r.base << ' ' << r.row_bytes << ' ' << r.rows
      << ' ' << r.cols;
    if (r.quantized()) s << " q" << r.bits << '/' << r.group;
    if (r.experts) s << " e" << r.experts << '/' << r.expert_rows;
  }
  std::string text = s.str();
  return crc32(text.data(), text.size());
}

MemoryNeeds memory_needs(const MemoryPlan& plan) {
  MemoryNeeds n;
  n.weights = plan.weights_bytes * plan.num_channels;
  n.kv_cache = plan.kv_bytes * plan.num_channels;
  n.io = plan.io.bytes;
  return n;
}

MemoryPlan plan_memory(const ModelSpec& spec, const DevicePreset& preset, uint32_t max_length,
                       uint32_t max_tokens, const PassOptions& passes) {
  spec.validate();
  preset.validate();
  if (max_length == 0) throw SpecError("max_length must be > 0");
  if (max_tokens == 0 || max_tokens > max_length)
    throw SpecError("max_tokens must be in [1, max_length]");
  if (spec.positions == PositionKind::Learned &&
      uint64_t(max_length) + spec.learned_pos_offset > spec.learned_pos_rows)
    throw SpecError("max_length " + std::to_string(max_length) + " exceeds the model's " +
                    std::to_string(spec.learned_pos_rows - spec.learned_pos_offset) +
                    " learned positions; compile with max_length <= " +
                    std::to_string(spec.learned_pos_rows - spec.learned_pos_offset));

  MemoryPlan plan;
  plan.num_channels = preset.hbm_channels;
  plan.channel_capacity = preset.hbm_channel_bytes;
  plan.max_length = max_length;
  plan.max_tokens = max_tokens;
  plan.vocab_size = spec.logits_size();  // this device's logits (its LM-head rows)

  Planner p(spec, plan);

  // Weights, in the order the programs stream them (the layer graph's order).
  for (const graph::Weight& w : graph::build_graph(spec, passes).weights) {
    switch (w.kind) {
      case graph::WeightKind::Matrix:
        p.matrix(w.name, w.sources, w.rows, w.cols, w.quantize, w.experts);
        break;
      case graph::WeightKind::Vector: p.vector(w.name, w.sources, w.rows); break;
      case graph::WeightKind::RopeTable: p.rope_table(w.name, max_length); break;
    }
  }
  p.align_cursor();
  plan.weights_bytes = p.cursor();

  // KV cache, written by the programs at run time.
  plan.kv_base = p.cursor();
  for (uint32_t l = 0; l < spec.num_layers; ++l) {
    p.kv_cache("blk." + std::to_string(l) + ".k_cache", max_length);
    p.kv_cache("blk." + std::to_string(l) + ".v_cache", max_length);
  }
  p.align_cursor();
  plan.kv_bytes = p.cursor() - plan.kv_base;

  // Host I/O in channel 0.
  plan.io.base = p.cursor();
  plan.io.ids_offset = 0;
  plan.io.argmax_offset = uint32_t(align_up(uint64_t(max_tokens) * 4, kRowAlignBytes));
  plan.io.logits_offset = plan.io.argmax_offset + kRowAlignBytes;
  const Checked io_end = Checked(max_tokens) * spec.logits_size() * 4 + plan.io.logits_offset;
  if (!fits(0, io_end, 0x7fffffffull))
    throw CapacityError("the I/O buffer for " + std::to_string(max_tokens) + " rows of " +
                        std::to_string(spec.logits_size()) + " logits exceeds 2 GiB");
  plan.io.bytes = uint32_t(align_up(io_end.value(), kSegmentAlign));

  if (!(Checked(plan.io.base) + plan.io.bytes).ok())
    throw CapacityError("the memory plan exceeds 2^64 bytes of a pseudo-channel");
  plan.channel_bytes.assign(plan.num_channels, plan.io.base);
  plan.channel_bytes[0] += plan.io.bytes;

  if (plan.channel_bytes[0] > preset.hbm_channel_bytes) {
    MemoryNeeds n = memory_needs(plan);
    uint64_t per_channel_need = plan.channel_bytes[0];
    uint32_t devices = 1;
    while (devices < 1024 && per_channel_need / devices > preset.hbm_channel_bytes) devices *= 2;
    throw CapacityError(
        "the model does not fit one " + preset.name + " (" + gib(preset.hbm_bytes()) +
        " of HBM in " + std::to_string(preset.hbm_channels) + " pseudo-channels of " +
        gib(preset.hbm_channel_bytes) + "): it needs " + gib(n.total()) + " (weights " +
        gib(n.weights) + ", KV cache for max_length=" + std::to_string(max_length) + " " +
        gib(n.kv_cache) + ", I/O " + gib(n.io) + "), i.e. " + gib(per_channel_need) +
        " per pseudo-channel. Use about " + std::to_string(devices) +
        " devices (num_device), a smaller max_length, or quantization.");
  }
  return plan;
}

}  // namespace hyperdex
