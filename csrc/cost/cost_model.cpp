#include "cost/cost_model.h"

#include <algorithm>
#include <cmath>
#include <map>

#include "common/bounds.h"
#include "common/error.h"
#include "spec/model_spec.h"

namespace hyperdex::cost {
namespace {

using isa::Instruction;
using isa::Opcode;

uint64_t ceil_div(uint64_t a, uint64_t b) { return (a + b - 1) / b; }

// ALLREDUCE chunk counts up to this are priced chunk by chunk (compiled programs have a
// handful); larger ones, which only a corrupt or hostile program has, in closed form.
constexpr uint32_t kChunkLoopLimit = 1u << 16;

// A byte range in one address space (on-chip memory, the I/O buffers, HBM).
struct Range {
  enum Space : uint8_t { Lmem = 0, Io = 1, Hbm = 2 } space;
  uint64_t lo, hi;
  bool overlaps(const Range& o) const { return space == o.space && lo < o.hi && o.lo < hi; }
};

struct Footprint {
  std::vector<Range> reads, writes;
};

// An end past 2^64 (a program the device would refuse) saturates: such a range overlaps
// everything after its start, which keeps the hazard decisions conservative.
uint64_t end_or_max(Checked end) { return end.ok() ? end.value() : UINT64_MAX; }

Range operand_range(const isa::Operand& o, Checked width, uint64_t elem, uint32_t rows) {
  const Checked stride = width.ok() ? std::max<uint64_t>(o.stride, width.value()) : width;
  const Checked end = Checked(o.offset) + (Checked(rows ? rows - 1 : 0) * stride + width) * elem;
  return Range{o.space == isa::Space::Io ? Range::Io : Range::Lmem, o.offset, end_or_max(end)};
}

Range region_range(const isa::HbmRegion& r, uint32_t channels) {
  return Range{Range::Hbm, r.base,
               end_or_max(Checked(r.base) + Checked(ceil_div(r.rows, channels)) * r.row_bytes)};
}

// What each instruction reads and writes, for the largest run the program
// allows (hazards are decided once per program, conservatively).
Footprint footprint(const Instruction& in, uint32_t T, uint32_t C) {
  Footprint f;
  auto rd = [&](const isa::Operand& o, Checked w, uint64_t e, uint32_t rows) {
    f.reads.push_back(operand_range(o, w, e, rows));
  };
  auto wr = [&](const isa::Operand& o, Checked w, uint64_t e, uint32_t rows) {
    f.writes.push_back(operand_range(o, w, e, rows));
  };
  auto rd_hbm = [&](const isa::HbmRegion& r) {
    if (!r.empty()) f.reads.push_back(region_range(r, C));
  };
  switch (in.op) {
    case Opcode::Embed:
      if (isa::EmbedSource(in.sub) == isa::EmbedSource::Tokens) rd(in.a, 1, 4, T);
      if (in.flags & isa::kFlagAccumulate) rd(in.dst, in.n, 2, T);
      rd_hbm(in.w0);
      wr(in.dst, in.n, 2, T);
      break;
    case Opcode::Norm:
      rd(in.a, in.n, 2, T);
      rd_hbm(in.w0);
      rd_hbm(in.w1);
      wr(in.dst, in.n, 2, T);
      break;
    case Opcode::MatMul: {
      const uint64_t elem = (in.flags & isa::kFlagOutF32) ? 4 : 2;
      rd(in.a, in.k, 2, T);
      if (in.flags & isa::kFlagHasResidual) rd(in.b, in.n, 2, T);
      rd_hbm(in.w0);
      rd_hbm(in.w1);
      wr(in.dst, in.n, elem, T);
      if (in.flags & isa::kFlagArgmax) wr(in.b, 1, 4, 1);
      if (in.i2) rd(in.c, 2, 4, T);  // the pick
      break;
    }
    case Opcode::Rope:
      rd(in.dst, Checked(in.n) * in.k, 2, T);
      rd_hbm(in.w0);
      wr(in.dst, Checked(in.n) * in.k, 2, T);
      break;
    case Opcode::KvStore:
      rd(in.a, in.n, 2, T);
      rd(in.b, in.n, 2, T);
      f.writes.push_back(region_range(in.w0, C));
      f.writes.push_back(region_range(in.w1, C));
      break;
    case Opcode::Attention:
      rd(in.a, Checked(in.n) * in.k, 2, T);
      rd_hbm(in.w0);
      rd_hbm(in.w1);
      wr(in.dst, Checked(in.n) * in.k, 2, T);
      break;
    case Opcode::Add:
    case Opcode::Mul:
      rd(in.a, in.n, 2, T);
      rd(in.b, in.n, 2, T);
      wr(in.dst, in.n, 2, T);
      break;
    case Opcode::Act:
    case Opcode::Bias:
      rd(in.a, in.n, 2, T);
      rd_hbm(in.w1);
      wr(in.dst, in.n, 2, T);
      break;
    case Opcode::Argmax:
      rd(in.a, in.n, 4, T);
      wr(in.dst, 1, 4, 1);
      break;
    case Opcode::Prefetch:
      rd_hbm(in.w0);
      rd_hbm(in.w1);
      if (in.i2) rd(in.c, 2, 4, T);
      break;
    case Opcode::TopK:
      rd(in.a, in.n, 4, T);
      wr(in.dst, Checked(in.k) * 2, 4, T);
      break;
    case Opcode::AllReduce:
      rd(in.a, in.n, 2, T);
      if (in.flags & isa::kFlagHasResidual) rd(in.b, in.n, 2, T);
      rd_hbm(in.w1);
      wr(in.dst, in.n, 2, T);
      break;
    case Opcode::AllGather: {
      const uint64_t elem = (in.flags & isa::kFlagOutF32) ? 4 : 2;
      rd(in.a, in.n, elem, T);
      wr(in.dst, uint64_t(in.n) * std::max<uint32_t>(in.i1, 1), elem, T);
      break;
    }
  }
  return f;
}

bool conflict(const Footprint& earlier, const Footprint& later) {
  for (const Range& w : earlier.writes) {
    for (const Range& r : later.reads)
      if (w.overlaps(r)) return true;
    for (const Range& w2 : later.writes)
      if (w.overlaps(w2)) return true;
  }
  for (const Range& r : earlier.reads)
    for (const Range& w : later.writes)
      if (r.overlaps(w)) return true;
  return false;
}

// Bytes of a striped vector region (norm gains, biases) holding n elements.
uint64_t vector_bytes(uint64_t n) { return ceil_div(n, 32) * 64; }

// The expert blocks an expert MATMUL of `rows` token rows streams at most: each row picks
// one, so one per row and no more than there are (a decode step: exactly one). 1 otherwise.
uint64_t streamed_blocks(const Instruction& in, uint32_t rows) {
  return in.i2 ? std::min<uint64_t>(rows, in.i2) : 1;
}

struct Pending {
  double end_ns;
  uint64_t per_channel;  // bytes of each channel's stream already in the buffer
  uint64_t total;        // bytes over all channels
};

}  // namespace

const char* engine_name(Engine e) {
  switch (e) {
    case Engine::Memory: return "HBM stream";
    case Engine::Matrix: return "matrix engine";
    case Engine::Vector: return "vector engine";
    case Engine::Ring: return "ring link";
  }
  return "?";
}

const char* bound_name(Bound b) {
  switch (b) {
    case Bound::Memory: return "memory";
    case Bound::Compute: return "compute";
    case Bound::Vector: return "vector";
    case Bound::Ring: return "ring";
    case Bound::Latency: return "latency";
  }
  return "?";
}

CostModel::CostModel(isa::Program program, DevicePreset preset)
    : program_(std::move(program)), preset_(std::move(preset)) {
  preset_.validate();
  const auto& code = program_.code;
  std::vector<Footprint> prints;
  prints.reserve(code.size());
  for (const auto& in : code)
    prints.push_back(footprint(in, program_.max_tokens, preset_.hbm_channels));
  deps_.resize(code.size());
  for (size_t i = 0; i < code.size(); ++i)
    for (size_t j = 0; j < i; ++j)
      if (conflict(prints[j], prints[i])) deps_[i].push_back(uint32_t(j));
}

RunCost CostModel::run(const RunArgs& args) const {
  const auto& code = program_.code;
  const DevicePreset& p = preset_;
  if (args.n_tokens == 0 || args.n_tokens > program_.max_tokens)
    throw SpecError("a run carries 1.." + std::to_string(program_.max_tokens) +
                    " token rows, not " + std::to_string(args.n_tokens));
  const uint32_t C = p.hbm_channels, T = args.n_tokens;
  const double cyc = p.cycle_ns();
  // One channel's sustained stream, bytes per ns (GB/s are bytes per ns).
  const double channel_bw = p.hbm_bandwidth_gbps * p.hbm_efficiency / double(C);
  const double lat = p.hbm_latency_ns;
  const double chain = p.chain_cycles * cyc;
  const uint64_t trees = p.mac_trees, lanes = p.mac_lanes, vl = p.vector_lanes;
  const uint64_t buffer_per_channel = p.weight_buffer_bytes / C;
  auto stream_ns = [&](double bytes_per_channel) { return bytes_per_channel / channel_bw; };
  auto vec_ns = [&](uint64_t elements, uint32_t passes) {
    return (double(ceil_div(elements, vl)) + passes * double(p.vector_pipeline_cycles)) * cyc;
  };

  RunCost out;
  std::vector<double> end(code.size(), 0.0), start_of(code.size(), 0.0);
  std::vector<bool> ran(code.size(), false);
  std::array<double, kEngines> engine_free{};
  std::map<uint64_t, Pending> prefetched;  // by weight region base
  double prev_start = -double(p.issue_cycles) * cyc;

  for (size_t i = 0; i < code.size(); ++i) {
    const Instruction& in = code[i];
    // A prefill chunk that is not the last skips the logits (docs/isa.md).
    if (!args.want_logits && (in.flags & isa::kFlagLogitRows)) continue;
    const uint32_t rows = (in.flags & isa::kFlagLogitRows) && !args.logits_all ? 1 : T;

    InstructionCost c;
    c.index = uint32_t(i);
    c.op = in.op;
    c.issue_ns = prev_start + p.issue_cycles * cyc;
    double ready = c.issue_ns;
    // A ring instruction may start on the first chunk of the MATMUL feeding it.
    int64_t producer = -1;
    for (uint32_t j : deps_[i])
      if (ran[j] && code[j].op == Opcode::MatMul) producer = j;
    double ready_others = c.issue_ns;  // every dependency but that MATMUL
    for (uint32_t j : deps_[i]) {
      if (!ran[j]) continue;
      ready = std::max(ready, end[j] + chain);
      if (int64_t(j) != producer) ready_others = std::max(ready_others, end[j] + chain);
    }
    auto use = [&](Engine e, double b, double e_ns) { c.engines[size_t(e)] = Span{b, e_ns}; };
    // Small parameter vectors (gains, biases, rotary rows) are fetched when the
    // instruction issues, so their latency hides behind its dependencies.
    auto params_ready = [&](uint64_t bytes) {
      return bytes ? c.issue_ns + lat + stream_ns(double(bytes) / C) : 0.0;
    };

    switch (in.op) {
      case Opcode::MatMul: {
        const bool glu = in.flags & isa::kFlagGlu;
        // An expert MATMUL (ISA v5) streams the rows of each block its rows picked; every
        // block starts on channel 0, so each spreads over all channels.
        const uint64_t blocks = streamed_blocks(in, rows);
        const uint64_t block_rows = uint64_t(in.n) * (glu ? 2 : 1);
        const uint64_t weight_rows = block_rows * blocks;
        const uint64_t per_channel_rows = ceil_div(block_rows, C) * blocks;
        uint64_t per_channel = per_channel_rows * in.w0.row_bytes;
        const uint64_t weights = weight_rows * in.w0.row_bytes;
        // Outputs to the I/O buffer (logits) are HBM writes, all in channel 0.
        const uint64_t elem = (in.flags & isa::kFlagOutF32) ? 4 : 2;
        const uint64_t io_out =
            in.dst.space == isa::Space::Io ? uint64_t(rows) * in.n * elem : 0;
        const uint64_t bias = (in.flags & isa::kFlagHasBias) ? vector_bytes(weight_rows) : 0;
        c.start_ns = std::max({ready, engine_free[size_t(Engine::Matrix)]});
        Pending pf{0.0, 0, 0};
        if (auto it = prefetched.find(in.w0.base); it != prefetched.end()) {
          pf = it->second;
          prefetched.erase(it);
        }
        // A prefetched stream continues where the PREFETCH left it (no new latency).
        const double mem_begin = std::max(c.start_ns, engine_free[size_t(Engine::Memory)]);
        const double mem_end = mem_begin + (pf.total ? 0.0 : lat) +
                               stream_ns(double(per_channel - pf.per_channel + io_out));
        const double mac_end =
            c.start_ns + double(ceil_div(weight_rows, trees) * ceil_div(in.k, lanes) * rows) * cyc;
        c.end_ns = std::max(mem_end, mac_end) + p.mac_pipeline_cycles * cyc;
        use(Engine::Memory, mem_begin, mem_end);
        use(Engine::Matrix, c.start_ns, c.end_ns);
        c.weight_bytes = weights - pf.total;
        c.hbm_bytes = c.weight_bytes + io_out + bias;
        // Each token row multiplies its own expert's block only.
        c.macs = block_rows * in.k * rows;
        const double streaming = stream_ns(double(per_channel - pf.per_channel + io_out));
        c.bound = mem_end >= mac_end ? (streaming >= lat ? Bound::Memory : Bound::Latency)
                                     : Bound::Compute;
        break;
      }
      case Opcode::Prefetch: {
        // n rows (an expert PREFETCH: of the picked block), else the whole region.
        const uint64_t stream_rows = in.n ? in.n : in.w0.rows;
        const uint64_t per_channel = ceil_div(stream_rows, C) * in.w0.row_bytes;
        const uint64_t take = std::min(per_channel, buffer_per_channel);
        const uint64_t total = std::min<uint64_t>(stream_rows * in.w0.row_bytes, take * C);
        c.start_ns = std::max(ready, engine_free[size_t(Engine::Memory)]);
        c.end_ns = c.start_ns + lat + stream_ns(double(take));
        use(Engine::Memory, c.start_ns, c.end_ns);
        c.hbm_bytes = c.weight_bytes = total;
        c.bound = Bound::Memory;
        prefetched[in.w0.base] = Pending{c.end_ns, take, total};
        break;
      }
      case Opcode::Embed: {
        const uint64_t bytes = uint64_t(T) * in.w0.row_bytes;
        c.start_ns = std::max(ready, engine_free[size_t(Engine::Memory)]);
        double done = c.start_ns + lat + stream_ns(double(ceil_div(T, C) * in.w0.row_bytes));
        use(Engine::Memory, c.start_ns, done);
        if ((in.flags & isa::kFlagAccumulate) || in.f0 != 1.0f) {
          const double v0 = std::max(c.start_ns, engine_free[size_t(Engine::Vector)]);
          const double v1 = v0 + vec_ns(uint64_t(T) * in.n, 1);
          use(Engine::Vector, v0, v1);
          c.vector_ops = uint64_t(T) * in.n;
          done = std::max(done, v1);
        }
        c.end_ns = done;
        c.hbm_bytes = bytes;
        c.bound = Bound::Latency;
        break;
      }
      case Opcode::KvStore: {
        const uint64_t row_bytes = uint64_t(in.w0.row_bytes) + in.w1.row_bytes;
        c.start_ns = std::max(ready, engine_free[size_t(Engine::Memory)]);
        c.end_ns = c.start_ns + lat + stream_ns(double(ceil_div(T, C) * row_bytes));
        use(Engine::Memory, c.start_ns, c.end_ns);
        c.hbm_bytes = uint64_t(T) * row_bytes;
        c.bound = Bound::Latency;
        break;
      }
      case Opcode::Attention: {
        const uint32_t heads = in.n, hd = in.k;
        const uint64_t last = uint64_t(args.start_pos) + T - 1;
        const uint64_t window = in.i1;
        auto first_key = [&](uint64_t pos) {
          return window && pos + 1 > window ? pos + 1 - window : uint64_t(0);
        };
        const uint64_t kv_rows = last - first_key(args.start_pos) + 1;
        const uint64_t row_bytes = uint64_t(in.w0.row_bytes) + in.w1.row_bytes;
        uint64_t mac_cycles = 0, softmax = 0;
        for (uint32_t t = 0; t < T; ++t) {
          const uint64_t pos = uint64_t(args.start_pos) + t, keys = pos - first_key(pos) + 1;
          c.macs += 2 * uint64_t(heads) * keys * hd;  // scores and the weighted sum
          mac_cycles += 2 * ceil_div(uint64_t(heads) * keys, trees) * ceil_div(hd, lanes);
          softmax += 3 * uint64_t(heads) * keys;  // max, exp and sum, scale
        }
        c.start_ns = std::max({ready, engine_free[size_t(Engine::Matrix)],
                               engine_free[size_t(Engine::Vector)]});
        const double mem_begin = std::max(c.start_ns, engine_free[size_t(Engine::Memory)]);
        const double mem_end = mem_begin + lat + stream_ns(double(ceil_div(kv_rows, C) * row_bytes));
        const double mac = mac_cycles * cyc, vec = vec_ns(softmax, 3);
        // Scores, softmax and the weighted sum pipeline across heads.
        c.end_ns = std::max({mem_end, c.start_ns + mac, c.start_ns + vec}) +
                   p.mac_pipeline_cycles * cyc;
        use(Engine::Memory, mem_begin, mem_end);
        use(Engine::Matrix, c.start_ns, c.end_ns);
        use(Engine::Vector, c.start_ns, c.end_ns);
        c.hbm_bytes = kv_rows * row_bytes;
        c.vector_ops = softmax;
        const double m = mem_end - c.start_ns;
        c.bound = m >= mac && m >= vec ? Bound::Memory : (mac >= vec ? Bound::Compute : Bound::Vector);
        break;
      }
      case Opcode::Norm:
      case Opcode::Rope:
      case Opcode::Add:
      case Opcode::Mul:
      case Opcode::Act:
      case Opcode::Bias:
      case Opcode::Argmax:
      case Opcode::TopK: {
        uint64_t elements = uint64_t(T) * in.n;
        uint32_t passes = 1;
        uint64_t params = 0;
        uint64_t lane_slots = 0;  // elements plus the lanes left idle, when more
        if (in.op == Opcode::Norm) {
          passes = NormKind(in.sub) == NormKind::LayerNorm ? 3 : 2;  // (mean,) variance, scale
          params = vector_bytes(in.n) * ((in.flags & isa::kFlagHasBias) ? 2 : 1);
          // By groups (ISA v4, k != 0): each group of k starts on fresh vector lanes, so a
          // group narrower than the lanes (or not a multiple of them) leaves lanes idle.
          if (in.k != 0 && in.k < in.n)
            lane_slots = uint64_t(T) * ceil_div(in.n, in.k) * ceil_div(in.k, vl) * vl;
        } else if (in.op == Opcode::Rope) {
          elements = uint64_t(T) * in.n * in.i0;
          params = uint64_t(T) * in.w0.row_bytes;
        } else if (in.op == Opcode::Bias) {
          params = vector_bytes(in.n);
        } else if (in.op == Opcode::Argmax) {
          elements = in.n;  // the last logits row
        } else if (in.op == Opcode::TopK) {
          // softmax (max, exponentials and sum, divide), then k passes picking a maximum
          passes = 3 + in.k;
        }
        // ACT's activations (clip too) and the LM head's logit scale and soft-cap (MATMUL
        // epilogue, inside mac_pipeline_cycles) cost the same whatever they compute; so does
        // ATTN's score soft-cap (its vector work is per score either way).
        c.start_ns = std::max({ready, engine_free[size_t(Engine::Vector)], params_ready(params)});
        if (lane_slots < elements) lane_slots = elements;
        c.end_ns = c.start_ns + vec_ns(lane_slots * passes, passes);
        use(Engine::Vector, c.start_ns, c.end_ns);
        // RING_STATS: between the two passes the rows' sums of squares (4 bytes each) go
        // round the ring and back, 2(N-1) hops, while the vector engine waits.
        if (in.op == Opcode::Norm && (in.flags & isa::kFlagRingStats) && in.i1 > 1) {
          const uint32_t N = in.i1;
          const double ring = 2.0 * (N - 1) *
                              (p.ring_latency_ns + double(T) * 4.0 / p.ring_bandwidth_gbps);
          const double start = std::max(c.end_ns, engine_free[size_t(Engine::Ring)]);
          use(Engine::Ring, start, start + ring);
          c.end_ns = start + ring;
          use(Engine::Vector, c.start_ns, c.end_ns);  // held until the sums are back
        }
        c.vector_ops = elements * passes;
        c.hbm_bytes = params;
        c.bound = Bound::Vector;
        break;
      }
      case Opcode::AllReduce:
      case Opcode::AllGather: {
        // Ring all-reduce: reduce-scatter then all-gather, 2(N-1) steps of 1/N of
        // the data; all-gather: N-1 steps of the whole part. Each step pays a hop
        // latency. An all-reduce is cut into `i0` chunks along the features, so
        // chunk c travels while the MATMUL before it still computes chunk c+1.
        const uint32_t N = std::max<uint32_t>(in.i1, 1);
        const uint64_t elem = (in.op == Opcode::AllGather && (in.flags & isa::kFlagOutF32)) ? 4 : 2;
        const uint64_t bytes = uint64_t(rows) * in.n * elem;
        const double bw = p.ring_bandwidth_gbps;
        c.start_ns = std::max(c.issue_ns, engine_free[size_t(Engine::Ring)]);
        if (N == 1) {
          c.start_ns = std::max(c.start_ns, ready);
          c.end_ns = c.start_ns + vec_ns(uint64_t(rows) * in.n, 1);
          c.bound = Bound::Vector;
        } else if (in.op == Opcode::AllGather) {
          c.start_ns = std::max(c.start_ns, ready);
          c.end_ns = c.start_ns + (N - 1) * (p.ring_latency_ns + double(bytes) / bw);
          c.ring_bytes = (N - 1) * bytes;
          c.bound = Bound::Ring;
        } else {
          const uint32_t chunks = std::max<uint32_t>(in.i0, 1);
          const double step = p.ring_latency_ns + double(bytes) / (double(N) * chunks * bw);
          const double per_chunk = 2.0 * (N - 1) * step;
          // Without a MATMUL producer (or unchunked) the whole input must be there.
          double t;
          if (producer >= 0 && chunks > 1) {
            const double ps = start_of[size_t(producer)], pe = end[size_t(producer)];
            t = std::max(c.start_ns, ready_others);
            c.start_ns = std::max(t, ps + (pe - ps) / chunks + chain);
            if (chunks <= kChunkLoopLimit) {
              for (uint32_t k = 0; k < chunks; ++k)
                t = std::max(t, ps + (pe - ps) * (k + 1) / chunks + chain) + per_chunk;
            } else {
              // The same recurrence in closed form, for chunk counts no compiled program has
              // (i0 comes from the program file: up to 2^32 - 1, a loop of minutes). Chunk k is
              // ready at ps + (pe - ps)(k + 1) / chunks + chain, linear in k, so the last one
              // leaves at the latest of: t + chunks chunks, the first chunk's readiness +
              // chunks chunks, the last chunk's readiness (pe + chain) + one chunk.
              const double n = chunks;
              t = std::max({t + n * per_chunk, ps + (pe - ps) / n + chain + n * per_chunk,
                            pe + chain + per_chunk});
            }
          } else {
            c.start_ns = std::max(c.start_ns, ready);
            t = c.start_ns + chunks * per_chunk;
          }
          c.end_ns = t + vec_ns(uint64_t(rows) * in.n, 1);  // the sum and its epilogue
          c.ring_bytes = 2 * (N - 1) * bytes / N;
          c.bound = Bound::Ring;
        }
        use(Engine::Ring, c.start_ns, c.end_ns);
        break;
      }
    }
    for (size_t e = 0; e < kEngines; ++e)
      if (c.engines[e].used()) {
        engine_free[e] = std::max(engine_free[e], c.engines[e].end_ns);
        out.busy_ns[e] += c.engines[e].length();
      }
    end[i] = c.end_ns;
    start_of[i] = c.start_ns;
    ran[i] = true;
    prev_start = c.start_ns;
    out.time_ns = std::max(out.time_ns, c.end_ns);
    out.hbm_bytes += c.hbm_bytes;
    out.weight_bytes += c.weight_bytes;
    out.macs += c.macs;
    out.ring_bytes += c.ring_bytes;
    out.instructions.push_back(c);
  }
  return out;
}

Floors floors(const isa::Program& program, const DevicePreset& preset, const RunArgs& args) {
  Floors f;
  for (const auto& in : program.code) {
    if (in.op != Opcode::MatMul) continue;
    if (!args.want_logits && (in.flags & isa::kFlagLogitRows)) continue;
    const uint32_t rows =
        (in.flags & isa::kFlagLogitRows) && !args.logits_all ? 1 : args.n_tokens;
    const uint64_t block_rows = uint64_t(in.n) * ((in.flags & isa::kFlagGlu) ? 2 : 1);
    // Quantized weights (ISA v3): the codes and one fp16 scale per group.
    const bool q = in.i0 == 4 || in.i0 == 8;
    const uint64_t row = q && in.i1 ? uint64_t(in.k) * in.i0 / 8 + uint64_t(in.k / in.i1) * 2
                                    : uint64_t(in.k) * 2;
    f.weight_bytes += block_rows * streamed_blocks(in, rows) * row;
    f.macs += block_rows * in.k * rows;
  }
  f.bandwidth_ns = double(f.weight_bytes) / preset.hbm_bandwidth_gbps;
  const double macs_per_ns =
      double(preset.mac_trees) * preset.mac_lanes * preset.clock_mhz / 1000.0;
  f.compute_ns = double(f.macs) / macs_per_ns;
  return f;
}

}  // namespace hyperdex::cost
