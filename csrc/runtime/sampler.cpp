#include "runtime/sampler.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <limits>
#include <string>
#include <vector>

#include "common/error.h"

namespace hyperdex {
namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();
constexpr float kPosInf = std::numeric_limits<float>::infinity();

// A double as Python's repr writes it (near enough for messages): the shortest round trip.
std::string repr(double v) {
  if (std::isnan(v)) return "nan";
  if (std::isinf(v)) return v > 0 ? "inf" : "-inf";
  char buf[40];
  for (int digits = 1; digits <= 17; ++digits) {
    std::snprintf(buf, sizeof buf, "%.*g", digits, v);
    if (std::strtod(buf, nullptr) == v) break;
  }
  std::string out = buf;
  if (out.find_first_of(".en") == std::string::npos) out += ".0";
  return out;
}

// The scores as the pipeline changes them, with each score's softmax weight
// exp(double(score) - double(peak)), the float64 expression of apply_min_p, _top_p_row and
// sample_token alike. No step changes the peak (each keeps the top token), so the weights are
// computed once; a removed token's score becomes -inf and its weight 0, which is what the
// expression gives it. (When the peak is -inf every score is, and no step removes anything.)
struct Scores {
  std::vector<float> s;
  std::vector<double> w;
  float peak = 0.0f;
  bool weighed = false;

  void weigh() {
    if (weighed) return;
    peak = s[0];  // the scores hold no NaN: the logits are checked and no step makes one
    for (float x : s)
      if (x > peak) peak = x;
    w.resize(s.size());
    // exp(-inf - peak) is 0 unless the peak is -inf too (NaN: exp(-inf - -inf))
    const double removed = peak == kNegInf ? std::numeric_limits<double>::quiet_NaN() : 0.0;
    for (size_t i = 0; i < s.size(); ++i)
      w[i] = s[i] == kNegInf ? removed : std::exp(double(s[i]) - double(peak));
    weighed = true;
  }
  void remove(size_t i) {
    s[i] = kNegInf;
    if (weighed) w[i] = 0.0;
  }
};

// A finite score's place in numpy's stable ascending argsort: the score's bits made
// monotonic (-0 counted as +0) above the token id.
uint64_t rank_key(float score, uint32_t id) {
  uint32_t b;
  const float canonical = score == 0.0f ? 0.0f : score;
  std::memcpy(&b, &canonical, 4);
  b = (b & 0x80000000u) ? ~b : (b | 0x80000000u);
  return (uint64_t(b) << 32) | id;
}

// apply_temperature: scores / float32(temperature), in float32.
void apply_temperature(Scores& sc, double temperature) {
  const float t = float(temperature);
  for (float& x : sc.s) x = x / t;
}

// apply_min_p: softmax in float64; a token whose probability is below float32(min_p) times
// the top probability becomes -inf. The top token itself always stays (min_tokens_to_keep 1:
// its probability equals the top one, and min_p <= 1), so no separate keep step is needed.
// A +inf or -inf peak makes every probability NaN (as numpy's), and then nothing goes.
void apply_min_p(Scores& sc, double min_p, std::vector<double>& probs) {
  sc.weigh();
  const size_t n = sc.s.size();
  double sum = 0.0;
  for (size_t i = 0; i < n; ++i) sum += sc.w[i];
  probs.resize(n);
  double top = -std::numeric_limits<double>::infinity();
  for (size_t i = 0; i < n; ++i) {
    probs[i] = sc.w[i] / sum;
    if (std::isnan(probs[i])) return;  // numpy's max is then NaN: nothing compares below it
    if (probs[i] > top) top = probs[i];
  }
  const double cut = double(float(min_p)) * top;
  for (size_t i = 0; i < n; ++i)
    if (probs[i] < cut) sc.remove(i);
}

// apply_top_k: scores below the k-th highest become -inf (ties with it stay), k =
// min(max(top_k, 1), vocab). A small k keeps the k highest in a heap (one pass, few pushes),
// a large one partitions a copy.
void apply_top_k(Scores& sc, int32_t top_k, std::vector<float>& values) {
  const std::vector<float>& s = sc.s;
  const size_t k = std::min<size_t>(size_t(std::max<int32_t>(top_k, 1)), s.size());
  float kth;
  if (k <= 1024 && k * 16 <= s.size()) {
    values.assign(s.begin(), s.begin() + ptrdiff_t(k));  // a min-heap of the k highest so far
    std::make_heap(values.begin(), values.end(), std::greater<float>());
    for (size_t i = k; i < s.size(); ++i) {
      if (s[i] > values.front()) {
        std::pop_heap(values.begin(), values.end(), std::greater<float>());
        values.back() = s[i];
        std::push_heap(values.begin(), values.end(), std::greater<float>());
      }
    }
    kth = values.front();
  } else {
    values.assign(s.begin(), s.end());
    std::nth_element(values.begin(), values.begin() + ptrdiff_t(k - 1), values.end(),
                     std::greater<float>());
    kth = values[k - 1];
  }
  for (size_t i = 0; i < s.size(); ++i)
    if (s[i] < kth) sc.remove(i);
}

// apply_top_p (_top_p_row, min_tokens_to_keep 1): in ascending (score, id) order the tokens
// whose cumulative probability, summed in float64 and cast to float32, is <= float32(1 -
// top_p) become -inf, except the last (the top token). -inf tokens come first with
// probability 0 and add nothing, so only the finite ones are ranked. The cumulative only
// grows, so the removed tokens are a prefix of the order: instead of sorting, the cut is
// found by selection (halving the range where it lies, O(vocab)), and only the last few
// tokens around it are sorted and summed one by one. The sums group the probabilities
// differently from numpy's cumsum, which changes them in the last bits of a double only.
void apply_top_p(Scores& sc, double top_p, std::vector<uint64_t>& keys, std::vector<double>& probs) {
  const float threshold = float(1.0 - top_p);
  sc.weigh();
  if (!std::isfinite(sc.peak)) return;  // +inf (or all -inf): torch's softmax is NaN
  keys.clear();
  double sum = 0.0;
  for (uint32_t i = 0; i < uint32_t(sc.s.size()); ++i) {
    if (sc.s[i] > kNegInf) {
      keys.push_back(rank_key(sc.s[i], i));
      sum += sc.w[i];
    }
  }
  probs.resize(sc.s.size());
  for (uint64_t key : keys) probs[uint32_t(key)] = sc.w[uint32_t(key)] / sum;
  auto p_of = [&](size_t j) { return probs[uint32_t(keys[j])]; };
  // the top token always stays: set it aside at the end
  std::iter_swap(std::max_element(keys.begin(), keys.end()), keys.end() - 1);
  size_t lo = 0, hi = keys.size() - 1;
  double below = 0.0;  // the probability of every token before `lo` (all removed)
  while (hi - lo > 32) {
    const size_t mid = lo + (hi - lo) / 2;
    std::nth_element(keys.begin() + ptrdiff_t(lo), keys.begin() + ptrdiff_t(mid),
                     keys.begin() + ptrdiff_t(hi));
    double low = 0.0;
    for (size_t j = lo; j < mid; ++j) low += p_of(j);
    if (float(below + low) <= threshold) {  // the cut lies at or after mid
      for (size_t j = lo; j < mid; ++j) sc.remove(uint32_t(keys[j]));
      below += low;
      lo = mid;
    } else {  // before mid: [mid, hi) stays
      hi = mid;
    }
  }
  std::sort(keys.begin() + ptrdiff_t(lo), keys.begin() + ptrdiff_t(hi));
  for (size_t j = lo; j < hi; ++j) {
    below += p_of(j);
    if (!(float(below) <= threshold)) break;
    sc.remove(uint32_t(keys[j]));
  }
}

// numpy's ordering for searchsorted: NaN sorts after every number.
bool np_less(double a, double b) { return a < b || (b != b && a == a); }

// sample_token: inverse CDF over the finite scores in float64, searchsorted(side="right") of
// u * total, clamped to the last finite token.
int32_t draw(Scores& sc, double u, std::vector<uint32_t>& finite, std::vector<double>& cdf) {
  finite.clear();
  for (uint32_t i = 0; i < uint32_t(sc.s.size()); ++i)
    if (sc.s[i] > kNegInf) finite.push_back(i);
  if (finite.empty())
    throw SpecError(
        "every token has probability 0 (all scores are -inf); relax top_k/top_p or "
        "min_new_tokens, or check the logits");
  // sample_token's exp(values - values.max()): the peak is the largest finite score, so
  // these are the scores' weights
  sc.weigh();
  cdf.resize(finite.size());
  double total = 0.0;
  for (size_t j = 0; j < finite.size(); ++j) {
    total += sc.w[finite[j]];
    cdf[j] = total;
  }
  const double target = u * total;
  // numpy's binary search for side="right": the first j with target < cdf[j]
  size_t lo = 0, hi = cdf.size();
  while (lo < hi) {
    const size_t mid = lo + ((hi - lo) >> 1);
    if (!np_less(target, cdf[mid]))
      lo = mid + 1;
    else
      hi = mid;
  }
  return int32_t(finite[std::min(lo, finite.size() - 1)]);
}

}  // namespace

void check_sampling(const SamplingParams& p, double u) {
  if (!(p.temperature > 0.0 && std::isfinite(p.temperature)))
    throw SpecError("temperature must be a finite float > 0, got " + repr(p.temperature));
  if (float(p.temperature) == 0.0f)  // scores / 0 would be NaN where a logit is 0
    throw SpecError("temperature " + repr(p.temperature) +
                    " is 0 in float32, which the scores are divided by; use greedy decoding "
                    "(do_sample=False) instead");
  if (p.top_k < 0)
    throw SpecError("top_k must be an int >= 0 (0 disables it), got " + std::to_string(p.top_k));
  if (!(p.top_p > 0.0 && p.top_p <= 1.0))
    throw SpecError("top_p must be a float in (0, 1] (1.0 disables it), got " + repr(p.top_p));
  if (!(p.min_p >= 0.0 && p.min_p <= 1.0))
    throw SpecError("min_p must be a float in [0, 1] (0 disables it), got " + repr(p.min_p));
  if (!(u >= 0.0 && u < 1.0))
    throw SpecError("u must be a uniform draw in [0, 1), got " + repr(u));
}

int32_t sample_logits(const float* logits, uint32_t vocab, const SamplingParams& p, double u) {
  check_sampling(p, u);
  if (vocab == 0) throw SpecError("logits must have shape [vocab] with vocab > 0, got none");
  if (vocab > uint32_t(std::numeric_limits<int32_t>::max()))
    throw SpecError("a vocab of " + std::to_string(vocab) + " tokens does not fit int32 token ids");
  for (uint32_t i = 0; i < vocab; ++i) {
    if (std::isnan(logits[i]) || logits[i] == kPosInf)
      throw InvalidLogits(
          "logits contain NaN or +inf; the device produced invalid values (check the "
          "compiled model and its weights)");
  }
  // the buffers of this thread's previous call, reused (no page faults on fresh memory)
  thread_local Scores sc;
  thread_local std::vector<float> values;
  thread_local std::vector<double> probs;
  thread_local std::vector<uint64_t> keys;
  thread_local std::vector<uint32_t> finite;
  sc.s.assign(logits, logits + vocab);
  sc.weighed = false;
  // LogitsPipeline's sampling branch, in its order
  if (p.temperature != 1.0) apply_temperature(sc, p.temperature);
  const bool min_p = p.min_p > 0.0;
  if (min_p && p.min_p_first) apply_min_p(sc, p.min_p, probs);
  if (p.top_k != 0) apply_top_k(sc, p.top_k, values);
  if (p.top_p < 1.0) apply_top_p(sc, p.top_p, keys, probs);
  if (min_p && !p.min_p_first) apply_min_p(sc, p.min_p, probs);
  return draw(sc, u, finite, probs);
}

}  // namespace hyperdex
