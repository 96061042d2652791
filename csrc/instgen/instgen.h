// Phase 4 (instgen): lowers a model onto the LPU instruction set. The prefill
// program carries up to `max_tokens` token rows per run (longer prompts run it
// chunk by chunk); the decode program carries one. Both stream every weight
// region once per run, in plan order. The passes (spec/passes.h) must be the
// ones the plan was made with: they decide which regions exist.
#pragma once
#include <cstdint>

#include "isa/isa.h"
#include "mapper/memory_plan.h"
#include "spec/model_spec.h"
#include "spec/passes.h"

namespace hyperdex {

// On-chip memory one token row needs (all activation buffers of one layer).
uint64_t lmem_bytes_per_token(const ModelSpec& spec);

// The largest prefill chunk (a power of two, at most `limit` and max_length)
// whose activations fit the preset's on-chip memory. Throws CapacityError if
// not even one token fits.
uint32_t choose_max_tokens(const ModelSpec& spec, const DevicePreset& preset, uint32_t max_length,
                           uint32_t limit = 128);

struct Programs {
  isa::Program prefill;
  isa::Program decode;
};

// Tensor parallelism over a ring of `devices`: each device holds this share of
// the model (Megatron-style: attention by heads, KV heads replicated when fewer
// than devices, the MLP by columns then rows, the LM head by vocabulary); sizes
// that do not divide are rounded up (padding). One device: the spec itself.
ModelSpec shard_spec(const ModelSpec& spec, uint32_t devices);

// With devices > 1, `spec` is a shard_spec() and the plan was made for it: the
// row-parallel projections (attention output, MLP down) end in an ALLREDUCE
// that also adds the bias and the residual; the host reads each device's slice
// of the logits.
Programs generate_programs(const ModelSpec& spec, const MemoryPlan& plan,
                           const PassOptions& passes = {}, uint32_t devices = 1);
isa::Program generate_program(const ModelSpec& spec, const MemoryPlan& plan, isa::ProgramKind kind,
                              uint32_t max_tokens, const PassOptions& passes = {},
                              uint32_t devices = 1);

}  // namespace hyperdex
