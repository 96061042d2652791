// The C++ sampler (runtime/sampler.h) on small logits whose outcome is worked out by hand, and
// on large random ones against a plain reference (a full stable sort for top-p, a sort for
// top-k) that its selection shortcuts must agree with. Its agreement with the host pipeline
// in Python is tested in tests/test_decode_on_device.py.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <random>
#include <vector>

#include "common/error.h"
#include "runtime/sampler.h"

namespace {

using hyperdex::InvalidLogits;
using hyperdex::sample_logits;
using hyperdex::SamplingParams;
using hyperdex::SpecError;

constexpr float kInf = std::numeric_limits<float>::infinity();
const double kBelowOne = std::nextafter(1.0, 0.0);

SamplingParams params(double temperature = 1.0, int32_t top_k = 0, double top_p = 1.0,
                      double min_p = 0.0, bool min_p_first = false) {
  return SamplingParams{temperature, top_k, top_p, min_p, min_p_first};
}

int32_t sample(const std::vector<float>& logits, const SamplingParams& p, double u) {
  return sample_logits(logits.data(), uint32_t(logits.size()), p, u);
}

// log-probabilities: softmax gives back (about) these probabilities
std::vector<float> log_of(const std::vector<double>& probs) {
  std::vector<float> out;
  for (double p : probs) out.push_back(float(std::log(p)));
  return out;
}

TEST(Sampler, InverseCdfOverTheFiniteScores) {
  const std::vector<float> flat(4, 0.0f);  // cdf 1, 2, 3, 4
  EXPECT_EQ(sample(flat, params(), 0.0), 0);
  EXPECT_EQ(sample(flat, params(), 0.2499), 0);
  EXPECT_EQ(sample(flat, params(), 0.25), 1);  // side="right": u * total on an edge goes up
  EXPECT_EQ(sample(flat, params(), 0.5), 2);
  EXPECT_EQ(sample(flat, params(), 0.74), 2);
  EXPECT_EQ(sample(flat, params(), kBelowOne), 3);

  const std::vector<float> holes = {-kInf, 0.0f, -kInf, 0.0f, -kInf};
  EXPECT_EQ(sample(holes, params(), 0.0), 1);
  EXPECT_EQ(sample(holes, params(), 0.49), 1);
  EXPECT_EQ(sample(holes, params(), 0.5), 3);
  EXPECT_EQ(sample(holes, params(), kBelowOne), 3);  // never a -inf token
  EXPECT_EQ(sample({-kInf, 5.0f, -kInf}, params(), kBelowOne), 1);
}

TEST(Sampler, TemperatureSharpensOrFlattens) {
  // probabilities 1/4, 3/4 at temperature 1; 1/10, 9/10 at 0.5; about 0.37, 0.63 at 2
  const std::vector<float> logits = {0.0f, float(std::log(3.0))};
  EXPECT_EQ(sample(logits, params(1.0), 0.2), 0);
  EXPECT_EQ(sample(logits, params(0.5), 0.2), 1);
  EXPECT_EQ(sample(logits, params(2.0), 0.3), 0);
  EXPECT_EQ(sample(logits, params(0.5), 0.09), 0);
}

TEST(Sampler, TopKKeepsTiesWithTheKth) {
  // sorted 3, 2, 2, 1, 0: k = 2 keeps the score 3 and both 2s (tokens 1, 2, 3)
  const std::vector<float> logits = {1.0f, 3.0f, 2.0f, 2.0f, 0.0f};
  // weights 1, e^-1, e^-1 over tokens 1, 2, 3: cdf 1, 1.368, 1.736
  EXPECT_EQ(sample(logits, params(1.0, 2), 0.0), 1);
  EXPECT_EQ(sample(logits, params(1.0, 2), 0.5), 1);
  EXPECT_EQ(sample(logits, params(1.0, 2), 0.7), 2);
  EXPECT_EQ(sample(logits, params(1.0, 2), kBelowOne), 3);
  EXPECT_EQ(sample(logits, params(1.0, 1), kBelowOne), 1);
  EXPECT_EQ(sample(logits, params(1.0, 1000), kBelowOne), 4);  // k past the vocab: all stay
}

TEST(Sampler, TopPCutsTheTail) {
  const std::vector<float> logits = log_of({0.5, 0.3, 0.15, 0.05});
  // top_p 0.7: cumulative 0.05, 0.2 <= 0.3 go, 0.5 stays: tokens 0 and 1 (weights 0.5, 0.3)
  EXPECT_EQ(sample(logits, params(1.0, 0, 0.7), 0.6), 0);
  EXPECT_EQ(sample(logits, params(1.0, 0, 0.7), 0.7), 1);
  EXPECT_EQ(sample(logits, params(1.0, 0, 0.7), kBelowOne), 1);
  // top_p 0.9: only the 0.05 goes
  EXPECT_EQ(sample(logits, params(1.0, 0, 0.9), kBelowOne), 2);
  // a tiny top_p keeps the likeliest token only (min_tokens_to_keep 1)
  EXPECT_EQ(sample(logits, params(1.0, 0, 0.01), 0.0), 0);
  EXPECT_EQ(sample(logits, params(1.0, 0, 0.01), kBelowOne), 0);
}

TEST(Sampler, TopPOrdersTiesByTokenId) {
  // four equal tokens, top_p 0.5: in the stable order 0, 1, 2, 3 the cumulative 0.25 and 0.5
  // (<= 0.5) remove tokens 0 and 1
  const std::vector<float> flat(4, 1.5f);
  EXPECT_EQ(sample(flat, params(1.0, 0, 0.5), 0.0), 2);
  EXPECT_EQ(sample(flat, params(1.0, 0, 0.5), kBelowOne), 3);
  // -0 and +0 tie too
  const std::vector<float> zeros = {0.0f, -0.0f, 0.0f, -0.0f};
  EXPECT_EQ(sample(zeros, params(1.0, 0, 0.5), 0.0), 2);
}

TEST(Sampler, MinPDropsTokensBelowAShareOfTheTop) {
  const std::vector<float> logits = log_of({0.5, 0.3, 0.15, 0.05});
  // min_p 0.2: below 0.1 goes (token 3)
  EXPECT_EQ(sample(logits, params(1.0, 0, 1.0, 0.2), kBelowOne), 2);
  // min_p 0.5: below 0.25 goes (tokens 2, 3)
  EXPECT_EQ(sample(logits, params(1.0, 0, 1.0, 0.5), kBelowOne), 1);
  // min_p 1: the top token only
  EXPECT_EQ(sample(logits, params(1.0, 0, 1.0, 1.0), kBelowOne), 0);
}

TEST(Sampler, MinPOrder) {
  // min_p 0.2 removes token 3; top_p 0.83 (threshold 0.17):
  // - transformers (top_p first): cumulative 0.05 goes, 0.2 stays; then min_p keeps token 2
  // - vLLM (min_p first): renormalised 0.158 (token 2) goes too
  const std::vector<float> logits = log_of({0.5, 0.3, 0.15, 0.05});
  EXPECT_EQ(sample(logits, params(1.0, 0, 0.83, 0.2, false), kBelowOne), 2);
  EXPECT_EQ(sample(logits, params(1.0, 0, 0.83, 0.2, true), kBelowOne), 1);
}

TEST(Sampler, BrokenLogitsAndBadParamsAreRejected) {
  const std::vector<float> ok = {0.0f, 1.0f};
  EXPECT_THROW(sample({0.0f, std::nanf("")}, params(), 0.5), InvalidLogits);
  EXPECT_THROW(sample({kInf, 1.0f}, params(), 0.5), InvalidLogits);
  EXPECT_THROW(sample({-kInf, -kInf}, params(), 0.5), SpecError);  // nothing to draw
  EXPECT_THROW(sample_logits(ok.data(), 0, params(), 0.5), SpecError);
  for (double t : {0.0, -1.0, double(kInf), std::nan(""), 1e-50})  // 1e-50: 0 in float32
    EXPECT_THROW(sample(ok, params(t), 0.5), SpecError) << t;
  EXPECT_THROW(sample(ok, params(1.0, -1), 0.5), SpecError);
  for (double p : {0.0, -0.5, 1.5, std::nan("")})
    EXPECT_THROW(sample(ok, params(1.0, 0, p), 0.5), SpecError) << p;
  for (double m : {-0.1, 1.5, std::nan("")})
    EXPECT_THROW(sample(ok, params(1.0, 0, 1.0, m), 0.5), SpecError) << m;
  for (double u : {-0.1, 1.0, std::nan("")}) EXPECT_THROW(sample(ok, params(), u), SpecError) << u;
  try {
    sample(ok, params(1.0, 0, 1.5), 0.5);
  } catch (const SpecError& e) {
    EXPECT_NE(std::string(e.what()).find("top_p must be a float in (0, 1]"), std::string::npos);
  }
}

// A plain reference: top-k by a full sort, top-p by a full stable sort and a running sum,
// min-p from float64 probabilities, the draw as sample_token.
int32_t reference(std::vector<float> s, const SamplingParams& p, double u) {
  const size_t n = s.size();
  auto weights = [&] {
    const float peak = *std::max_element(s.begin(), s.end());
    std::vector<double> w(n);
    for (size_t i = 0; i < n; ++i) w[i] = std::exp(double(s[i]) - double(peak));
    return w;
  };
  auto min_p = [&] {
    auto w = weights();
    const double sum = std::accumulate(w.begin(), w.end(), 0.0);
    const double top = *std::max_element(w.begin(), w.end()) / sum;
    for (size_t i = 0; i < n; ++i)
      if (w[i] / sum < double(float(p.min_p)) * top) s[i] = -kInf;
  };
  if (p.temperature != 1.0)
    for (float& x : s) x /= float(p.temperature);
  if (p.min_p > 0 && p.min_p_first) min_p();
  if (p.top_k > 0) {
    std::vector<float> sorted = s;
    std::sort(sorted.begin(), sorted.end(), std::greater<float>());
    const float kth = sorted[std::min<size_t>(size_t(p.top_k), n) - 1];
    for (float& x : s)
      if (x < kth) x = -kInf;
  }
  if (p.top_p < 1.0) {
    auto w = weights();
    const double sum = std::accumulate(w.begin(), w.end(), 0.0);
    std::vector<uint32_t> order(n);
    std::iota(order.begin(), order.end(), 0u);
    std::stable_sort(order.begin(), order.end(), [&](uint32_t a, uint32_t b) { return s[a] < s[b]; });
    double c = 0.0;
    for (size_t j = 0; j + 1 < n; ++j) {
      c += w[order[j]] / sum;
      if (float(c) <= float(1.0 - p.top_p)) s[order[j]] = -kInf;
    }
  }
  if (p.min_p > 0 && !p.min_p_first) min_p();
  std::vector<uint32_t> finite;
  for (uint32_t i = 0; i < n; ++i)
    if (s[i] > -kInf) finite.push_back(i);
  auto w = weights();
  std::vector<double> cdf;
  double total = 0.0;
  for (uint32_t i : finite) cdf.push_back(total += w[i]);
  const size_t pick = size_t(std::upper_bound(cdf.begin(), cdf.end(), u * total) - cdf.begin());
  return int32_t(finite[std::min(pick, finite.size() - 1)]);
}

TEST(Sampler, LargeVocabMatchesAPlainReference) {
  std::mt19937 gen(7);
  std::uniform_real_distribution<double> uniform(0.0, 1.0);
  const SamplingParams cases[] = {
      params(),          params(0.7, 50, 0.9),        params(1.0, 0, 0.9),
      params(1.0, 0, 0.5), params(1.3, 0, 0.99),      params(1.0, 0, 1.0, 0.05),
      params(0.8, 2000, 0.95, 0.02, true), params(1.0, 20000), params(1.0, 0, 0.3, 0.1),
  };
  int checked = 0;
  for (int trial = 0; trial < 6; ++trial) {
    const double scale = 0.5 + trial;  // flat to peaked
    std::normal_distribution<float> normal(0.0f, float(scale));
    std::vector<float> logits(49152);
    for (float& x : logits) x = normal(gen);
    if (trial % 2) {  // ties, and a fifth of the vocab masked
      for (float& x : logits) x = std::round(x * 4.0f) / 4.0f;
      for (size_t i = 0; i < logits.size(); i += 5) logits[i] = -kInf;
    }
    for (const SamplingParams& p : cases) {
      for (int draw = 0; draw < 8; ++draw) {
        const double u = draw == 0 ? 0.0 : draw == 1 ? kBelowOne : uniform(gen);
        EXPECT_EQ(sample(logits, p, u), reference(logits, p, u))
            << "trial " << trial << " top_k " << p.top_k << " top_p " << p.top_p << " u " << u;
        ++checked;
      }
    }
  }
  EXPECT_EQ(checked, 6 * 9 * 8);
}

}  // namespace
