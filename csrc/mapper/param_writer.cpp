#include "mapper/param_writer.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>

#include "common/crc32.h"
#include "common/error.h"
#include "common/file_io.h"

namespace hyperdex {
namespace {

std::string shape_text(const std::vector<int64_t>& s) {
  std::string t = "[";
  for (size_t i = 0; i < s.size(); ++i) t += (i ? ", " : "") + std::to_string(s[i]);
  return t + "]";
}

// The rows of one weight region, resolved against the caller's tensors.
class RegionRows {
 public:
  RegionRows(const ModelSpec& spec, const Region& region, const TensorLookup& tensors)
      : spec_(spec), region_(region) {
    if (region.kind == RegionKind::Matrix) {
      uint64_t rows = 0;
      for (const auto& name : region.sources) {
        TensorView t = tensors(name);
        if (t.shape.size() != 2 || t.shape[1] != int64_t(region.cols))
          throw SpecError("tensor " + name + " has shape " + shape_text(t.shape) +
                          ", the layout expects [rows, " + std::to_string(region.cols) + "]");
        parts_.push_back({t.data, uint64_t(t.shape[0])});
        rows += uint64_t(t.shape[0]);
      }
      if (rows != region.rows)
        throw SpecError("region " + region.name + " expects " + std::to_string(region.rows) +
                        " rows from its tensors, they have " + std::to_string(rows));
    } else if (region.kind == RegionKind::Vector) {
      vector_.assign(uint64_t(region.rows) * kVectorRowElems, 0);
      uint64_t at = 0;
      for (const auto& name : region.sources) {
        TensorView t = tensors(name);
        int64_t n = 1;
        for (int64_t d : t.shape) n *= d;
        if (t.shape.size() != 1 || at + uint64_t(n) > region.cols)
          throw SpecError("tensor " + name + " has shape " + shape_text(t.shape) +
                          ", the layout expects a vector fitting " + std::to_string(region.cols));
        std::memcpy(vector_.data() + at, t.data, size_t(n) * 2);
        at += uint64_t(n);
      }
      if (at != region.cols)
        throw SpecError("region " + region.name + " expects " + std::to_string(region.cols) +
                        " elements, its tensors have " + std::to_string(at));
    }
  }

  // Writes row r (row_bytes long, zero-padded) into out.
  void row(uint32_t r, uint8_t* out) const {
    std::memset(out, 0, region_.row_bytes);
    switch (region_.kind) {
      case RegionKind::Matrix: {
        uint64_t local = r;
        for (const auto& p : parts_) {
          if (local < p.rows) {
            std::memcpy(out, p.data + local * region_.cols, size_t(region_.cols) * 2);
            return;
          }
          local -= p.rows;
        }
        break;
      }
      case RegionKind::Vector:
        std::memcpy(out, vector_.data() + uint64_t(r) * kVectorRowElems, kVectorRowElems * 2);
        break;
      case RegionKind::RopeTable: {
        auto v = rope_table_row(spec_, r);
        std::memcpy(out, v.data(), v.size() * 4);
        break;
      }
      case RegionKind::KvCache:
        break;
    }
  }

 private:
  struct Part {
    const uint16_t* data;
    uint64_t rows;
  };
  const ModelSpec& spec_;
  const Region& region_;
  std::vector<Part> parts_;
  std::vector<uint16_t> vector_;
};

// Keeps a running CRC of what goes into the file.
class ChecksummedWriter {
 public:
  explicit ChecksummedWriter(const std::string& path) : out_(path) {}
  void write(const uint8_t* p, size_t n) {
    crc_ = crc32(p, n, crc_);
    out_.write(p, n);
  }
  void pad_to(uint64_t offset) {
    static constexpr uint8_t kZeros[4096] = {};
    while (out_.bytes_written() < offset) {
      size_t n = size_t(std::min<uint64_t>(sizeof kZeros, offset - out_.bytes_written()));
      write(kZeros, n);
    }
  }
  ParamFile commit(const std::string& path) {
    uint64_t bytes = out_.bytes_written();
    out_.commit();
    return ParamFile{path, bytes, crc_};
  }

 private:
  AtomicFileWriter out_;
  uint32_t crc_ = 0;
};

}  // namespace

std::string param_file_name(uint32_t channel) {
  char name[32];
  std::snprintf(name, sizeof name, "hbm_ch%02u.bin", channel);
  return name;
}

std::vector<float> rope_table_row(const ModelSpec& spec, uint32_t position) {
  // As transformers does it: the angle is an fp32 product, cos/sin of it in fp32.
  std::vector<float> row(size_t(spec.rope_dim / 2) * 2);
  for (uint32_t i = 0; i < spec.rope_dim / 2; ++i) {
    float angle = float(position) * spec.rope_inv_freq[i];
    row[2 * i] = float(std::cos(double(angle))) * spec.rope_attention_factor;
    row[2 * i + 1] = float(std::sin(double(angle))) * spec.rope_attention_factor;
  }
  return row;
}

std::vector<ParamFile> write_params(const ModelSpec& spec, const MemoryPlan& plan,
                                    const TensorLookup& tensors, const std::string& out_dir,
                                    const std::function<void(uint32_t)>& on_channel_done) {
  std::vector<RegionRows> sources;
  std::vector<const Region*> weight_regions;
  for (const auto& r : plan.regions) {
    if (r.kind == RegionKind::KvCache) continue;
    weight_regions.push_back(&r);
    sources.emplace_back(spec, r, tensors);  // validates every tensor before any file is written
  }
  std::vector<ParamFile> files;
  std::vector<uint8_t> row;
  const uint32_t C = plan.num_channels;
  for (uint32_t c = 0; c < C; ++c) {
    std::string path = out_dir + "/" + param_file_name(c);
    ChecksummedWriter out(path);
    for (size_t i = 0; i < weight_regions.size(); ++i) {
      const Region& reg = *weight_regions[i];
      out.pad_to(reg.base);
      row.resize(reg.row_bytes);
      for (uint32_t r = c; r < reg.rows; r += C) {
        sources[i].row(r, row.data());
        out.write(row.data(), row.size());
      }
    }
    out.pad_to(plan.weights_bytes);
    files.push_back(out.commit(path));
    if (on_channel_done) on_channel_done(c);
  }
  return files;
}

}  // namespace hyperdex
