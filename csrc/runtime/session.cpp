#include "runtime/session.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <limits>
#include <memory>
#include <thread>

#include "common/bounds.h"
#include "common/crc32.h"
#include "common/error.h"

namespace hyperdex {
namespace {

const char* kRecompile = "; recompile the model (AutoCompiler().compile(...), fast_compile=False)";

// Whether param files may be mapped (Device::map_file) rather than copied: yes unless
// HYPERDEX_MMAP=0 (the copy path, for comparisons and as a way out).
bool mapping_allowed() {
  const char* v = std::getenv("HYPERDEX_MMAP");
  return !(v && std::strcmp(v, "0") == 0);
}

// Puts a param file in place on the device, checking its size and CRC-32: mapped where
// the device can (the emulator: the file's pages, copy-on-write), else streamed in pieces.
void load_param_file(Device& dev, uint32_t channel, const ParamFile& pf, uint64_t expected_bytes,
                     bool try_map) {
  // map_file checks the size (and declines a missing file or one of another size, which
  // the copy below then reports); the CRC is taken over the mapped bytes themselves. A
  // file truncated or rewritten in place later, while mapped, is not checked again
  // (MappedMemory::map_file).
  if (try_map && dev.map_file(channel, 0, pf.path, expected_bytes)) {
    std::vector<uint8_t> buf(size_t(1) << 20);
    uint32_t crc = 0;
    for (uint64_t offset = 0; offset < expected_bytes;) {
      const size_t n = size_t(std::min<uint64_t>(buf.size(), expected_bytes - offset));
      dev.read(channel, offset, buf.data(), n);
      crc = crc32(buf.data(), n, crc);
      offset += n;
    }
    if (crc != pf.crc32)
      throw FormatError("parameter file " + pf.path + " is corrupt (CRC-32 mismatch)" +
                        kRecompile);
    return;
  }
  std::unique_ptr<std::FILE, int (*)(std::FILE*)> f(std::fopen(pf.path.c_str(), "rb"), &std::fclose);
  if (!f) throw FormatError("missing parameter file " + pf.path + kRecompile);
  std::vector<uint8_t> buf(8u << 20);
  uint64_t offset = 0;
  uint32_t crc = 0;
  size_t got;
  while ((got = std::fread(buf.data(), 1, buf.size(), f.get())) > 0) {
    if (!fits(offset, got, expected_bytes)) break;
    crc = crc32(buf.data(), got, crc);
    dev.write(channel, offset, buf.data(), got);
    offset += got;
  }
  if (offset != expected_bytes || got > 0)
    throw FormatError("parameter file " + pf.path + " has the wrong size (expected " +
                      std::to_string(expected_bytes) + " bytes; truncated or from another compile)" +
                      kRecompile);
  if (crc != pf.crc32) throw FormatError("parameter file " + pf.path + " is corrupt (CRC-32 mismatch)" + kRecompile);
}

std::string quoted_name(const KvRegion& r, size_t index) {
  return "KV cache region " + (r.name.empty() ? "#" + std::to_string(index) : "'" + r.name + "'");
}

}  // namespace

void check_session_config(const SessionConfig& config, uint32_t channels) {
  auto bad = [](const std::string& why) {
    throw FormatError("the memory map (config/memory_map.json) " + why + kRecompile);
  };
  const DeviceLayout& layout = config.layout;
  const auto& ch = layout.channel_bytes;
  if (ch.size() != channels)
    bad("lists " + std::to_string(ch.size()) + " pseudo-channels (channel_bytes), the device has " +
        std::to_string(channels));
  if (ch.empty()) return;
  if (!fits(layout.io_base, layout.io_bytes, ch[0]))
    bad("puts segments.io (offset " + std::to_string(layout.io_base) + ", bytes " +
        std::to_string(layout.io_bytes) + ") outside pseudo-channel 0 (channel_bytes[0] = " +
        std::to_string(ch[0]) + ")");
  // Its int32 and fp32 buffers need aligned addresses (check_layout refuses it too).
  if (layout.io_base % 64 != 0)
    bad("puts segments.io at offset " + std::to_string(layout.io_base) +
        ", not on a 64-byte boundary");
  for (size_t c = 0; c < ch.size(); ++c)
    if (config.weights_bytes > ch[c])
      bad("has a weight segment (segments.weights.bytes_per_channel = " +
          std::to_string(config.weights_bytes) + ") larger than pseudo-channel " + std::to_string(c) +
          " (channel_bytes[" + std::to_string(c) + "] = " + std::to_string(ch[c]) + ")");
  for (size_t i = 0; i < config.kv_regions.size(); ++i) {
    const KvRegion& r = config.kv_regions[i];
    const std::string why = striped_region_problem(r.base, r.row_bytes, r.rows, channels, layout);
    if (!why.empty())
      bad("has a " + quoted_name(r, i) + " (offset " + std::to_string(r.base) + ", " +
          std::to_string(r.rows) + " rows of " + std::to_string(r.row_bytes) +
          " bytes) outside the device's memory: " + why);
  }
}

namespace {

// The host's buffers inside the I/O segment (token ids, argmax, logits) for runs of up to
// `max_tokens` rows must lie inside it, as the layout places it in channel 0.
void check_io_buffers(const SessionConfig& config, uint32_t max_tokens) {
  const IoLayout& io = config.io;
  const DeviceLayout& layout = config.layout;
  auto check = [&](const char* field, uint32_t offset, Checked bytes) {
    const bool inside_io = fits(Checked(offset), bytes, io.bytes);
    const bool inside_layout = io.base >= layout.io_base &&
                               fits(Checked(io.base - layout.io_base) + offset, bytes, layout.io_bytes);
    if (!inside_io || !inside_layout)
      throw FormatError("the memory map (config/memory_map.json) puts segments.io." +
                        std::string(field) + " (" + std::to_string(offset) + ", " +
                        (bytes.ok() ? std::to_string(bytes.value()) : std::string("over 2^64")) +
                        " bytes for " + std::to_string(max_tokens) +
                        " token rows) outside its I/O segment (offset " + std::to_string(io.base) +
                        ", " + std::to_string(io.bytes) + " bytes)" + kRecompile);
  };
  check("ids_offset", io.ids_offset, Checked(max_tokens) * 4);
  check("argmax_offset", io.argmax_offset, 4);
  check("logits_offset", io.logits_offset, Checked(max_tokens) * config.vocab_size * 4);
}

std::vector<std::unique_ptr<Device>> one_device(std::unique_ptr<Device> device) {
  std::vector<std::unique_ptr<Device>> v;
  v.push_back(std::move(device));
  return v;
}
}  // namespace

Session::Session(std::unique_ptr<Device> device, SessionConfig config)
    : Session(one_device(std::move(device)), std::vector<SessionConfig>{config}, config.vocab_size) {}

Session::Session(std::vector<std::unique_ptr<Device>> devices, std::vector<SessionConfig> configs,
                 uint32_t vocab_size)
    : devices_(std::move(devices)), configs_(std::move(configs)), vocab_size_(vocab_size) {
  if (devices_.empty() || devices_.size() != configs_.size())
    throw SpecError("a session needs one config per device");
  config_ = configs_[0];
  const uint32_t slice = config_.vocab_size;
  if (uint64_t(slice) * devices_.size() < vocab_size_ || slice == 0)
    throw FormatError("the devices' logits do not cover the vocabulary" + std::string(kRecompile));
  for (size_t d = 0; d < devices_.size(); ++d) {
    const SessionConfig& c = configs_[d];
    if (c.vocab_size != slice || c.max_length != config_.max_length ||
        c.plan_fingerprint != config_.plan_fingerprint)
      throw FormatError("the devices of the ring were compiled with different plans" +
                        std::string(kRecompile));
    if (devices_[d]->ring_position().rank != d || devices_[d]->ring_position().size != devices_.size())
      throw SpecError("device " + std::to_string(d) + " is not told its place in the ring");
    load(*devices_[d], c);
  }
  kv_cols_ = device_kv_cols_ * uint32_t(devices_.size());
}

void Session::load(Device& device, const SessionConfig& config) {
  if (config.params.size() != device.num_channels())
    throw FormatError("the compiled model has " + std::to_string(config.params.size()) +
                      " parameter files, the device has " + std::to_string(device.num_channels()) +
                      " HBM pseudo-channels; compile for this device preset");
  isa::Program prefill = isa::load_program(config.prefill_path);
  isa::Program decode = isa::load_program(config.decode_path);
  // Every segment and region of the memory map inside the channels, before any of it is used.
  check_session_config(config, device.num_channels());
  check_io_buffers(config, std::max<uint32_t>({prefill.max_tokens, decode.max_tokens, 1}));
  device.allocate(config.layout);
  const bool try_map = mapping_allowed();
  for (uint32_t c = 0; c < config.params.size(); ++c)
    load_param_file(device, c, config.params[c], config.weights_bytes, try_map);
  for (const isa::Program* p : {&prefill, &decode})
    if (p->plan_fingerprint != config.plan_fingerprint)
      throw FormatError("the programs in inst/ were made for another memory plan than config/" +
                        std::string(kRecompile));
  if (prefill.kind != isa::ProgramKind::Prefill || decode.kind != isa::ProgramKind::Decode)
    throw FormatError("inst/prefill.bin and inst/decode.bin are swapped or mislabelled" +
                      std::string(kRecompile));
  prefill_max_tokens_ = prefill.max_tokens;
  for (const KvRegion& r : config.kv_regions) {
    if (device_kv_cols_ == 0) device_kv_cols_ = r.cols;
    if (r.cols != device_kv_cols_ || r.cols == 0 || uint64_t(r.cols) * 2 > r.row_bytes ||
        r.rows < config.max_length)
      throw FormatError("the memory map's KV cache regions are inconsistent" + std::string(kRecompile));
  }
  device.load_program(ProgramSlot::Prefill, prefill);
  device.load_program(ProgramSlot::Decode, decode);
}

void Session::truncate(uint32_t position) {
  if (position > position_)
    throw SpecError("cannot truncate to " + std::to_string(position) + ", the sequence holds " +
                    std::to_string(position_) + " tokens");
  position_ = position;
}

void Session::check_room(uint32_t n) const {
  if (uint64_t(position_) + n > config_.max_length)
    throw SpecError("the sequence would reach " + std::to_string(uint64_t(position_) + n) +
                    " tokens, past the max_length of " + std::to_string(config_.max_length) +
                    " the model was compiled for; shorten the prompt or max_new_tokens, or "
                    "recompile with a larger max_length");
}

void Session::check_ids(const int32_t* ids, uint32_t n) const {
  for (uint32_t i = 0; i < n; ++i)
    if (ids[i] < 0 || uint32_t(ids[i]) >= vocab_size_)
      throw SpecError("token id " + std::to_string(ids[i]) + " is outside the vocabulary [0, " +
                      std::to_string(vocab_size_) + ")");
}

// Every device runs in its own thread (device 0 in the caller's): the ring
// instructions block until the neighbours get there. The first failure is reported.
void Session::run_all(ProgramSlot slot, const RunArgs& args) {
  if (devices_.size() == 1) {
    devices_[0]->start(slot, args);
    devices_[0]->wait();
    return;
  }
  std::vector<std::exception_ptr> errors(devices_.size());
  auto one = [&](size_t d) {
    try {
      devices_[d]->start(slot, args);
      devices_[d]->wait();
    } catch (...) {
      errors[d] = std::current_exception();
    }
  };
  std::vector<std::thread> threads;
  for (size_t d = 1; d < devices_.size(); ++d) threads.emplace_back(one, d);
  one(0);
  for (auto& t : threads) t.join();
  for (auto& e : errors)  // an interrupt or the device that failed first, not its neighbours
    if (e) {
      try {
        std::rethrow_exception(e);
      } catch (const Interrupted&) {
        throw;
      } catch (const DeviceError& err) {
        if (std::string(err.what()).find("another device of the ring") != std::string::npos) continue;
        throw;
      }
    }
  for (auto& e : errors)
    if (e) std::rethrow_exception(e);
}

// Each device wrote its vocabulary slice; the host puts the slices side by side (the
// padding past vocab_size is dropped) and takes the argmax of the last row (NaN never
// wins, the first maximum does, as ARGMAX).
int32_t Session::gather_logits(uint32_t rows, float* out) {
  const IoLayout& io = config_.io;
  const uint32_t slice = config_.vocab_size;
  std::vector<float> last(vocab_size_);
  std::vector<float> buf(size_t(rows) * slice);
  for (size_t d = 0; d < devices_.size(); ++d) {
    const uint64_t lo = uint64_t(d) * slice;
    if (lo >= vocab_size_) break;
    const uint32_t take = uint32_t(std::min<uint64_t>(slice, vocab_size_ - lo));
    devices_[d]->read(0, io.base + io.logits_offset, buf.data(), buf.size() * 4);
    for (uint32_t r = 0; r < rows; ++r) {
      const float* src = buf.data() + size_t(r) * slice;
      if (out) std::memcpy(out + size_t(r) * vocab_size_ + lo, src, size_t(take) * 4);
      if (r + 1 == rows) std::memcpy(last.data() + lo, src, size_t(take) * 4);
    }
  }
  int32_t best = 0;
  float best_v = -std::numeric_limits<float>::infinity();
  for (uint32_t j = 0; j < vocab_size_; ++j)
    if (last[j] > best_v) {
      best_v = last[j];
      best = int32_t(j);
    }
  return best;
}

int32_t Session::run(ProgramSlot slot, const int32_t* ids, uint32_t n, bool logits_all,
                     bool want_logits, float* out) {
  const IoLayout& io = config_.io;
  for (auto& dev : devices_) dev->write(0, io.base + io.ids_offset, ids, size_t(n) * 4);
  RunArgs args{position_, n, logits_all, want_logits};
  run_all(slot, args);
  position_ += n;
  int32_t argmax = 0;
  if (!want_logits) return argmax;
  const size_t rows = logits_all ? n : 1;
  if (devices_.size() > 1) return gather_logits(uint32_t(rows), out);
  devices_[0]->read(0, io.base + io.argmax_offset, &argmax, 4);
  if (out) devices_[0]->read(0, io.base + io.logits_offset, out, rows * config_.vocab_size * 4);
  return argmax;
}

int32_t Session::prefill(const int32_t* ids, uint32_t n, bool logits_all, float* out) {
  if (n == 0) throw SpecError("prefill needs at least one token");
  check_room(n);
  check_ids(ids, n);
  int32_t argmax = 0;
  const uint32_t start = position_;
  try {
    for (uint32_t done = 0; done < n;) {
      const uint32_t chunk = std::min(prefill_max_tokens_, n - done);
      const bool last = done + chunk == n;
      float* dst = nullptr;
      if (out && logits_all) dst = out + size_t(done) * vocab_size_;
      else if (out && last) dst = out;
      argmax = run(ProgramSlot::Prefill, ids + done, chunk, logits_all, logits_all || last, dst);
      done += chunk;
    }
  } catch (...) {
    position_ = start;  // a failed or interrupted run leaves the sequence as it was
    throw;
  }
  return argmax;
}

int32_t Session::decode(int32_t id, float* out) {
  check_room(1);
  check_ids(&id, 1);
  const uint32_t start = position_;
  try {
    return run(ProgramSlot::Decode, &id, 1, false, true, out);
  } catch (...) {
    position_ = start;
    throw;
  }
}

void Session::check_kv(uint32_t start, uint32_t n) const {
  if (config_.kv_regions.empty())
    throw SpecError("this session was opened without the KV cache layout (memory map regions)");
  if (uint64_t(start) + n > config_.max_length)
    throw SpecError("KV positions [" + std::to_string(start) + ", " + std::to_string(uint64_t(start) + n) +
                    ") lie past the max_length of " + std::to_string(config_.max_length));
}

// Calls fn(region index, channel, HBM offset, first position, count) for each
// channel's contiguous run of rows: positions p = first, first + C, ... lie in
// consecutive rows of the channel.
template <typename Fn>
void Session::for_kv_rows(uint32_t start, uint32_t n, Fn&& fn) {
  // In 64 bits: start + n and the first position of a channel may not fit 32 (check_kv
  // bounds them by max_length; the positions themselves do fit).
  const uint64_t C = devices_[0]->num_channels(), begin = start, end = uint64_t(start) + n;
  for (uint32_t r = 0; r < config_.kv_regions.size(); ++r) {
    const KvRegion& reg = config_.kv_regions[r];
    for (uint32_t c = 0; c < C; ++c) {
      const uint64_t first = begin + (c + C - begin % C) % C;  // first position >= start in c
      if (first >= end) continue;
      const uint64_t count = (end - 1 - first) / C + 1;
      // Inside the region, which check_session_config placed inside the channel.
      for (uint32_t d = 0; d < devices_.size(); ++d)
        fn(*devices_[d], d * device_kv_cols_, r, c, reg.base + (first / C) * reg.row_bytes,
           uint32_t(first), uint32_t(count));
    }
  }
}

void Session::read_kv(uint32_t start, uint32_t n, uint16_t* out) {
  check_kv(start, n);
  if (uint64_t(start) + n > position_)
    throw SpecError("cannot read KV positions up to " + std::to_string(uint64_t(start) + n) +
                    ", the sequence holds " + std::to_string(position_));
  const uint32_t C = devices_[0]->num_channels();
  std::vector<uint8_t> buf;
  for_kv_rows(start, n, [&](Device& dev, uint32_t col0, uint32_t r, uint32_t c, uint64_t offset,
                            uint32_t first, uint32_t count) {
    const uint32_t row_bytes = config_.kv_regions[r].row_bytes;
    buf.resize(size_t(count) * row_bytes);
    dev.read(c, offset, buf.data(), buf.size());
    for (uint32_t i = 0; i < count; ++i) {
      const size_t pos = first + size_t(i) * C - start;
      std::memcpy(out + (size_t(r) * n + pos) * kv_cols_ + col0, buf.data() + size_t(i) * row_bytes,
                  size_t(device_kv_cols_) * 2);
    }
  });
}

void Session::write_kv(uint32_t start, uint32_t n, const uint16_t* in) {
  check_kv(start, n);
  if (start > position_)
    throw SpecError("cannot write KV from position " + std::to_string(start) +
                    ", the sequence holds only " + std::to_string(position_) +
                    " (it would leave a gap)");
  const uint32_t C = devices_[0]->num_channels();
  position_ = start;  // on failure the rows past start are undefined, so they are dropped
  std::vector<uint8_t> buf;
  for_kv_rows(start, n, [&](Device& dev, uint32_t col0, uint32_t r, uint32_t c, uint64_t offset,
                            uint32_t first, uint32_t count) {
    const uint32_t row_bytes = config_.kv_regions[r].row_bytes;
    buf.assign(size_t(count) * row_bytes, 0);  // padding stays zero, as compiled
    for (uint32_t i = 0; i < count; ++i) {
      const size_t pos = first + size_t(i) * C - start;
      std::memcpy(buf.data() + size_t(i) * row_bytes,
                  in + (size_t(r) * n + pos) * kv_cols_ + col0, size_t(device_kv_cols_) * 2);
    }
    dev.write(c, offset, buf.data(), buf.size());
  });
  position_ = start + n;
}

}  // namespace hyperdex
