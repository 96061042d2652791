#include "cost/profiler.h"

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <sstream>

#include "common/error.h"
#include "common/file_io.h"

namespace hyperdex::cost {
namespace {

void json_string(std::ostringstream& s, const std::string& text) {
  s << '"';
  for (char ch : text) {
    if (ch == '"' || ch == '\\') s << '\\' << ch;
    else if (uint8_t(ch) < 0x20) s << ' ';
    else s << ch;
  }
  s << '"';
}

// Whole cycles of a span of `ns` for the trace. A program the device would refuse (the cost
// model prices any program, e.g. for hdex-objdump) can give spans of 2^64 cycles and more, or
// inf / NaN, whose conversion to an integer is undefined: those saturate.
uint64_t whole_cycles(double ns, double cycle_ns) {
  const double c = ns / cycle_ns + 0.5;
  if (!(c >= 0.0)) return 0;
  if (c >= 18446744073709551616.0) return UINT64_MAX;  // 2^64
  return uint64_t(c);
}

}  // namespace

Profiler::Profiler(const isa::Program& prefill, const isa::Program& decode,
                   const DevicePreset& preset, uint32_t devices)
    : prefill_(prefill, preset), decode_(decode, preset), devices_(std::max<uint32_t>(devices, 1)) {
  if (prefill.kind != isa::ProgramKind::Prefill || decode.kind != isa::ProgramKind::Decode)
    throw SpecError("the profiler takes a prefill program and a decode program, in that order");
}

void Profiler::reset() {
  totals_ = Totals{};
  clock_ns_ = 0.0;
  events_.clear();
  runs_.clear();
}

void Profiler::record(isa::ProgramKind kind, const RunArgs& args, const RunCost& cost) {
  const bool prefill = kind == isa::ProgramKind::Prefill;
  (prefill ? totals_.prefill_ns : totals_.decode_ns) += cost.time_ns;
  if (prefill) {
    totals_.prefill_runs += 1;
    totals_.prefill_tokens += args.n_tokens;
  } else {
    totals_.decode_runs += 1;
    totals_.decode_hbm_bytes += cost.hbm_bytes;
  }
  totals_.hbm_bytes += cost.hbm_bytes;
  totals_.weight_bytes += cost.weight_bytes;
  totals_.macs += cost.macs;
  totals_.ring_bytes += cost.ring_bytes;
  for (size_t e = 0; e < kEngines; ++e) totals_.busy_ns[e] += cost.busy_ns[e];
  const double overhead = decode_.preset().run_overhead_us * 1000.0;
  totals_.overhead_ns += overhead;
  if (keep_) {
    const uint32_t run = uint32_t(runs_.size());
    runs_.push_back(RunInfo{kind, args, clock_ns_, clock_ns_ + cost.time_ns});
    for (const auto& c : cost.instructions)
      for (size_t e = 0; e < kEngines; ++e)
        if (c.engines[e].used())
          events_.push_back(Event{clock_ns_ + c.engines[e].begin_ns, clock_ns_ + c.engines[e].end_ns,
                                  c.index, uint8_t(e), uint8_t(kind), uint8_t(c.bound), run});
  }
  clock_ns_ += cost.time_ns + overhead;
}

RunCost Profiler::prefill(uint32_t start_pos, uint32_t n, bool logits_all) {
  if (n == 0) throw SpecError("prefill needs at least one token");
  RunCost total;
  const uint32_t chunk = prefill_chunk();
  for (uint32_t done = 0; done < n;) {
    const uint32_t rows = std::min(chunk, n - done);
    const bool last = done + rows == n;
    RunArgs args{start_pos + done, rows, logits_all, logits_all || last};
    RunCost c = prefill_.run(args);
    record(isa::ProgramKind::Prefill, args, c);
    total.time_ns += c.time_ns;
    total.hbm_bytes += c.hbm_bytes;
    total.weight_bytes += c.weight_bytes;
    total.macs += c.macs;
    total.ring_bytes += c.ring_bytes;
    for (size_t e = 0; e < kEngines; ++e) total.busy_ns[e] += c.busy_ns[e];
    if (last) total.instructions = std::move(c.instructions);  // the one with the logits
    done += rows;
  }
  return total;
}

RunCost Profiler::decode(uint32_t position) {
  RunArgs args{position, 1, false, true};
  RunCost c = decode_.run(args);
  record(isa::ProgramKind::Decode, args, c);
  return c;
}

std::string Profiler::chrome_trace() const {
  std::ostringstream s;
  s.precision(12);
  const DevicePreset& preset = decode_.preset();
  const double cyc = preset.cycle_ns();
  s << "{\"displayTimeUnit\":\"ns\",\"otherData\":{\"preset\":";
  json_string(s, preset.name);
  s << ",\"devices\":" << devices_ << ",\"clock_mhz\":" << preset.clock_mhz
    << ",\"note\":\"estimated by the hyperdex cost model (docs/cost-model.md)\"},\"traceEvents\":[";
  bool first = true;
  auto sep = [&] {
    if (!first) s << ",\n";
    first = false;
  };
  const char* tracks[kEngines + 1] = {engine_name(Engine::Memory), engine_name(Engine::Matrix),
                                      engine_name(Engine::Vector), engine_name(Engine::Ring),
                                      "runs"};
  // Tensor-parallel devices run the same program on their shares in lockstep (the
  // ring synchronises them), so every device shows the same timeline.
  for (uint32_t d = 0; d < devices_; ++d) {
    sep();
    s << "{\"ph\":\"M\",\"pid\":" << d << ",\"name\":\"process_name\",\"args\":{\"name\":";
    json_string(s, "device " + std::to_string(d) + " (" + preset.name + ")");
    s << "}}";
    for (uint32_t t = 0; t <= kEngines; ++t) {
      sep();
      s << "{\"ph\":\"M\",\"pid\":" << d << ",\"tid\":" << t
        << ",\"name\":\"thread_name\",\"args\":{\"name\":\"" << tracks[t] << "\"}}";
      sep();
      s << "{\"ph\":\"M\",\"pid\":" << d << ",\"tid\":" << t
        << ",\"name\":\"thread_sort_index\",\"args\":{\"sort_index\":" << t << "}}";
    }
    for (size_t r = 0; r < runs_.size(); ++r) {
      const RunInfo& run = runs_[r];
      const bool prefill = run.kind == isa::ProgramKind::Prefill;
      std::string name = prefill ? "prefill " + std::to_string(run.args.start_pos) + ".." +
                                       std::to_string(run.args.start_pos + run.args.n_tokens - 1)
                                 : "decode @" + std::to_string(run.args.start_pos);
      sep();
      s << "{\"ph\":\"X\",\"pid\":" << d << ",\"tid\":" << int(kRunTrack) << ",\"name\":";
      json_string(s, name);
      s << ",\"ts\":" << run.begin_ns / 1000.0 << ",\"dur\":" << (run.end_ns - run.begin_ns) / 1000.0
        << ",\"args\":{\"tokens\":" << run.args.n_tokens << ",\"start_pos\":" << run.args.start_pos
        << "}}";
      if (preset.run_overhead_us > 0) {
        sep();
        s << "{\"ph\":\"X\",\"pid\":" << d << ",\"tid\":" << int(kRunTrack)
          << ",\"name\":\"host (run overhead)\",\"ts\":" << run.end_ns / 1000.0
          << ",\"dur\":" << preset.run_overhead_us << "}";
      }
    }
    for (const Event& ev : events_) {
      const isa::Program& prog =
          ev.program == uint8_t(isa::ProgramKind::Prefill) ? prefill_.program() : decode_.program();
      const isa::Instruction& in = prog.code[ev.index];
      std::string name = isa::opcode_name(in.op);
      const uint64_t base = in.w0.empty() ? in.w1.base : in.w0.base;
      if (!in.w0.empty() || !in.w1.empty())
        if (auto it = names_.find(base); it != names_.end()) name += " " + it->second;
      sep();
      s << "{\"ph\":\"X\",\"pid\":" << d << ",\"tid\":" << int(ev.track) << ",\"name\":";
      json_string(s, name);
      s << ",\"cat\":\"" << (ev.program == uint8_t(isa::ProgramKind::Prefill) ? "prefill" : "decode")
        << "\",\"ts\":" << ev.begin_ns / 1000.0 << ",\"dur\":" << (ev.end_ns - ev.begin_ns) / 1000.0
        << ",\"args\":{\"instruction\":" << ev.index << ",\"run\":" << ev.run
        << ",\"cycles\":" << whole_cycles(ev.end_ns - ev.begin_ns, cyc) << ",\"bound\":\""
        << bound_name(Bound(ev.bound)) << "\"}}";
    }
  }
  s << "]}\n";
  return s.str();
}

void Profiler::write_chrome_trace(const std::string& path) const {
  const std::string text = chrome_trace();
  write_file_atomic(path, text.data(), text.size());
}

}  // namespace hyperdex::cost
