// The cost model: how long a device built to a preset would take to run a
// compiled program (docs/cost-model.md states every assumption).
//
// Each instruction gets a time from what it moves and computes: its HBM stream
// (bytes of the busiest pseudo-channel at the sustained bandwidth, plus the
// latency to first data), its matrix work (MACs over trees x lanes), its vector
// work (passes over the vector lanes), its ring transfers. The controller starts
// instructions in program order, one per `issue_cycles`; an instruction may start
// while earlier ones still run when it does not touch memory they write (or write
// memory they read) and the engines it needs are free. Engines: the HBM stream,
// the matrix engine, the vector engine and the ring link; each runs one
// instruction at a time.
#pragma once
#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include "device/device.h"
#include "isa/isa.h"
#include "spec/model_spec.h"

namespace hyperdex::cost {

enum class Engine : uint8_t { Memory = 0, Matrix = 1, Vector = 2, Ring = 3 };
constexpr size_t kEngines = 4;
const char* engine_name(Engine e);

// What set an instruction's time.
enum class Bound : uint8_t {
  Memory = 0,   // its HBM stream
  Compute = 1,  // the matrix engine
  Vector = 2,   // the vector engine
  Ring = 3,     // the ring link
  Latency = 4,  // fixed latencies (pipeline fill, first data, hand-offs)
};
const char* bound_name(Bound b);

struct Span {
  double begin_ns = 0.0, end_ns = 0.0;
  bool used() const { return end_ns > begin_ns; }
  double length() const { return end_ns - begin_ns; }
};

struct InstructionCost {
  uint32_t index = 0;  // in the program
  isa::Opcode op = isa::Opcode::Add;
  double issue_ns = 0.0;  // earliest start program order allows
  double start_ns = 0.0;  // after dependencies and busy engines
  double end_ns = 0.0;
  std::array<Span, kEngines> engines{};  // when it occupies each engine
  uint64_t hbm_bytes = 0;                // read and written, all channels
  uint64_t weight_bytes = 0;             // of which weights (MATMUL, PREFETCH)
  uint64_t macs = 0;
  uint64_t vector_ops = 0;   // element passes on the vector engine
  uint64_t ring_bytes = 0;   // sent by this device
  Bound bound = Bound::Latency;

  double duration_ns() const { return end_ns - start_ns; }
  double wait_ns() const { return start_ns - issue_ns; }  // stalled on dependencies or engines
};

struct RunCost {
  double time_ns = 0.0;  // first start to last end
  uint64_t hbm_bytes = 0, weight_bytes = 0, macs = 0, ring_bytes = 0;
  std::array<double, kEngines> busy_ns{};  // per engine
  std::vector<InstructionCost> instructions;  // those the run executes, in program order

  // Achieved HBM bandwidth (GB/s) and its share of the preset's peak.
  double bandwidth_gbps() const { return time_ns > 0 ? double(hbm_bytes) / time_ns : 0.0; }
};

// Prices runs of one program on one device of a ring of `devices` (the ring
// instructions carry their own ring size; `devices` only names the trace).
class CostModel {
 public:
  CostModel(isa::Program program, DevicePreset preset);

  const isa::Program& program() const { return program_; }
  const DevicePreset& preset() const { return preset_; }
  // The instructions each instruction must wait for (hazards on on-chip
  // memory, I/O buffers and HBM regions), by index.
  const std::vector<std::vector<uint32_t>>& dependencies() const { return deps_; }

  // The run as the device would execute it (RunArgs as the runtime passes them).
  RunCost run(const RunArgs& args) const;

 private:
  isa::Program program_;
  DevicePreset preset_;
  std::vector<std::vector<uint32_t>> deps_;
};

// Weight bytes a decode step streams from HBM at the least (every matrix region
// a MATMUL reads, once), and the MACs of its matrix instructions: the two
// floors no estimate can beat.
struct Floors {
  uint64_t weight_bytes = 0;
  uint64_t macs = 0;
  double bandwidth_ns = 0.0;  // weight_bytes at peak bandwidth
  double compute_ns = 0.0;    // macs at every MAC busy every cycle
};
Floors floors(const isa::Program& program, const DevicePreset& preset, const RunArgs& args);

}  // namespace hyperdex::cost
