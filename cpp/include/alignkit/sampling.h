// Per-row token sampling with temperature, min-p, top-k and top-p.
//
// For each row r of logits [R, V] (fp32):
//   1. raw_logprob      = log_softmax(logits)[token]                  (temperature 1)
//   2. temperature T    : T == 0 -> greedy argmax (lowest id on ties); both reported
//                         log-probs are then the T=1 ones. Otherwise z = logits / T, with
//                         T >= kMinTemperature (smaller ones would overflow z to inf and
//                         make the log-probs NaN; the CPU binding rejects them).
//   3. logprob          = log_softmax(z)[token] over the FULL vocabulary (not renormalised
//                         after filtering: the quantity PPO/GRPO ratios use).
//   4. min-p (0 = off)  : keep tokens with p >= min_p * p_max.
//   5. top-k (0 = off)  : keep tokens whose z is >= the k-th largest kept z (ties at the
//                         boundary are all kept).
//   6. top-p (1 = off)  : on the kept, renormalised distribution, keep token i iff the mass
//                         of tokens strictly more probable than i is < top_p (the smallest
//                         set of probability levels reaching top_p; the argmax is always kept).
//   7. draw             : u = counter_uniform(seed, sample_id, position) (rng.h);
//                         inverse CDF over the kept tokens in token-id order.
// Tokens whose logit is -inf (or NaN) have probability 0 and are never drawn; a row with a NaN
// logit reports NaN log-probs (a broken model should not look healthy).
// Only the selection steps that are on are run: temperature-only and greedy rows never
// sort; top-k uses nth_element; top-p sorts a growing top slice, not the vocabulary.
#pragma once

#include <cstdint>

#include "alignkit/tensor.h"

namespace alignkit {

/// Smallest nonzero temperature: logits up to ~3e32 in magnitude keep z = logits / T finite.
constexpr float kMinTemperature = 1e-6f;

/// Arguments of one sample() call; every tensor has R rows (logits: [R, V]).
struct SampleArgs {
  Tensor logits, temperature, top_k, top_p, min_p, seeds, sample_ids, positions;
  Tensor out_tokens, out_logprobs, out_raw_logprobs;
};

/// Checks per-row parameters (T >= 0 finite, 0 <= top_k, 0 < top_p <= 1, 0 <= min_p <= 1)
/// on host tensors; throws std::invalid_argument naming the row.
void check_sampling_params(const SampleArgs& a);

/// CPU sampler (threaded over rows).
void sample_cpu(const SampleArgs& a);

#if defined(ALIGNKIT_WITH_CUDA)
/// CUDA sampler, one thread block per row; same rules and same RNG as the CPU one.
/// Parameter values are not checked (they live on the device): out-of-range values are
/// clamped to the nearest meaningful setting inside the kernel.
void sample_cuda(const SampleArgs& a, uintptr_t stream);
#endif

}  // namespace alignkit
