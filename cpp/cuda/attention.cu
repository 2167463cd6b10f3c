// CUDA paged KV-cache kernels (semantics in attention.h).
//
// Index arrays live on the device, so instead of host-side checks every kernel guards its
// indices: an out-of-range slot is skipped, an out-of-range block id contributes no key,
// an inconsistent query_start_loc/context_lens entry yields zeros. Nothing reads out of bounds.
#include <cuda_runtime.h>

#include <cmath>

#include "alignkit/attention.h"
#include "cuda_common.cuh"

namespace alignkit {
namespace {

constexpr int kThreads = 128;
constexpr int kMaxHeadDim = 512;  // accumulators per thread: kMaxHeadDim / kThreads

template <class E>
__global__ void write_kv_kernel(typename E::storage* kc, typename E::storage* vc, const typename E::storage* k,
                                const typename E::storage* v, const int64_t* slots, int64_t row, int64_t num_slots) {
  const int64_t t = blockIdx.x;
  const int64_t slot = slots[t];
  if (slot < 0 || slot >= num_slots) return;
  for (int64_t j = threadIdx.x; j < row; j += blockDim.x) {
    kc[slot * row + j] = k[t * row + j];
    vc[slot * row + j] = v[t * row + j];
  }
}

__global__ void copy_blocks_kernel(char* kc, char* vc, const int64_t* src, const int64_t* dst, int64_t bytes,
                                   int64_t num_blocks) {
  const int64_t i = blockIdx.x;
  const int64_t s = src[i], d = dst[i];
  if (s < 0 || s >= num_blocks || d < 0 || d >= num_blocks || s == d) return;
  for (int64_t j = static_cast<int64_t>(blockIdx.y) * blockDim.x + threadIdx.x; j < bytes;
       j += static_cast<int64_t>(gridDim.y) * blockDim.x) {
    kc[d * bytes + j] = kc[s * bytes + j];
    vc[d * bytes + j] = vc[s * bytes + j];
  }
}

/// One thread block per (query token, q head); keys in tiles of blockDim.x with an online softmax.
template <class E>
__global__ void paged_attention_kernel(typename E::storage* out, const typename E::storage* q,
                                       const typename E::storage* kc, const typename E::storage* vc,
                                       const int32_t* block_tables, const int32_t* context_lens,
                                       const int32_t* qsl, int64_t num_seqs, int64_t max_blocks, int64_t num_blocks,
                                       int64_t block_size, int64_t hq, int64_t hk, int64_t d, float scale) {
  __shared__ float qs[kMaxHeadDim];
  __shared__ float w[kThreads];
  __shared__ float red[kThreads];
  const int64_t t = blockIdx.x, h = blockIdx.y, kh = h / (hq / hk);
  typename E::storage* orow = out + (t * hq + h) * d;

  // Sequence of token t: last s with qsl[s] <= t (binary search over num_seqs + 1 entries).
  int64_t lo = 0, hi = num_seqs;
  while (hi - lo > 1) {
    const int64_t mid = (lo + hi) / 2;
    if (qsl[mid] <= t) lo = mid; else hi = mid;
  }
  const int64_t s = lo;
  const int64_t qlen = static_cast<int64_t>(qsl[s + 1]) - qsl[s];
  const int64_t pos = static_cast<int64_t>(context_lens[s]) - qlen + (t - qsl[s]);
  if (t < qsl[s] || t >= qsl[s + 1] || pos < 0 || pos >= max_blocks * block_size) {
    for (int64_t j = threadIdx.x; j < d; j += blockDim.x) orow[j] = E::store(0.f);
    return;
  }
  for (int64_t j = threadIdx.x; j < d; j += blockDim.x) qs[j] = E::load(q[(t * hq + h) * d + j]) * scale;
  __syncthreads();

  const int32_t* table = block_tables + s * max_blocks;
  float acc[kMaxHeadDim / kThreads];
  for (int i = 0; i < kMaxHeadDim / kThreads; ++i) acc[i] = 0.f;
  float m = -INFINITY, l = 0.f;
  const int64_t n = pos + 1;
  for (int64_t tile = 0; tile < n; tile += blockDim.x) {
    const int64_t p = tile + threadIdx.x;
    float score = -INFINITY;
    if (p < n) {
      const int64_t blk = table[p / block_size];
      if (blk >= 0 && blk < num_blocks) {
        const typename E::storage* kr = kc + ((blk * block_size + p % block_size) * hk + kh) * d;
        float dot = 0.f;
        for (int64_t j = 0; j < d; ++j) dot += qs[j] * E::load(kr[j]);
        score = dot;
      }
    }
    const float m_new = fmaxf(m, cuda::block_max(score, red));
    if (m_new == -INFINITY) continue;  // nothing valid yet
    const float alpha = expf(m - m_new);  // m = -inf -> 0
    const float e = score == -INFINITY ? 0.f : expf(score - m_new);
    l = l * alpha + cuda::block_sum(e, red);
    w[threadIdx.x] = e;
    __syncthreads();
    const int64_t tile_n = min(static_cast<int64_t>(blockDim.x), n - tile);
    for (int i = 0; i * blockDim.x + threadIdx.x < d; ++i) {
      const int64_t j = i * blockDim.x + threadIdx.x;
      float a = acc[i] * alpha;
      for (int64_t x = 0; x < tile_n; ++x) {
        if (w[x] == 0.f) continue;
        const int64_t pp = tile + x;
        const int64_t blk = table[pp / block_size];
        a += w[x] * E::load(vc[((blk * block_size + pp % block_size) * hk + kh) * d + j]);
      }
      acc[i] = a;
    }
    m = m_new;
    __syncthreads();
  }
  const float inv = l > 0.f ? 1.f / l : 0.f;
  for (int i = 0; i * blockDim.x + threadIdx.x < d; ++i) orow[i * blockDim.x + threadIdx.x] = E::store(acc[i] * inv);
}

}  // namespace

void check_cuda_pointer(const void* ptr, const char* name) {
  int count = 0;
  cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess || count == 0) {
    cudaGetLastError();
    throw std::runtime_error(std::string(name) + " is a CUDA tensor but no CUDA device is usable (" +
                             (err != cudaSuccess ? cudaGetErrorString(err) : "no devices") + ")");
  }
  cudaPointerAttributes attr{};
  err = cudaPointerGetAttributes(&attr, ptr);
  if (err != cudaSuccess || (attr.type != cudaMemoryTypeDevice && attr.type != cudaMemoryTypeManaged)) {
    cudaGetLastError();
    throw std::invalid_argument(std::string(name) + " claims to be on a CUDA device but its memory is not "
                                "device memory");
  }
}

void write_kv_cuda(const Tensor& k_cache, const Tensor& v_cache, const Tensor& k, const Tensor& v,
                   const Tensor& slot_mapping, uintptr_t stream) {
  cuda::DeviceGuard guard(k.device_id);
  const int64_t row = k_cache.shape[2] * k_cache.shape[3];
  const int64_t num_slots = k_cache.shape[0] * k_cache.shape[1];
  alignkit::dispatch_float(k.dtype, [&](auto tag) {
    using E = decltype(tag);
    using S = typename E::storage;
    write_kv_kernel<E><<<static_cast<unsigned>(k.shape[0]), 128, 0, cuda::as_stream(stream)>>>(
        k_cache.ptr<S>(), v_cache.ptr<S>(), k.ptr<S>(), v.ptr<S>(), slot_mapping.ptr<int64_t>(), row, num_slots);
  });
  cuda::check(cudaGetLastError(), "write_kv launch");
}

void copy_blocks_cuda(const Tensor& k_cache, const Tensor& v_cache, const Tensor& src, const Tensor& dst,
                      uintptr_t stream) {
  cuda::DeviceGuard guard(k_cache.device_id);
  const int64_t bytes = k_cache.shape[1] * k_cache.shape[2] * k_cache.shape[3] * element_size(k_cache.dtype);
  const unsigned chunks = static_cast<unsigned>(std::min<int64_t>(64, (bytes + 255) / 256));
  copy_blocks_kernel<<<dim3(static_cast<unsigned>(src.shape[0]), chunks), 256, 0, cuda::as_stream(stream)>>>(
      k_cache.ptr<char>(), v_cache.ptr<char>(), src.ptr<int64_t>(), dst.ptr<int64_t>(), bytes, k_cache.shape[0]);
  cuda::check(cudaGetLastError(), "copy_blocks launch");
}

void paged_attention_cuda(const Tensor& out, const Tensor& q, const Tensor& k_cache, const Tensor& v_cache,
                          const Tensor& block_tables, const Tensor& context_lens, const Tensor& query_start_loc,
                          float scale, uintptr_t stream) {
  if (q.shape[2] > kMaxHeadDim)
    throw std::invalid_argument("paged_attention (CUDA): head_dim " + std::to_string(q.shape[2]) +
                                " exceeds the supported maximum " + std::to_string(kMaxHeadDim));
  if (block_tables.shape[0] == 0) return;
  cuda::DeviceGuard guard(q.device_id);
  const dim3 grid(static_cast<unsigned>(q.shape[0]), static_cast<unsigned>(q.shape[1]));
  alignkit::dispatch_float(q.dtype, [&](auto tag) {
    using E = decltype(tag);
    using S = typename E::storage;
    paged_attention_kernel<E><<<grid, kThreads, 0, cuda::as_stream(stream)>>>(
        out.ptr<S>(), q.ptr<S>(), k_cache.ptr<S>(), v_cache.ptr<S>(), block_tables.ptr<int32_t>(),
        context_lens.ptr<int32_t>(), query_start_loc.ptr<int32_t>(), block_tables.shape[0], block_tables.shape[1],
        k_cache.shape[0], k_cache.shape[1], q.shape[1], k_cache.shape[2], q.shape[2], scale);
  });
  cuda::check(cudaGetLastError(), "paged_attention launch");
}

}  // namespace alignkit
