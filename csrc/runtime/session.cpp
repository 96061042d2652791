#include "runtime/session.h"

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <memory>

#include "common/crc32.h"
#include "common/error.h"

namespace hyperdex {
namespace {

const char* kRecompile = "; recompile the model (AutoCompiler().compile(...), fast_compile=False)";

// Streams a param file to the device in pieces, checking its size and CRC.
void load_param_file(Device& dev, uint32_t channel, const ParamFile& pf, uint64_t expected_bytes) {
  std::unique_ptr<std::FILE, int (*)(std::FILE*)> f(std::fopen(pf.path.c_str(), "rb"), &std::fclose);
  if (!f) throw FormatError("missing parameter file " + pf.path + kRecompile);
  std::vector<uint8_t> buf(8u << 20);
  uint64_t offset = 0;
  uint32_t crc = 0;
  size_t got;
  while ((got = std::fread(buf.data(), 1, buf.size(), f.get())) > 0) {
    if (offset + got > expected_bytes) break;
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

}  // namespace

Session::Session(std::unique_ptr<Device> device, SessionConfig config)
    : device_(std::move(device)), config_(std::move(config)) {
  if (config_.params.size() != device_->num_channels())
    throw FormatError("the compiled model has " + std::to_string(config_.params.size()) +
                      " parameter files, the device has " + std::to_string(device_->num_channels()) +
                      " HBM pseudo-channels; compile for this device preset");
  device_->allocate(config_.layout);
  for (uint32_t c = 0; c < config_.params.size(); ++c)
    load_param_file(*device_, c, config_.params[c], config_.weights_bytes);
  isa::Program prefill = isa::load_program(config_.prefill_path);
  isa::Program decode = isa::load_program(config_.decode_path);
  for (const isa::Program* p : {&prefill, &decode})
    if (p->plan_fingerprint != config_.plan_fingerprint)
      throw FormatError("the programs in inst/ were made for another memory plan than config/" +
                        std::string(kRecompile));
  if (prefill.kind != isa::ProgramKind::Prefill || decode.kind != isa::ProgramKind::Decode)
    throw FormatError("inst/prefill.bin and inst/decode.bin are swapped or mislabelled" +
                      std::string(kRecompile));
  prefill_max_tokens_ = prefill.max_tokens;
  for (const KvRegion& r : config_.kv_regions) {
    if (kv_cols_ == 0) kv_cols_ = r.cols;
    if (r.cols != kv_cols_ || r.cols == 0 || uint64_t(r.cols) * 2 > r.row_bytes ||
        r.rows < config_.max_length)
      throw FormatError("the memory map's KV cache regions are inconsistent" + std::string(kRecompile));
  }
  device_->load_program(ProgramSlot::Prefill, prefill);
  device_->load_program(ProgramSlot::Decode, decode);
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
    if (ids[i] < 0 || uint32_t(ids[i]) >= config_.vocab_size)
      throw SpecError("token id " + std::to_string(ids[i]) + " is outside the vocabulary [0, " +
                      std::to_string(config_.vocab_size) + ")");
}

int32_t Session::run(ProgramSlot slot, const int32_t* ids, uint32_t n, bool logits_all,
                     bool want_logits, float* out) {
  const IoLayout& io = config_.io;
  device_->write(0, io.base + io.ids_offset, ids, size_t(n) * 4);
  RunArgs args{position_, n, logits_all, want_logits};
  device_->start(slot, args);
  device_->wait();
  position_ += n;
  int32_t argmax = 0;
  if (!want_logits) return argmax;
  device_->read(0, io.base + io.argmax_offset, &argmax, 4);
  if (out) {
    const size_t rows = logits_all ? n : 1;
    device_->read(0, io.base + io.logits_offset, out, rows * config_.vocab_size * 4);
  }
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
      if (out && logits_all) dst = out + size_t(done) * config_.vocab_size;
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
  const uint32_t C = device_->num_channels();
  for (uint32_t r = 0; r < config_.kv_regions.size(); ++r) {
    const KvRegion& reg = config_.kv_regions[r];
    for (uint32_t c = 0; c < C; ++c) {
      const uint32_t first = start + (c + C - start % C) % C;  // first position >= start in c
      if (first >= start + n) continue;
      const uint32_t count = (start + n - 1 - first) / C + 1;
      fn(r, c, reg.base + uint64_t(first / C) * reg.row_bytes, first, count);
    }
  }
}

void Session::read_kv(uint32_t start, uint32_t n, uint16_t* out) {
  check_kv(start, n);
  if (uint64_t(start) + n > position_)
    throw SpecError("cannot read KV positions up to " + std::to_string(uint64_t(start) + n) +
                    ", the sequence holds " + std::to_string(position_));
  const uint32_t C = device_->num_channels();
  std::vector<uint8_t> buf;
  for_kv_rows(start, n, [&](uint32_t r, uint32_t c, uint64_t offset, uint32_t first, uint32_t count) {
    const uint32_t row_bytes = config_.kv_regions[r].row_bytes;
    buf.resize(size_t(count) * row_bytes);
    device_->read(c, offset, buf.data(), buf.size());
    for (uint32_t i = 0; i < count; ++i) {
      const size_t pos = first + size_t(i) * C - start;
      std::memcpy(out + (size_t(r) * n + pos) * kv_cols_, buf.data() + size_t(i) * row_bytes,
                  size_t(kv_cols_) * 2);
    }
  });
}

void Session::write_kv(uint32_t start, uint32_t n, const uint16_t* in) {
  check_kv(start, n);
  if (start > position_)
    throw SpecError("cannot write KV from position " + std::to_string(start) +
                    ", the sequence holds only " + std::to_string(position_) +
                    " (it would leave a gap)");
  const uint32_t C = device_->num_channels();
  position_ = start;  // on failure the rows past start are undefined, so they are dropped
  std::vector<uint8_t> buf;
  for_kv_rows(start, n, [&](uint32_t r, uint32_t c, uint64_t offset, uint32_t first, uint32_t count) {
    const uint32_t row_bytes = config_.kv_regions[r].row_bytes;
    buf.assign(size_t(count) * row_bytes, 0);  // padding stays zero, as compiled
    for (uint32_t i = 0; i < count; ++i) {
      const size_t pos = first + size_t(i) * C - start;
      std::memcpy(buf.data() + size_t(i) * row_bytes, in + (size_t(r) * n + pos) * kv_cols_,
                  size_t(kv_cols_) * 2);
    }
    device_->write(c, offset, buf.data(), buf.size());
  });
  position_ = start + n;
}

}  // namespace hyperdex
