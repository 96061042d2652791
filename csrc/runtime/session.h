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

// One KV cache region of the memory plan (per layer: K, then V), striped like
// every region: position r lies in channel r % C at base + (r / C) * row_bytes.
struct KvRegion {
  uint64_t base = 0;
  uint32_t row_bytes = 0;
  uint32_t rows = 0;  // positions (max_length)
  uint32_t cols = 0;  // fp16 values per position (kv_heads * head_dim)
  std::string name;   // the memory map's name for it, for messages (may be empty)
};

// What the runtime needs from a compiled folder (config/memory_map.json).
struct SessionConfig {
  DeviceLayout layout;
  IoLayout io;
  uint32_t vocab_size = 0;  // logits per row this device writes (its vocabulary slice on a ring)
  uint32_t max_length = 0;
  uint32_t plan_fingerprint = 0;
  uint64_t weights_bytes = 0;           // per channel, the size of each param file
  std::vector<ParamFile> params;        // one per channel, with size and CRC-32
  std::string prefill_path, decode_path;
  std::vector<KvRegion> kv_regions;     // in plan order; empty: no KV transfer
};

// Checks a device's config against itself and a device of `channels` pseudo-channels
// before anything is allocated: every segment and region of the memory map (the I/O
// region and its buffers, the weight segment, the KV cache regions) must lie inside the
// channel sizes, with no sum that can wrap. FormatError naming the memory map's field.
void check_session_config(const SessionConfig& config, uint32_t channels);

class Session {
 public:
  // Allocates, loads and verifies parameters and programs (FormatError on any mismatch).
  Session(std::unique_ptr<Device> device, SessionConfig config);
  // A tensor-parallel ring: device d (already told its ring position) gets configs[d].
  // Every run starts on all devices at once, each in a thread of its own; device d's
  // logits are the vocabulary slice [d * slice, (d + 1) * slice) of `vocab_size` ids.
  Session(std::vector<std::unique_ptr<Device>> devices, std::vector<SessionConfig> configs,
          uint32_t vocab_size);

  Device& device() { return *devices_[0]; }
  Device& device(uint32_t rank) { return *devices_.at(rank); }
  uint32_t num_devices() const { return uint32_t(devices_.size()); }
  uint32_t position() const { return position_; }
  uint32_t max_length() const { return config_.max_length; }
  uint32_t vocab_size() const { return vocab_size_; }
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

  // The KV cache seen from the host, for the prefix cache and hybrid prefill:
  // positions [start, start + n) of every KV region, fp16 bits, unpadded, as
  // [kv_regions][n][kv_cols] (on a ring: the devices' columns side by side, rank order). Each region's rows in one channel are contiguous,
  // so a transfer is one read or write per region and channel.
  uint32_t kv_region_count() const { return uint32_t(config_.kv_regions.size()); }
  uint32_t kv_cols() const { return kv_cols_; }
  // Needs start + n <= position().
  void read_kv(uint32_t start, uint32_t n, uint16_t* out);
  // Needs start <= position(); the sequence then holds start + n positions (whatever
  // the cache held past start is dropped, as by truncate).
  void write_kv(uint32_t start, uint32_t n, const uint16_t* in);

 private:
  void check_room(uint32_t n) const;
  void check_ids(const int32_t* ids, uint32_t n) const;
  int32_t run(ProgramSlot slot, const int32_t* ids, uint32_t n, bool logits_all, bool want_logits,
              float* out);
  void load(Device& device, const SessionConfig& config);
  void run_all(ProgramSlot slot, const RunArgs& args);
  int32_t gather_logits(uint32_t rows, float* out);

  std::vector<std::unique_ptr<Device>> devices_;
  std::vector<SessionConfig> configs_;
  SessionConfig config_;  // device 0's (the plan is the same on every device)
  uint32_t vocab_size_ = 0;
  void check_kv(uint32_t start, uint32_t n) const;
  template <typename Fn>
  void for_kv_rows(uint32_t start, uint32_t n, Fn&& fn);

  uint32_t prefill_max_tokens_ = 1;
  uint32_t kv_cols_ = 0;         // all devices together
  uint32_t device_kv_cols_ = 0;  // one device's
  uint32_t position_ = 0;
};

}  // namespace hyperdex
