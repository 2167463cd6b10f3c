// CPU sampling kernel (rules and order of operations in sampling.h).
#include "alignkit/sampling.h"

#include <algorithm>
#include <cmath>
#include <string>
#include <utility>
#include <vector>

#include "alignkit/rng.h"
#include "alignkit/simd.h"
#include "alignkit/thread_pool.h"

namespace alignkit {
namespace {

[[noreturn]] void bad(const std::string& msg) { throw std::invalid_argument(msg); }

// Sums below run as eight float lanes over chunks of kChunk terms (each term is in [0, 1], so a
// chunk's float sum is exact to ~1e-7 relative) and add the chunks in double.
constexpr int64_t kChunk = 512;

/// sum of term(i) over [0, n) (term is always inlined into the vectorised loop); with
/// `chunk_sums`, also each chunk's float sum, in the order they were added to the total.
template <class Term>
__attribute__((always_inline)) inline double chunked_sum(int64_t n, Term term, float* chunk_sums = nullptr) {
  double total = 0.0;
  for (int64_t c = 0; c < n; c += kChunk) {
    const int64_t e = std::min(n, c + kChunk);
    float part[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    int64_t i = c;
    for (; i + 8 <= e; i += 8)
      for (int l = 0; l < 8; ++l) part[l] += term(i + l);
    float s = ((part[0] + part[1]) + (part[2] + part[3])) + ((part[4] + part[5]) + (part[6] + part[7]));
    for (; i < e; ++i) s += term(i);
    if (chunk_sums) chunk_sums[c / kChunk] = s;
    total += s;
  }
  return total;
}

/// log(sum(exp(x - m))) + m over n values, m = max(x).
ALIGNKIT_HOT double logsumexp(const float* x, int64_t n, float m) {
  if (std::isinf(m) && m < 0) return -INFINITY;
  return static_cast<double>(m) +
         std::log(chunked_sum(n, [&](int64_t i) __attribute__((always_inline)) { return exp_nonpos(x[i] - m); }));
}

/// z[i] = x[i] / T and w[i] = exp(z[i] - mz) for mz = max(z) (so w is in [0, 1]); returns sum(w)
/// and each kChunk-chunk's sum in `chunk_sums`.
ALIGNKIT_HOT double tempered_weights(const float* x, int64_t n, float T, float mz, float* z, float* w,
                                     float* chunk_sums) {
  return chunked_sum(n, [&](int64_t i) __attribute__((always_inline)) {
    z[i] = x[i] / T;
    w[i] = exp_nonpos(z[i] - mz);
    return w[i];
  }, chunk_sums);
}

/// Whether any of x[0, n) is NaN (a vectorised count).
ALIGNKIT_HOT bool has_nan(const float* x, int64_t n) {
  return chunked_sum(n, [&](int64_t i) __attribute__((always_inline)) { return x[i] != x[i] ? 1.f : 0.f; }) > 0;
}

/// z-threshold for top-p on the kept set {i : z[i] >= tz}: keep i iff the mass of strictly
/// more probable kept tokens is < top_p * (kept mass). Expected O(V): a quickselect on value
/// levels that carries the mass of everything above the current range (no sort).
float top_p_threshold(const std::vector<float>& z, const std::vector<float>& w, float tz, double top_p) {
  thread_local std::vector<std::pair<float, float>> cand;  // (z, weight) of kept tokens
  cand.clear();
  double total = 0.0;
  for (size_t i = 0; i < z.size(); ++i)
    if (z[i] >= tz) {
      cand.emplace_back(z[i], w[i]);
      total += w[i];
    }
  const double limit = top_p * total;
  size_t lo = 0, hi = cand.size();
  double above = 0.0;  // mass of kept tokens strictly more probable than all of [lo, hi); always < limit
  while (lo < hi) {
    const float a = cand[lo].first, b = cand[(lo + hi) / 2].first, c = cand[hi - 1].first;
    const float pivot = std::max(std::min(a, b), std::min(std::max(a, b), c));  // median of three
    // Three-way partition of [lo, hi) into (> pivot) [lo, gt), (== pivot) [gt, eq), (< pivot) [eq, hi).
    auto mid = std::partition(cand.begin() + lo, cand.begin() + hi, [&](const auto& x) { return x.first > pivot; });
    auto low = std::partition(mid, cand.begin() + hi, [&](const auto& x) { return x.first == pivot; });
    const size_t gt = mid - cand.begin(), eq = low - cand.begin();
    double mass_gt = 0.0, mass_eq = 0.0;
    for (size_t i = lo; i < gt; ++i) mass_gt += cand[i].second;
    for (size_t i = gt; i < eq; ++i) mass_eq += cand[i].second;
    if (above + mass_gt >= limit) {  // the pivot level is cut; the boundary lies above it
      hi = gt;
      continue;
    }
    above += mass_gt + mass_eq;  // the pivot level is kept
    if (above >= limit || eq == hi) return pivot;
    lo = eq;
  }
  return tz;  // not reached: the top level is always kept
}

ALIGNKIT_HOT void sample_row(const SampleArgs& a, int64_t r) {
  const int64_t V = a.logits.shape[1];
  const float* x = a.logits.ptr<float>() + r * V;
  const float T = a.temperature.ptr<float>()[r];
  const float m = row_max(x, V);
  // At T = 1 (the usual RL setting) the raw log-softmax is the tempered one: computed once.
  double lse1 = T == 1.f ? 0.0 : logsumexp(x, V, m);
  int64_t tok = 0;
  float lp;
  if (T == 0.f) {  // greedy: first index of the maximum; log-probs reported at T = 1
    while (tok < V - 1 && !(x[tok] == m)) ++tok;
    lp = static_cast<float>(x[tok] - lse1);
  } else {
    thread_local std::vector<float> z, w, chunk_sums;
    z.resize(V);
    w.resize(V);
    chunk_sums.resize((V + kChunk - 1) / kChunk);
    const float mz = m / T;
    const double sum = tempered_weights(x, V, T, mz, z.data(), w.data(), chunk_sums.data());
    const double lseT = mz + std::log(sum);
    if (T == 1.f) lse1 = lseT;

    // Every filter keeps an upper set of z, so the kept set is {i : z[i] >= tz}.
    float tz = -INFINITY;
    const float min_p = a.min_p.ptr<float>()[r];
    if (min_p > 0.f) tz = static_cast<float>(mz + std::log(static_cast<double>(min_p)));
    tz = std::min(tz, mz);  // the argmax always survives (guards rounding at min_p = 1)
    const int64_t k = a.top_k.ptr<int32_t>()[r];
    if (k > 0 && k < V) {
      thread_local std::vector<float> tmp;
      tmp.clear();
      for (int64_t i = 0; i < V; ++i)
        if (z[i] >= tz) tmp.push_back(z[i]);
      if (k < static_cast<int64_t>(tmp.size())) {
        std::nth_element(tmp.begin(), tmp.begin() + (k - 1), tmp.end(), std::greater<float>());
        tz = std::max(tz, tmp[k - 1]);
      }
    }
    const float top_p = a.top_p.ptr<float>()[r];
    if (top_p < 1.f) tz = std::max(tz, top_p_threshold(z, w, tz, static_cast<double>(top_p)));

    double kept = sum;  // temperature only: every token is kept, no extra pass
    if (tz != -INFINITY) {
      kept = 0.0;
      for (int64_t i = 0; i < V; ++i)
        if (z[i] >= tz) kept += w[i];
    }
    const double target = counter_uniform(a.seeds.ptr<int64_t>()[r], a.sample_ids.ptr<int64_t>()[r],
                                           a.positions.ptr<int64_t>()[r]) * kept;
    // The draw: the first kept token whose cumulative weight passes the target. The cumulative
    // sum is built exactly as `kept` was (same terms, order and precision), so only rounding of
    // u * kept up to kept can leave it unpassed; then the last kept token of nonzero weight is
    // taken. A token of weight 0 (-inf or NaN logit, or underflow) is never drawn.
    double cum = 0.0;
    int64_t begin = 0, end = V;
    if (tz == -INFINITY) {
      // Temperature only: `kept` is the double sum of the chunk sums. Find the chunk where the
      // target is passed, then the token inside it (in-chunk float rounding differs from the
      // chunk's lane sum by ~1e-7 relative: its last nonzero token is taken if not passed).
      const int64_t nchunks = static_cast<int64_t>(chunk_sums.size());
      int64_t c = 0, last_nonzero = 0;
      for (; c < nchunks; ++c) {
        if (chunk_sums[c] > 0.f) last_nonzero = c;
        if (cum + chunk_sums[c] > target) break;
        cum += chunk_sums[c];
      }
      if (c == nchunks) {  // u * kept rounded up to kept: the last chunk of nonzero mass
        c = last_nonzero;
        cum = 0.0;  // any value <= target: the scan below then takes the chunk's last nonzero token
      }
      begin = c * kChunk;
      end = std::min(V, begin + kChunk);
    }
    tok = -1;
    for (int64_t i = begin; i < end; ++i)
      if (z[i] >= tz && w[i] > 0.f) {
        cum += w[i];
        tok = i;
        if (cum > target) break;
      }
    if (tok < 0)  // every weight is 0 (all logits -inf or NaN): fall back to greedy
      while (++tok < V - 1 && !(x[tok] == m)) {
      }
    lp = static_cast<float>(z[tok] - lseT);
  }
  float raw = static_cast<float>(x[tok] - lse1);
  // A NaN logit means the model is broken: say so in the log-probs (NaN weights are 0 above, so
  // the draw itself stays among the finite tokens) instead of returning plausible numbers.
  if (has_nan(x, V)) lp = raw = NAN;
  a.out_tokens.ptr<int64_t>()[r] = tok;
  a.out_logprobs.ptr<float>()[r] = lp;
  a.out_raw_logprobs.ptr<float>()[r] = raw;
}

}  // namespace

void check_sampling_params(const SampleArgs& a) {
  const int64_t R = a.logits.shape[0];
  const float* t = a.temperature.ptr<float>();
  const int32_t* k = a.top_k.ptr<int32_t>();
  const float* p = a.top_p.ptr<float>();
  const float* mp = a.min_p.ptr<float>();
  for (int64_t r = 0; r < R; ++r) {
    const std::string row = "[" + std::to_string(r) + "]";
    if (!(t[r] >= 0.f) || std::isinf(t[r]) || (t[r] > 0.f && t[r] < kMinTemperature))
      bad("sample: temperature" + row + " = " + std::to_string(t[r]) + "; expected 0 (greedy) or a finite value >= " +
          std::to_string(kMinTemperature) + " (logits / temperature must stay finite in float32)");
    if (k[r] < 0) bad("sample: top_k" + row + " = " + std::to_string(k[r]) + "; expected >= 0 (0 = off)");
    if (!(p[r] > 0.f && p[r] <= 1.f))
      bad("sample: top_p" + row + " = " + std::to_string(p[r]) + "; expected 0 < top_p <= 1 (1 = off)");
    if (!(mp[r] >= 0.f && mp[r] <= 1.f))
      bad("sample: min_p" + row + " = " + std::to_string(mp[r]) + "; expected 0 <= min_p <= 1 (0 = off)");
  }
}

void sample_cpu(const SampleArgs& a) {
  check_sampling_params(a);
  // A row is a few microseconds of vector work: claim several per task, so small batches
  // do not pay more in pool hand-offs than in sampling.
  const int64_t rows_per_task = std::max<int64_t>(1, 16384 / std::max<int64_t>(1, a.logits.shape[1]));
  parallel_for(a.logits.shape[0], [&](int64_t r) { sample_row(a, r); }, rows_per_task);
}

}  // namespace alignkit
