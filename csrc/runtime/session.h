// The runtime's device-independent part: loads a compiled model onto a Device
// and runs prefill and decode on it, keeping track of the sequence position.
// The same code drives the emulator and a board.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "device/device.h"
#include "mapper/memory_plan.h"
#include "mapper/param_writer.h"

namespace hyperdex {

// What the runtime needs from a compiled folder (config/memory_map.json).
struct SessionConfig {
  DeviceLayout layout;
  IoLayout io;
  uint32_t vocab_size = 0;
  uint32_t max_length = 0;
  uint32_t plan_fingerprint = 0;
  uint64_t weights_bytes = 0;           // per channel, the size of each param file
  std::vector<ParamFile> params;        // one per channel, with size and CRC-32
  std::string prefill_path, decode_path;
};

class Session {
 public:
  // Allocates, loads and verifies parameters and programs (FormatError on any mismatch).
  Session(std::unique_ptr<Device> device, SessionConfig config);

  Device& device() { return *device_; }
  uint32_t position() const { return position_; }
  uint32_t max_length() const { return config_.max_length; }
  uint32_t vocab_size() const { return config_.vocab_size; }
  uint32_t prefill_chunk() const { return prefill_max_tokens_; }
  // Forget the sequence (the KV cache is overwritten from position 0 on).
  void reset() { position_ = 0; }
  // Rewind to an earlier position (keeps the KV cache before it).
  void truncate(uint32_t position);

  // Appends `n` tokens at the current position. Writes fp32 logits to `out`:
  // n rows of vocab_size if logits_all, else the last row only. Returns the
  // argmax of the last row.
  int32_t prefill(const int32_t* ids, uint32_t n, bool logits_all, float* out);
  // Appends one token; `out` (vocab_size floats) may be null to skip reading the
  // logits back (greedy decoding needs only the returned argmax).
  int32_t decode(int32_t id, float* out);

 private:
  void check_room(uint32_t n) const;
  void check_ids(const int32_t* ids, uint32_t n) const;
  int32_t run(ProgramSlot slot, const int32_t* ids, uint32_t n, bool logits_all, bool want_logits,
              float* out);

  std::unique_ptr<Device> device_;
  SessionConfig config_;
  uint32_t prefill_max_tokens_ = 1;
  uint32_t position_ = 0;
};

}  // namespace hyperdex
