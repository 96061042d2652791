// Phase 4 (instgen): lowers a model onto the LPU instruction set. The prefill
// program carries up to `max_tokens` token rows per run (longer prompts run it
// chunk by chunk); the decode program carries one. Both stream every weight
// region once per run, in plan order.
#pragma once
#include <cstdint>

#include "isa/isa.h"
#include "mapper/memory_plan.h"
#include "spec/model_spec.h"

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

Programs generate_programs(const ModelSpec& spec, const MemoryPlan& plan);
isa::Program generate_program(const ModelSpec& spec, const MemoryPlan& plan, isa::ProgramKind kind,
                              uint32_t max_tokens);

}  // namespace hyperdex
