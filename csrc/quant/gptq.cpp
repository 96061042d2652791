// GPTQ, RTN and dequantization (see gptq.h for the numbers).
//
// GPTQ outline (per layer, W [rows, cols], H [cols, cols]):
//   dead columns (H_jj == 0): H_jj = 1, W[:, j] = 0
//   desc_act: visit columns by decreasing H_jj (stable order for ties)
//   act_group_aware: visit whole groups by decreasing max H_jj, each group's
//     columns by decreasing H_jj
//   U = upper Cholesky factor of (H + damp I)^-1, damp = damp_percent * mean(diag H)
//   for each column j in visiting order:
//     at a group's first column: scales from the current (error-updated) weights
//     q = quantize(W[:, j]); err = (W[:, j] - w') / U_jj
//     W[:, j+1:] -= err U[j, j+1:]
// The last step is applied eagerly inside a block of columns and lazily (one
// matrix multiply) to the columns after it. Rows are independent, so threads
// take panels of rows through the whole loop. Every weight then receives the
// same chain of fused multiply-adds, in column order, as in the unblocked loop:
// blocking changes speed, not values.
#include "quant/gptq.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <limits>
#include <numeric>
#include <sstream>
#include <thread>

#include "common/error.h"
#include "common/fp16.h"
#include "quant/linalg.h"

namespace hyperdex::quant {
namespace {

std::string prefix(const std::string& name) {
  return name.empty() ? std::string("quantization: ") : "layer '" + name + "': ";
}

std::string fmt(double v) {
  std::ostringstream os;
  os << v;
  return os.str();
}

// Polls `interrupted` at most every 50 ms, and only from the calling thread
// (Python sees signals there); other threads would just see the flag.
class InterruptPoller {
 public:
  explicit InterruptPoller(const InterruptCheck& check)
      : check_(check), caller_(std::this_thread::get_id()) {}

  void poll() {
    if (check_ && std::this_thread::get_id() == caller_) {
      const auto now = std::chrono::steady_clock::now();
      if (now - last_ >= std::chrono::milliseconds(50)) {
        last_ = now;
        if (check_()) stop_.store(true, std::memory_order_relaxed);
      }
    }
    if (stop_.load(std::memory_order_relaxed)) throw Interrupted("quantization interrupted");
  }

 private:
  const InterruptCheck& check_;
  std::thread::id caller_;
  std::chrono::steady_clock::time_point last_{};
  std::atomic<bool> stop_{false};
};

// Round half to even, as std::nearbyint in the default rounding mode, without a libm
// call: for |x| < 2^51, x + 1.5 * 2^52 lands where doubles are whole numbers, rounded to
// nearest even, and subtracting the constant back is exact.
inline double round_even(double x) {
  if (std::fabs(x) < 0x1p51) return (x + 0x1.8p52) - 0x1.8p52;
  return std::nearbyint(x);  // huge (or NaN): rare, libm's
}

inline uint8_t code_of(double w, double scale, double z, double maxq) {
  return static_cast<uint8_t>(std::min(std::max(round_even(w / scale) + z, 0.0), maxq));
}

// w' of every code of a scale, as doubles: the dequantized values of a 4-bit group.
void code_values(uint16_t scale, int bits, double* out) {
  for (int q = 0; q < (1 << bits); ++q)
    out[q] = double(half_to_float(dequantize_code(uint8_t(q), scale, bits)));
}

// The scale of a group (choose_scale), with the check that its most negative
// code still dequantizes to a finite fp16 value.
uint16_t checked_scale(const double* w, size_t len, const QuantOptions& opt,
                       const std::string& name, size_t row) {
  double absmax = 0.0;
  for (size_t c = 0; c < len; ++c) absmax = std::max(absmax, std::fabs(w[c]));
  if (!std::isfinite(half_to_float(dequantize_code(0, group_scale(absmax, opt.bits), opt.bits)))) {
    throw SpecError(prefix(name) + "a group of row " + std::to_string(row) +
                    " has weights up to " + fmt(absmax) +
                    " in magnitude, too large for fp16 scales (dequantized weights are fp16, "
                    "at most 65504); this layer cannot be quantized, keep the model in fp16");
  }
  return choose_scale(w, len, opt);
}

void check_weights(const float* w, size_t rows, size_t cols, const std::string& name) {
  for (size_t r = 0; r < rows; ++r)
    for (size_t c = 0; c < cols; ++c)
      if (!std::isfinite(w[r * cols + c]))
        throw SpecError(prefix(name) + "the weights contain NaN or infinity (row " +
                        std::to_string(r) + ", column " + std::to_string(c) +
                        "); the checkpoint is corrupt or overflowed, fix the weights first");
}

}  // namespace

uint16_t group_scale(double absmax, int bits) {
  const double maxq = double((1 << bits) - 1);
  uint16_t s = float_to_half(static_cast<float>(2.0 * absmax / maxq));
  if ((s & 0x7fffu) == 0) s = 0x3c00u;  // all-zero group (or below fp16's range): scale 1
  return s;
}

uint16_t choose_scale(const double* w, size_t len, const QuantOptions& opt) {
  double absmax = 0.0;
  for (size_t c = 0; c < len; ++c) absmax = std::max(absmax, std::fabs(w[c]));
  uint16_t best = group_scale(absmax, opt.bits);
  if (!(opt.mse > 0.0)) return best;
  // Shrinking trades clipping the largest weights for finer steps everywhere else.
  // Norm 2 has a SIMD kernel; any other norm takes std::pow per weight (slow).
  const SimdLevel level = best_simd_level();
  const double z = double(1 << (opt.bits - 1)), maxq = double((1 << opt.bits) - 1);
  double best_err = std::numeric_limits<double>::infinity();
  uint16_t last = 0;
  for (int i = 0; i < kShrinkSteps; ++i) {
    const uint16_t s = group_scale(absmax * (1.0 - double(i) / 100.0), opt.bits);
    if (s == last) continue;  // the same fp16 scale as the step before
    last = s;
    const double sd = double(half_to_float(s));
    double err = 0.0;
    if (opt.mse == 2.0) {
      err = group_sq_error(level, w, len, sd, opt.bits);
    } else {
      for (size_t c = 0; c < len; ++c) {
        const double q = std::min(std::max(round_even(w[c] / sd) + z, 0.0), maxq);
        err += std::pow(std::fabs(std::fma(z - q, sd, w[c])), opt.mse);
      }
    }
    if (err < best_err) best_err = err, best = s;
  }
  return best;
}

uint8_t quantize_code(double w, double scale, int bits) {
  return code_of(w, scale, double(1 << (bits - 1)), double((1 << bits) - 1));
}

uint16_t dequantize_code(uint8_t q, uint16_t scale, int bits) {
  return float_to_half(float(int(q) - (1 << (bits - 1))) * half_to_float(scale));
}

size_t checked_group_cols(const QuantOptions& opt, size_t cols, const std::string& name) {
  const std::string pre = prefix(name);
  if (opt.bits != 4 && opt.bits != 8)
    throw SpecError(pre + "bits must be 4 or 8 (got " + std::to_string(opt.bits) +
                    "): the LPU stores int4 (W4A16) or int8 (W8A16) weight codes; use bits=4 "
                    "or bits=8");
  if (!opt.sym)
    throw SpecError(pre + "sym=False (asymmetric quantization with zero points) is not "
                          "supported: the LPU's quantized weights have one fp16 scale per group "
                          "and no zero points; use sym=True");
  if (opt.desc_act && !opt.static_groups)
    throw SpecError(pre + "desc_act=True needs static_groups=True: the LPU streams each group's "
                          "scale right before that group's consecutive weights, so every group "
                          "must stay a contiguous run of input columns; with static_groups=True "
                          "the groups are fixed in input order before the columns are reordered "
                          "(or use desc_act=False)");
  if (!(opt.mse >= 0.0 && opt.mse <= 10.0))
    throw SpecError(pre + "mse must be 0 (scales from each group's largest weight) or the norm of "
                          "the scale search, up to 10 (got " + fmt(opt.mse) + "); 2.4 is usual");
  if (opt.act_group_aware && (opt.desc_act || opt.static_groups))
    throw SpecError(pre + "act_group_aware=True orders whole groups itself (by their largest "
                          "Hessian diagonal, each group's columns by theirs): use it with "
                          "desc_act=False and static_groups=False, or use desc_act=True with "
                          "static_groups=True instead");
  if (cols == 0) throw SpecError(pre + "the weight matrix has no input columns");
  if (opt.group_size == -1) return cols;
  // A group size that does not divide the columns leaves a shorter last group, as in GPTQ
  // (SmolLM2's 576 inputs are 4.5 groups of 128); it must be even so int4 codes pack in bytes.
  if (opt.group_size <= 0 || opt.group_size % 2 != 0)
    throw SpecError(pre + "group_size must be a positive even number of input columns or -1 "
                          "(one scale per row), got " + std::to_string(opt.group_size) +
                          "; 128 is the usual value");
  return std::min(size_t(opt.group_size), cols);
}

QuantResult gptq_quantize(const float* w, size_t rows, size_t cols, const double* h,
                          const QuantOptions& opt, const std::string& name, ThreadPool& pool,
                          const InterruptCheck& interrupted) {
  const std::string pre = prefix(name);
  const size_t gc = checked_group_cols(opt, cols, name);
  if (!(opt.damp_percent > 0.0 && opt.damp_percent < 1.0))
    throw SpecError(pre + "damp_percent must be between 0 and 1 (got " + fmt(opt.damp_percent) +
                    "); 0.01 is the usual value, 0.1 helps a Hessian that does not factor");
  if (opt.block_size < 1)
    throw SpecError(pre + "block_size must be at least 1 (got " + std::to_string(opt.block_size) +
                    "); 128 is the usual value");
  check_weights(w, rows, cols, name);
  for (size_t i = 0; i < cols; ++i)
    for (size_t j = 0; j <= i; ++j)
      if (!std::isfinite(h[i * cols + j]))
        throw SpecError(pre + "the Hessian contains NaN or infinity (row " + std::to_string(i) +
                        ", column " + std::to_string(j) +
                        "): this layer's calibration inputs overflowed or are not finite; check "
                        "that the fp16 model runs cleanly on the calibration data");

  const int bits = opt.bits;
  const size_t groups = (cols + gc - 1) / gc, n = cols;
  const SimdLevel level = best_simd_level();
  InterruptPoller poller(interrupted);

  QuantResult res;
  res.rows = rows, res.cols = cols, res.groups = groups;
  res.codes.assign(rows * cols, 0);
  res.scales.assign(rows * groups, 0);
  if (rows == 0) return res;

  // Lower-triangle reads of H; dead columns (no calibration signal) get H_jj = 1.
  auto h_at = [&](size_t a, size_t b) { return a >= b ? h[a * n + b] : h[b * n + a]; };
  std::vector<char> dead(n, 0);
  double diag_sum = 0.0;
  for (size_t j = 0; j < n; ++j) {
    if (h[j * n + j] == 0.0) dead[j] = 1;
    diag_sum += dead[j] ? 1.0 : h[j * n + j];
  }
  auto hd = [&](size_t a, size_t b) { return (a == b && dead[a]) ? 1.0 : h_at(a, b); };

  // Visiting order: perm[k] = original column visited k-th. desc_act: by decreasing
  // H_jj; act_group_aware (GPTQModel's group-aware reordering): whole groups by their
  // largest H_jj, each group's columns by theirs, so groups stay contiguous.
  std::vector<size_t> perm(n);
  std::iota(perm.begin(), perm.end(), size_t{0});
  auto by_diag = [&](size_t a, size_t b) { return hd(a, a) > hd(b, b); };
  if (opt.desc_act) std::stable_sort(perm.begin(), perm.end(), by_diag);
  if (opt.act_group_aware) {
    std::vector<size_t> order(groups), cols_in_order;
    std::iota(order.begin(), order.end(), size_t{0});
    std::vector<double> score(groups, 0.0);
    for (size_t c = 0; c < n; ++c) score[c / gc] = std::max(score[c / gc], hd(c, c));
    std::stable_sort(order.begin(), order.end(),
                     [&](size_t a, size_t b) { return score[a] > score[b]; });
    for (size_t g : order) {
      const size_t c0 = g * gc, c1 = std::min(n, c0 + gc);
      std::stable_sort(perm.begin() + c0, perm.begin() + c1, by_diag);
      cols_in_order.insert(cols_in_order.end(), perm.begin() + c0, perm.begin() + c1);
    }
    perm = std::move(cols_in_order);
  }
  // Scales found as GPTQ reaches a group (not static_groups): where each visited
  // position's group ends in visiting order (groups are contiguous runs there).
  std::vector<size_t> group_end(n);
  for (size_t j = 0; j < n;) {
    size_t e = j + 1;
    while (e < n && perm[e] / gc == perm[j] / gc) ++e;
    for (size_t i = j; i < e; ++i) group_end[i] = e;
    j = e;
  }

  // Weights in fp64, visiting order, dead columns zeroed.
  std::vector<double> wd(rows * n);
  pool.parallel_for(0, rows, 16, [&](size_t lo, size_t hi) {
    for (size_t r = lo; r < hi; ++r)
      for (size_t k = 0; k < n; ++k)
        wd[r * n + k] = dead[perm[k]] ? 0.0 : double(w[r * n + perm[k]]);
  });
  if (opt.static_groups) {  // from the original weights, groups in input order
    pool.parallel_for(0, rows, 16, [&](size_t lo, size_t hi) {
      std::vector<double> vals(gc);
      for (size_t r = lo; r < hi; ++r)
        for (size_t g = 0; g < groups; ++g) {
          size_t len = 0;
          for (size_t c = g * gc; c < std::min(cols, (g + 1) * gc); ++c)
            if (!dead[c]) vals[len++] = double(w[r * n + c]);
          res.scales[r * groups + g] = checked_scale(vals.data(), len, opt, name, r);
        }
    });
  }

  // U = upper Cholesky factor of (Hp + damp I)^-1 (Hp: H in visiting order), via
  // the reversal J: if J (Hp + damp I) J = L L^T then U = J L^-1 J. One Cholesky
  // and one triangular inverse instead of two Cholesky and an inverse; the
  // upper factor with a positive diagonal is unique, so it is the same U.
  std::vector<double> f(n * n), x(n * n);
  double damp = opt.damp_percent * diag_sum / double(n);
  for (int attempt = 0;; ++attempt) {
    poller.poll();
    pool.parallel_for(0, n, 64, [&](size_t lo, size_t hi) {
      for (size_t i = lo; i < hi; ++i)
        for (size_t j = 0; j <= i; ++j)
          f[i * n + j] = hd(perm[n - 1 - i], perm[n - 1 - j]) + (i == j ? damp : 0.0);
    });
    bool ok = cholesky_lower(f.data(), n, n, pool, level);
    if (ok) {
      poller.poll();
      invert_lower(f.data(), n, n, x.data(), n, pool, level);
      for (size_t i = 0; i < n && ok; ++i)
        for (size_t j = 0; j <= i; ++j)
          if (!std::isfinite(x[i * n + j])) {
            ok = false;
            break;
          }
    }
    if (ok) break;
    if (attempt == kMaxDampRetries)
      throw SpecError(
          pre +
          "GPTQ could not factor the Hessian: it is not positive definite even with damping " +
          fmt(damp) + " (damp_percent " + fmt(opt.damp_percent) + " of mean(diag H) = " +
          fmt(diag_sum / double(n)) + ", multiplied by 10 " + std::to_string(kMaxDampRetries) +
          " times). The calibration data does not excite this layer's inputs well enough: "
          "calibrate with more or more varied samples (a larger nsamples or seqlen, or another "
          "dataset), or raise damp_percent (e.g. 0.1)");
    damp *= 10.0;
    ++res.retries;
  }
  res.damp = damp;
  double* u = f.data();  // U overwrites the factor: U[i][j] = X[n-1-i][n-1-j], j >= i
  for (size_t i = 0; i < n; ++i)
    for (size_t j = i; j < n; ++j) u[i * n + j] = x[(n - 1 - i) * n + (n - 1 - j)];
  std::vector<double>().swap(x);

  // Blocks never start inside a group that reaches past them, so a group's
  // first column always sees its whole group up to date.
  const size_t bs = size_t(opt.block_size);
  auto block_end = [&](size_t i1) {
    if (opt.static_groups || gc >= n) return std::min(n, i1 + bs);
    size_t i2 = i1;  // whole groups while they fit, else the block's share of one
    while (i2 < n && group_end[i2] - i1 <= bs) i2 = group_end[i2];
    return i2 > i1 ? i2 : std::min(i1 + bs, group_end[i1]);
  };

  // Blocks outside, row panels (one task each) inside: U's rows for the lazy
  // update are packed once per block and shared by every panel.
  const size_t want = (rows + 4 * pool.size() - 1) / (4 * pool.size());
  const size_t panel_rows = std::min<size_t>(96, std::max<size_t>(24, (want + 11) / 12 * 12));
  const size_t panels = (rows + panel_rows - 1) / panel_rows;
  std::vector<double> row_loss(rows, 0.0), err(rows * bs), scale(rows);
  std::vector<uint16_t> scale_h(rows);  // the current group's scale of each row
  // 4 bits: w' of each code per scale, looked up instead of converted per weight; for
  // static groups one table per (row, group), else one per row (the current group).
  const size_t ncodes = size_t(1) << bits;
  const bool tables = bits == 4;
  std::vector<double> values;
  if (tables) values.resize((opt.static_groups ? rows * groups : rows) * ncodes);
  if (tables && opt.static_groups) {
    pool.parallel_for(0, rows * groups, 256, [&](size_t lo, size_t hi) {
      for (size_t i = lo; i < hi; ++i) code_values(res.scales[i], bits, values.data() + i * ncodes);
    });
  }
  const double z = double(1 << (bits - 1)), maxq = double((1 << bits) - 1);
  PackedB packed;
  for (size_t i1 = 0, i2 = 0; i1 < n; i1 = i2) {
    poller.poll();
    i2 = block_end(i1);
    if (i2 < n) pack_b(level, i2 - i1, n - i2, u + i1 * n + i2, n, packed, pool);
    pool.parallel_for(0, panels, 1, [&](size_t lo, size_t hi) {
      GemmWorkspace ws;
      for (size_t panel = lo; panel < hi; ++panel) {
        const size_t r0 = panel * panel_rows, r1 = std::min(rows, r0 + panel_rows);
        for (size_t j = i1; j < i2; ++j) {
          const double* uj = u + j * n;
          const double d = uj[j];
          const size_t g = perm[j] / gc;
          if (opt.static_groups || j == 0 || group_end[j - 1] == j) {
            for (size_t r = r0; r < r1; ++r) {
              uint16_t sh;
              if (opt.static_groups) {
                sh = res.scales[r * groups + g];
              } else {
                sh = checked_scale(wd.data() + r * n + j, group_end[j] - j, opt, name, r);
                res.scales[r * groups + g] = sh;
                if (tables) code_values(sh, bits, values.data() + r * ncodes);
              }
              scale_h[r] = sh;
              scale[r] = double(half_to_float(sh));
            }
          }
          for (size_t r = r0; r < r1; ++r) {
            double* wr = wd.data() + r * n;
            const double wv = wr[j];
            const uint8_t q = code_of(wv, scale[r], z, maxq);
            const double wq =
                tables ? values[((opt.static_groups ? r * groups + g : r) * ncodes) + q]
                       : double(half_to_float(dequantize_code(q, scale_h[r], bits)));
            const double e = (wv - wq) / d;
            row_loss[r] += e * e / 2.0;
            err[r * bs + (j - i1)] = e;
            res.codes[r * n + perm[j]] = q;
            axpy(level, i2 - j - 1, -e, uj + j + 1, wr + j + 1);  // the rest of the block
          }
        }
        if (i2 < n)  // lazy batch update of the columns after the block
          gemm_acc_packed(r1 - r0, true, err.data() + r0 * bs, bs, 1, packed,
                          wd.data() + r0 * n + i2, n, ws);
      }
    });
  }
  res.loss = std::accumulate(row_loss.begin(), row_loss.end(), 0.0);
  return res;
}

QuantResult rtn_quantize(const float* w, size_t rows, size_t cols, const QuantOptions& opt,
                         const std::string& name, ThreadPool& pool) {
  const size_t gc = checked_group_cols(opt, cols, name);
  check_weights(w, rows, cols, name);
  const int bits = opt.bits;
  QuantResult res;
  res.rows = rows, res.cols = cols, res.groups = (cols + gc - 1) / gc;
  res.codes.assign(rows * cols, 0);
  res.scales.assign(rows * res.groups, 0);
  std::vector<double> row_loss(rows, 0.0);
  pool.parallel_for(0, rows, 8, [&](size_t lo, size_t hi) {
    std::vector<double> vals(gc);
    for (size_t r = lo; r < hi; ++r) {
      const float* wr = w + r * cols;
      for (size_t g = 0; g < res.groups; ++g) {
        const size_t c1 = std::min(cols, (g + 1) * gc);
        for (size_t c = g * gc; c < c1; ++c) vals[c - g * gc] = double(wr[c]);
        const uint16_t s = checked_scale(vals.data(), c1 - g * gc, opt, name, r);
        res.scales[r * res.groups + g] = s;
        const double sd = double(half_to_float(s));
        for (size_t c = g * gc; c < c1; ++c) {
          const uint8_t q = quantize_code(double(wr[c]), sd, bits);
          res.codes[r * cols + c] = q;
          const double diff = double(wr[c]) - double(half_to_float(dequantize_code(q, s, bits)));
          row_loss[r] += diff * diff;
        }
      }
    }
  });
  res.loss = std::accumulate(row_loss.begin(), row_loss.end(), 0.0);
  return res;
}

std::vector<uint16_t> dequantize(const uint8_t* codes, const uint16_t* scales, size_t rows,
                                 size_t cols, int bits, int64_t group_size, ThreadPool& pool) {
  QuantOptions opt;
  opt.bits = bits;
  opt.group_size = group_size;
  const size_t gc = checked_group_cols(opt, cols, "");
  const size_t groups = (cols + gc - 1) / gc;
  const unsigned maxq = (1u << bits) - 1;
  std::vector<uint16_t> out(rows * cols);
  pool.parallel_for(0, rows, 16, [&](size_t lo, size_t hi) {
    for (size_t r = lo; r < hi; ++r)
      for (size_t c = 0; c < cols; ++c) {
        const uint8_t q = codes[r * cols + c];
        if (q > maxq)
          throw SpecError("dequantize: code " + std::to_string(q) + " at row " + std::to_string(r) +
                          ", column " + std::to_string(c) + " is above " + std::to_string(maxq) +
                          ", the largest " + std::to_string(bits) +
                          "-bit code; the codes do not match bits=" + std::to_string(bits));
        out[r * cols + c] = dequantize_code(q, scales[r * groups + c / gc], bits);
      }
  });
  return out;
}

}  // namespace hyperdex::quant
