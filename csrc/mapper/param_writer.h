// Writes the weight segment of each HBM pseudo-channel to param/hbm_chNN.bin:
// exactly the bytes [0, plan.weights_bytes) of that channel, ready to be copied
// to the device as they are.
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "mapper/memory_plan.h"

namespace hyperdex {

enum class DType : uint8_t { F16 = 0, U8 = 1 };

// A read-only tensor owned by the caller (a view into the converted model file):
// fp16 for every tensor, except a quantized model's codes (`X.weight`, u8, one code
// per element) next to their fp16 `X.scales` [out, in / group].
struct TensorView {
  const void* data = nullptr;
  std::vector<int64_t> shape;
  DType dtype = DType::F16;
  const uint16_t* f16() const { return static_cast<const uint16_t*>(data); }
  const uint8_t* u8() const { return static_cast<const uint8_t*>(data); }
};
// Returns the canonical tensor `name`; throws SpecError if the model has none.
using TensorLookup = std::function<TensorView(const std::string& name)>;

struct ParamFile {
  std::string path;
  uint64_t bytes = 0;
  uint32_t crc32 = 0;
};

std::string param_file_name(uint32_t channel);  // "hbm_ch07.bin"

// Checks every source tensor's shape (and dtype) against the plan, then writes one
// file per channel (atomically). A QMatrix region packs `X.weight` codes with
// `X.scales` (isa/qmatrix.h). `on_channel_done(c)` is called after each file.
std::vector<ParamFile> write_params(const ModelSpec& spec, const MemoryPlan& plan,
                                    const TensorLookup& tensors, const std::string& out_dir,
                                    const std::function<void(uint32_t)>& on_channel_done = {});

// The fp32 (cos, sin) table rows the RopeTable region holds (row = position).
std::vector<float> rope_table_row(const ModelSpec& spec, uint32_t position, uint32_t table = 1);

}  // namespace hyperdex
