// The LPU emulator: a Device that executes the instruction stream on emulated
// HBM and on-chip memory with the numerics docs/isa.md specifies (fp16
// activations and weights, fp32 accumulation in MAC-tree order), using SIMD
// kernels and a thread pool of its own.
#pragma once
#include <array>
#include <cstdlib>
#include <memory>
#include <vector>

#include "common/file_io.h"
#include "common/thread_pool.h"
#include "device/device.h"
#include "emu/kernels.h"
#include "emu/ring_link.h"
#include "spec/model_spec.h"

namespace hyperdex::emu {

// Checks that every operand and region of `program` stays inside `layout` and the
// preset's on-chip memory, for the largest run the program allows (FormatError,
// CapacityError). Every backend runs it before a program reaches its device.
void validate_program(const isa::Program& program, const DevicePreset& preset,
                      const DeviceLayout& layout);

class Emulator final : public Device {
 public:
  // num_threads == 0: all hardware threads (or HYPERDEX_NUM_THREADS).
  explicit Emulator(const DevicePreset& preset, size_t num_threads = 0);
  ~Emulator() override;

  std::string describe() const override;
  uint32_t num_channels() const override { return preset_.hbm_channels; }
  void allocate(const DeviceLayout& layout) override;
  void write(uint32_t channel, uint64_t offset, const void* src, size_t bytes) override;
  void read(uint32_t channel, uint64_t offset, void* dst, size_t bytes) override;
  // Maps the file copy-on-write over the channel's memory (MappedMemory::map_file): the
  // weights then live once in the page cache, shared, instead of once more in this
  // process, and a program that wrote into them changes only its private copy. Needs
  // `offset` on a page boundary (the weight segment starts each channel at 0).
  bool map_file(uint32_t channel, uint64_t offset, const std::string& path,
                uint64_t bytes) override;
  // Bytes of HBM that map_file backed with files since the last allocate.
  uint64_t file_backed_bytes() const { return file_backed_bytes_; }
  void load_program(ProgramSlot slot, const isa::Program& program) override;
  // Runs the whole program before returning (the emulator is synchronous); the
  // run timeout and the interrupt check are polled between instructions.
  void start(ProgramSlot slot, const RunArgs& args) override;
  void wait() override {}
  // Executes instructions [begin, end) of the program in `slot` with `args`, with the
  // checks, interrupt and timeout polling of a whole run (calibration runs a model
  // layer by layer this way). One device only: a ring's exchanges need whole runs.
  void run_range(ProgramSlot slot, const RunArgs& args, size_t begin, size_t end);
  // The program loaded in `slot` (DeviceError if none).
  const isa::Program& program(ProgramSlot slot) const;

  // Joins a ring of link->size() devices as `rank`: ALLREDUCE and ALLGATHER then
  // exchange data with the neighbours through `link` alone (docs/isa.md).
  void attach_ring(std::shared_ptr<RingLink> link, uint32_t rank);

  // On-chip memory as the last run left it (for debugging and tests; a board
  // cannot read it back).
  void read_lmem(uint64_t offset, void* dst, size_t bytes) const;
  // Overwrites on-chip memory (calibration feeds a layer its inputs this way).
  void write_lmem(uint64_t offset, const void* src, size_t bytes);

  // HBM bytes of weight rows the MATMULs of the last run (or range) read: an expert MATMUL
  // counts only its picked experts' blocks (the cost model's weight_bytes for a decode step).
  uint64_t weight_bytes_read() const { return weight_bytes_read_; }

  const Kernels& kernels() const { return kern_; }
  size_t num_threads() const { return pool_.size(); }

  // 64-byte aligned memory from std::aligned_alloc.
  struct Aligned {
    void operator()(uint8_t* p) const { std::free(p); }
  };
  using Buffer = std::unique_ptr<uint8_t, Aligned>;

 private:
  void run_program(ProgramSlot slot, const RunArgs& run, size_t begin, size_t end);
  void execute(const isa::Instruction& in, const RunArgs& run);
  void exec_embed(const isa::Instruction& in, const RunArgs& run);
  void exec_norm(const isa::Instruction& in, const RunArgs& run);
  void exec_matmul(const isa::Instruction& in, const RunArgs& run);
  void exec_rope(const isa::Instruction& in, const RunArgs& run);
  void exec_kv_store(const isa::Instruction& in, const RunArgs& run);
  void exec_attention(const isa::Instruction& in, const RunArgs& run);
  void exec_elementwise(const isa::Instruction& in, const RunArgs& run);
  void exec_argmax(const isa::Instruction& in, const RunArgs& run);
  void exec_topk(const isa::Instruction& in, const RunArgs& run);
  void exec_ring(const isa::Instruction& in, const RunArgs& run);
  void ring_allreduce(const isa::Instruction& in, uint32_t first, uint32_t count);
  std::vector<float> ring_sum(const isa::Instruction& in, std::vector<float> partial);
  void ring_allgather(const isa::Instruction& in, uint32_t first, uint32_t count);

  uint8_t* addr(const isa::Operand& o);
  uint16_t* row16(const isa::Operand& o, uint32_t t) {
    return reinterpret_cast<uint16_t*>(addr(o)) + size_t(t) * o.stride;
  }
  StripedRows striped(const isa::HbmRegion& r) {
    return StripedRows{channel_ptrs_.data(), preset_.hbm_channels, r.base, r.row_bytes};
  }
  // A striped fp16 vector (norm gamma, bias) widened to fp32.
  void gather_vector(const isa::HbmRegion& r, uint32_t n, float* out);
  // For the activations that call libm (GELU, tanh-GELU, SiLU): the fp16 result of the
  // activation of every fp16 input, built on first use; null for the others. A lookup per
  // element instead of an exp or erf, and the same bits, since inputs and outputs are fp16.
  const uint16_t* act_table(ActKind act);

  DevicePreset preset_;
  const Kernels& kern_;
  ThreadPool pool_;
  DeviceLayout layout_;
  // Per pseudo-channel an anonymous mapping: pages the runs never touch (KV cache rows
  // past the sequence) cost no memory; the weight segment is mapped from its param file.
  std::vector<MappedMemory> hbm_;
  uint64_t file_backed_bytes_ = 0;
  std::vector<uint8_t*> channel_ptrs_;
  Buffer lmem_;
  uint64_t lmem_bytes_ = 0;
  std::array<std::unique_ptr<isa::Program>, 2> programs_;
  std::vector<float> scratch_x_, scratch_y_, ones_;
  std::shared_ptr<RingLink> link_;  // null: a ring of one
  uint64_t run_id_ = 0;             // numbers runs for the link (lockstep across the ring)
  uint64_t weight_bytes_read_ = 0;
  std::array<std::vector<uint16_t>, 8> act_tables_;  // by ActKind, see act_table
};

}  // namespace hyperdex::emu
