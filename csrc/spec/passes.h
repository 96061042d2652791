// The switchable passes of phases 3 and 4 (map and instgen). Each one changes
// only how fast the device runs, never what it computes: the ISA rounds after
// every epilogue stage, so a fused instruction equals the unfused sequence bit
// for bit (docs/isa.md), and a PREFETCH moves bytes, not values. The cost model
// (docs/cost-model.md) says what each buys; docs/benchmarks.md has the table.
#pragma once
#include <string>

namespace hyperdex {

struct PassOptions {
  // Bias, activation and residual add run in the epilogue of the MATMUL that
  // produces them, instead of as BIAS, ACT and ADD instructions after it.
  bool fuse_epilogue = true;
  // Q, K and V are one weight region and one MATMUL (else three of each).
  bool fuse_qkv = true;
  // Gate and up projections of a gated MLP are one weight region and one MATMUL
  // with the GLU epilogue (else two MATMULs and a MUL).
  bool fuse_gate_up = true;
  // Layer reordering: each MATMUL's weight stream starts (PREFETCH) right after
  // the previous HBM stream, while the vector engine finishes the work before it.
  bool reorder = true;
  // The LM head's epilogue keeps a running argmax of the logits it writes, so no
  // separate ARGMAX pass over the vocabulary follows it.
  bool fuse_argmax = true;
  // Tensor parallelism: an all-reduce is cut into chunks so each travels the
  // ring while the MATMUL feeding it computes the next (else it waits for all).
  bool chunk_ring = true;

  bool operator==(const PassOptions& o) const {
    return fuse_epilogue == o.fuse_epilogue && fuse_qkv == o.fuse_qkv &&
           fuse_gate_up == o.fuse_gate_up && reorder == o.reorder &&
           fuse_argmax == o.fuse_argmax && chunk_ring == o.chunk_ring;
  }
};

}  // namespace hyperdex
