#include "mapper/param_writer.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>

#include "common/bounds.h"
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

const char* dtype_name(DType d) { return d == DType::U8 ? "u8" : "f16"; }

// "blk.0.attn_q.weight" -> "blk.0.attn_q.scales"
std::string scales_name(const std::string& weight) {
  const std::string suffix = ".weight";
  if (weight.size() > suffix.size() &&
      weight.compare(weight.size() - suffix.size(), suffix.size(), suffix) == 0)
    return weight.substr(0, weight.size() - suffix.size()) + ".scales";
  return weight + ".scales";
}

void require_dtype(const std::string& name, const TensorView& t, DType want,
                   const std::string& hint) {
  if (t.dtype != want)
    throw SpecError("tensor " + name + " is " + dtype_name(t.dtype) + ", the layout expects " +
                    dtype_name(want) + hint);
}

// The rows of one weight region, resolved against the caller's tensors.
class RegionRows {
 public:
  RegionRows(const ModelSpec& spec, const Region& region, const TensorLookup& tensors)
      : spec_(spec), region_(region) {
    if (region.kind == RegionKind::Matrix || region.kind == RegionKind::QMatrix) {
      const bool q = region.kind == RegionKind::QMatrix;
      const std::string hint =
          q ? " (the model is compiled with " + std::to_string(region.bits) +
                  "-bit weights: its file must hold u8 codes and fp16 scales; quantize it)"
            : " (this weight is not quantized on the device: the model file must hold it in "
              "fp16; was the model quantized with other options than it is compiled with?)";
      Checked rows = 0;
      for (const auto& name : region.sources) {
        TensorView t = tensors(name);
        require_dtype(name, t, q ? DType::U8 : DType::F16, hint);
        if (t.shape.size() != 2 || t.shape[0] < 0 || t.shape[1] != int64_t(region.cols))
          throw SpecError("tensor " + name + " has shape " + shape_text(t.shape) +
                          ", the layout expects [rows, " + std::to_string(region.cols) + "]");
        Part part{t.data, uint64_t(t.shape[0]), nullptr, name};
        if (q) {
          const std::string sname = scales_name(name);
          TensorView sc = tensors(sname);
          require_dtype(sname, sc, DType::F16, "");
          const int64_t groups = int64_t(region.qformat().groups());
          if (sc.shape.size() != 2 || sc.shape[0] != t.shape[0] || sc.shape[1] != groups)
            throw SpecError("tensor " + sname + " has shape " + shape_text(sc.shape) +
                            ", the layout expects [" + std::to_string(t.shape[0]) + ", " +
                            std::to_string(groups) + "] (one scale per " +
                            std::to_string(region.group) + " inputs)");
          part.scales = sc.f16();
        }
        parts_.push_back(part);
        rows += uint64_t(t.shape[0]);
      }
      // Experts: each expert's sources fill expert_rows rows of its block (zeros after).
      const uint64_t want = region.experts ? uint64_t(region.experts) * region.expert_rows
                                           : uint64_t(region.rows);
      if (!rows.ok() || rows.value() != want)
        throw SpecError("region " + region.name + " expects " + std::to_string(want) +
                        " rows from its tensors, they have " +
                        (rows.ok() ? std::to_string(rows.value()) : std::string("over 2^64")));
      if (region.experts) {
        if (region.sources.size() % region.experts != 0)
          throw SpecError("region " + region.name + " has " +
                          std::to_string(region.sources.size()) + " sources for " +
                          std::to_string(region.experts) + " experts");
        const size_t per = region.sources.size() / region.experts;
        for (size_t e = 0; e < region.experts; ++e) {
          uint64_t n = 0;
          for (size_t i = 0; i < per; ++i) n += parts_[e * per + i].rows;
          if (n != region.expert_rows)
            throw SpecError("expert " + std::to_string(e) + " of region " + region.name +
                            " has " + std::to_string(n) + " rows, the layout expects " +
                            std::to_string(region.expert_rows));
        }
      }
    } else if (region.kind == RegionKind::Vector) {
      vector_.assign(uint64_t(region.rows) * kVectorRowElems, 0);
      uint64_t at = 0;
      for (const auto& name : region.sources) {
        TensorView t = tensors(name);
        require_dtype(name, t, DType::F16, "");
        // One dimension, its length checked before it is used.
        const int64_t n = t.shape.size() == 1 ? t.shape[0] : -1;
        if (n < 0 || !fits(at, uint64_t(n), region.cols))
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
      case RegionKind::Matrix:
      case RegionKind::QMatrix: {
        uint64_t local = r;
        size_t first = 0, end = parts_.size();
        if (region_.experts) {  // expert r / block's parts; past its rows, a zero pad row
          const uint32_t block = region_.expert_block();
          const size_t per = parts_.size() / region_.experts;
          first = size_t(r / block) * per;
          end = first + per;
          local = r % block;
        }
        for (size_t part = first; part < end; ++part) {
          const Part& p = parts_[part];
          if (local < p.rows) {
            if (region_.kind == RegionKind::QMatrix) {
              const isa::QRowFormat f = region_.qformat();
              const uint8_t* codes = static_cast<const uint8_t*>(p.data) + local * region_.cols;
              uint8_t all = 0;
              for (uint32_t i = 0; i < region_.cols; ++i) all |= codes[i];
              if (f.bits < 8 && (all >> f.bits) != 0)
                throw SpecError("tensor " + p.name + " row " + std::to_string(local) +
                                " holds codes above " + std::to_string((1u << f.bits) - 1) +
                                ", not " + std::to_string(f.bits) + "-bit codes");
              isa::pack_qrow(f, codes, p.scales + local * f.groups(), out);
            } else {
              std::memcpy(out, static_cast<const uint16_t*>(p.data) + local * region_.cols,
                          size_t(region_.cols) * 2);
            }
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
        auto v = rope_table_row(spec_, r, region_.name == "rope_table_local" ? 2 : 1);
        std::memcpy(out, v.data(), v.size() * 4);
        break;
      }
      case RegionKind::KvCache:
        break;
    }
  }

 private:
  struct Part {
    const void* data;  // fp16 values, or u8 codes (QMatrix)
    uint64_t rows;
    const uint16_t* scales;  // QMatrix: [rows, groups]
    std::string name;
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

std::vector<float> rope_table_row(const ModelSpec& spec, uint32_t position, uint32_t table) {
  // As transformers does it: the angle is an fp32 product, cos/sin of it in fp32. The local
  // table (Gemma 3's sliding layers) has its own frequencies and no attention factor.
  const bool local = table == 2;
  const std::vector<float>& inv_freq = local ? spec.rope_local_inv_freq : spec.rope_inv_freq;
  const float factor = local ? 1.0f : spec.rope_attention_factor;
  if (inv_freq.size() < spec.rope_dim / 2)
    throw SpecError("rotary table " + std::to_string(table) + " has no frequencies");
  std::vector<float> row(size_t(spec.rope_dim / 2) * 2);
  for (uint32_t i = 0; i < spec.rope_dim / 2; ++i) {
    float angle = float(position) * inv_freq[i];
    row[2 * i] = float(std::cos(double(angle))) * factor;
    row[2 * i + 1] = float(std::sin(double(angle))) * factor;
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
