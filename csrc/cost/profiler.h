// The profiler: prices what a generation ran (prefill chunks, then one decode
// run per token) with the cost model, keeps the totals, and lays the runs end to
// end on one timeline that it writes as a Chrome / Perfetto trace (one process
// per device, one track per engine, plus a track of the runs themselves). Each
// run is followed by the preset's run overhead (the host's part of a token).
#pragma once
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "cost/cost_model.h"

namespace hyperdex::cost {

struct Totals {
  double prefill_ns = 0.0, decode_ns = 0.0;  // device time of the runs
  double overhead_ns = 0.0;                  // the preset's run_overhead_us, once per run
  uint32_t prefill_runs = 0, prefill_tokens = 0, decode_runs = 0;
  uint64_t hbm_bytes = 0, decode_hbm_bytes = 0, weight_bytes = 0, macs = 0, ring_bytes = 0;
  std::array<double, kEngines> busy_ns{};
  double time_ns() const { return prefill_ns + decode_ns + overhead_ns; }
};

class Profiler {
 public:
  // `devices`: the ring the programs were made for (the trace shows each device;
  // tensor-parallel devices run the same program on their shares).
  Profiler(const isa::Program& prefill, const isa::Program& decode, const DevicePreset& preset,
           uint32_t devices = 1);

  // HBM region names for the trace ("MATMUL blk.3.ffn_up"); by region base.
  void set_region_names(std::map<uint64_t, std::string> names) { names_ = std::move(names); }
  // Keep every instruction's spans for chrome_trace() (memory grows with the runs).
  void set_keep_timeline(bool keep) { keep_ = keep; }
  bool keep_timeline() const { return keep_; }

  // A prompt of n tokens from start_pos, in chunks of the prefill program's rows
  // exactly as runtime::Session::prefill runs it; returns the chunks' total.
  RunCost prefill(uint32_t start_pos, uint32_t n, bool logits_all = false);
  // One decode run at `position`.
  RunCost decode(uint32_t position);
  // Forget the runs (totals and timeline).
  void reset();

  const Totals& totals() const { return totals_; }
  const CostModel& prefill_model() const { return prefill_; }
  const CostModel& decode_model() const { return decode_; }
  uint32_t devices() const { return devices_; }
  uint32_t prefill_chunk() const { return prefill_.program().max_tokens; }

  std::string chrome_trace() const;
  void write_chrome_trace(const std::string& path) const;  // atomic (tmp + rename)

 private:
  void record(isa::ProgramKind kind, const RunArgs& args, const RunCost& cost);

  struct Event {  // one instruction on one engine, or a run on the run track
    double begin_ns, end_ns;
    uint32_t index;  // instruction index, or the run's number
    uint8_t track;   // an Engine, or kRunTrack
    uint8_t program; // ProgramKind
    uint8_t bound;
    uint32_t run;    // which run (for the run track's label)
  };
  struct RunInfo {
    isa::ProgramKind kind;
    RunArgs args;
    double begin_ns, end_ns;
  };
  static constexpr uint8_t kRunTrack = kEngines;

  CostModel prefill_, decode_;
  uint32_t devices_;
  std::map<uint64_t, std::string> names_;
  bool keep_ = false;
  Totals totals_;
  double clock_ns_ = 0.0;  // where the next run starts on the timeline
  std::vector<Event> events_;
  std::vector<RunInfo> runs_;
};

}  // namespace hyperdex::cost
