// CUDA sampling kernel: one thread block per logits row (rules in sampling.h).
//
// Thresholds are found without sorting: top-k and top-p each binary-search a 32-bit
// order-preserving key of z = logits / T (32 counting passes over the row), so the kept
// set is an upper set {z >= threshold} exactly as on the CPU. The draw is an inverse CDF
// over the kept tokens in token-id order, with the same counter-based uniform (rng.h).
#include <cuda_runtime.h>

#include <cmath>

#include "alignkit/rng.h"
#include "alignkit/sampling.h"
#include "cuda_common.cuh"

namespace alignkit {
namespace {

constexpr int kThreads = 256;

/// Order-preserving map float -> uint32 (larger float, larger key; NaN sorts high).
__device__ __forceinline__ uint32_t order_key(float f) {
  const uint32_t u = __float_as_uint(f);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

__global__ void sample_kernel(const float* logits, int64_t V, const float* temperature, const int32_t* top_k,
                              const float* top_p, const float* min_p, const int64_t* seeds,
                              const int64_t* sample_ids, const int64_t* positions, int64_t* out_tokens,
                              float* out_logprobs, float* out_raw_logprobs) {
  __shared__ float fbuf[kThreads];
  __shared__ double dbuf[kThreads];
  __shared__ unsigned long long ubuf[kThreads];
  __shared__ int64_t chosen;
  const int64_t r = blockIdx.x;
  const float* x = logits + r * V;
  const int tid = threadIdx.x;

  float m = -INFINITY;
  for (int64_t i = tid; i < V; i += blockDim.x) m = fmaxf(m, x[i]);
  m = cuda::block_max(m, fbuf);
  double s1 = 0.0;
  for (int64_t i = tid; i < V; i += blockDim.x) s1 += static_cast<double>(expf(x[i] - m));
  const double lse1 = m + log(cuda::block_sum(s1, dbuf));

  float T = temperature[r];
  if (!(T > 0.f) || isinf(T)) T = 0.f;  // invalid -> greedy (host checks are CPU-only)
  int64_t tok;
  float lp;
  if (T == 0.f) {
    // Lowest index holding the maximum: min over indices i with x[i] == m.
    unsigned long long best = ~0ull;
    for (int64_t i = tid; i < V; i += blockDim.x)
      if (x[i] == m && static_cast<unsigned long long>(i) < best) best = i;
    ubuf[tid] = best;
    __syncthreads();
    for (unsigned s = blockDim.x / 2; s > 0; s >>= 1) {
      if (tid < s && ubuf[tid + s] < ubuf[tid]) ubuf[tid] = ubuf[tid + s];
      __syncthreads();
    }
    tok = ubuf[0] == ~0ull ? 0 : static_cast<int64_t>(ubuf[0]);
    lp = static_cast<float>(x[tok] - lse1);
  } else {
    const float mz = m / T;
    double sT = 0.0;
    for (int64_t i = tid; i < V; i += blockDim.x) sT += static_cast<double>(expf(x[i] / T - mz));
    const double lseT = mz + log(cuda::block_sum(sT, dbuf));

    // Kept set = {i : key(z_i) >= kmin}.
    float tz = -INFINITY;
    const float mp = fminf(fmaxf(min_p[r], 0.f), 1.f);
    if (mp > 0.f) tz = static_cast<float>(mz + log(static_cast<double>(mp)));
    tz = fminf(tz, mz);
    uint32_t kmin = order_key(tz);
    const int64_t k = top_k[r];
    if (k > 0 && k < V) {
      // Largest key K with count(key >= K) >= k is the k-th largest kept key.
      int64_t have = 0;
      for (int64_t i = tid; i < V; i += blockDim.x) have += order_key(x[i] / T) >= kmin;
      if (cuda::block_sum(static_cast<double>(have), dbuf) > static_cast<double>(k)) {
        uint64_t lo = kmin, hi = 0xFFFFFFFFull;  // count(key >= lo) >= k
        while (lo < hi) {
          const uint64_t mid = (lo + hi + 1) / 2;
          int64_t c = 0;
          for (int64_t i = tid; i < V; i += blockDim.x) c += order_key(x[i] / T) >= mid;
          if (cuda::block_sum(static_cast<double>(c), dbuf) >= static_cast<double>(k)) lo = mid; else hi = mid - 1;
        }
        kmin = static_cast<uint32_t>(lo);
      }
    }
    const float p = fmaxf(top_p[r], 1e-30f);  // top_p <= 0 is invalid: keep the top level only
    if (p < 1.f) {
      double tot = 0.0;
      for (int64_t i = tid; i < V; i += blockDim.x) {
        const float z = x[i] / T;
        if (order_key(z) >= kmin) tot += static_cast<double>(expf(z - mz));
      }
      const double limit = static_cast<double>(p) * cuda::block_sum(tot, dbuf);
      // Smallest K with mass(kept, key > K) < limit; keep key >= K.
      uint64_t lo = kmin, hi = 0xFFFFFFFFull;
      while (lo < hi) {
        const uint64_t mid = (lo + hi) / 2;
        double mass = 0.0;
        for (int64_t i = tid; i < V; i += blockDim.x) {
          const float z = x[i] / T;
          const uint32_t key = order_key(z);
          if (key >= kmin && key > mid) mass += static_cast<double>(expf(z - mz));
        }
        if (cuda::block_sum(mass, dbuf) < limit) hi = mid; else lo = mid + 1;
      }
      kmin = static_cast<uint32_t>(lo);
    }

    // Inverse CDF in token-id order: thread t owns the contiguous chunk [t*chunk, (t+1)*chunk).
    const int64_t chunk = (V + blockDim.x - 1) / blockDim.x;
    const int64_t b = tid * chunk, e = min(V, b + chunk);
    double part = 0.0;
    int64_t last = -1;
    for (int64_t i = b; i < e; ++i) {
      const float z = x[i] / T;
      if (order_key(z) >= kmin) {
        part += static_cast<double>(expf(z - mz));
        last = i;
      }
    }
    dbuf[tid] = part;
    ubuf[tid] = static_cast<unsigned long long>(last + 1);  // 0 = none
    __syncthreads();
    if (tid == 0) {
      double total = 0.0;
      int64_t fallback = 0;
      for (unsigned t = 0; t < blockDim.x; ++t) {
        total += dbuf[t];
        if (ubuf[t]) fallback = static_cast<int64_t>(ubuf[t]) - 1;
      }
      const double target = counter_uniform(seeds[r], sample_ids[r], positions[r]) * total;
      int64_t pick = fallback;
      double cum = 0.0;
      for (unsigned t = 0; t < blockDim.x; ++t) {
        if (cum + dbuf[t] <= target) {
          cum += dbuf[t];
          continue;
        }
        // The crossing is in chunk t; if re-summing rounds differently, take its last kept token.
        const int64_t cb = t * chunk, ce = min(V, cb + chunk);
        pick = static_cast<int64_t>(ubuf[t]) - 1;
        for (int64_t i = cb; i < ce; ++i) {
          const float z = x[i] / T;
          if (order_key(z) < kmin) continue;
          cum += static_cast<double>(expf(z - mz));
          if (cum > target) {
            pick = i;
            break;
          }
        }
        break;
      }
      chosen = pick;
    }
    __syncthreads();
    tok = chosen;
    lp = static_cast<float>(static_cast<double>(x[tok] / T) - lseT);
  }
  if (tid == 0) {
    out_tokens[r] = tok;
    out_logprobs[r] = lp;
    out_raw_logprobs[r] = static_cast<float>(x[tok] - lse1);
  }
}

}  // namespace

void sample_cuda(const SampleArgs& a, uintptr_t stream) {
  cuda::DeviceGuard guard(a.logits.device_id);
  sample_kernel<<<static_cast<unsigned>(a.logits.shape[0]), kThreads, 0, cuda::as_stream(stream)>>>(
      a.logits.ptr<float>(), a.logits.shape[1], a.temperature.ptr<float>(), a.top_k.ptr<int32_t>(),
      a.top_p.ptr<float>(), a.min_p.ptr<float>(), a.seeds.ptr<int64_t>(), a.sample_ids.ptr<int64_t>(),
      a.positions.ptr<int64_t>(), a.out_tokens.ptr<int64_t>(), a.out_logprobs.ptr<float>(),
      a.out_raw_logprobs.ptr<float>());
  cuda::check(cudaGetLastError(), "sample launch");
}

}  // namespace alignkit
