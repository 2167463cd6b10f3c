// Shared helpers of the CUDA kernels: error checks, device guard, block reductions.
#pragma once

#include <cuda_runtime.h>

#include <stdexcept>
#include <string>

#include "alignkit/tensor.h"

namespace alignkit {
namespace cuda {

/// Throws std::runtime_error naming `what` if a CUDA call failed (clears the error first).
inline void check(cudaError_t err, const char* what) {
  if (err != cudaSuccess) {
    cudaGetLastError();
    throw std::runtime_error(std::string(what) + ": " + cudaGetErrorString(err));
  }
}

/// Makes the tensors' device current for the scope (kernels launch on the caller's stream).
class DeviceGuard {
 public:
  explicit DeviceGuard(int device) {
    check(cudaGetDevice(&prev_), "cudaGetDevice");
    if (prev_ != device) check(cudaSetDevice(device), "cudaSetDevice");
    changed_ = prev_ != device;
  }
  ~DeviceGuard() {
    if (changed_) cudaSetDevice(prev_);
  }
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int prev_ = 0;
  bool changed_ = false;
};

inline cudaStream_t as_stream(uintptr_t s) { return reinterpret_cast<cudaStream_t>(s); }

/// Sum over the thread block (every thread gets the result). `buf` holds blockDim.x values.
template <class T>
__device__ T block_sum(T v, T* buf) {
  buf[threadIdx.x] = v;
  __syncthreads();
  for (unsigned s = blockDim.x / 2; s > 0; s >>= 1) {
    if (threadIdx.x < s) buf[threadIdx.x] += buf[threadIdx.x + s];
    __syncthreads();
  }
  T r = buf[0];
  __syncthreads();
  return r;
}

/// Max over the thread block (every thread gets the result).
template <class T>
__device__ T block_max(T v, T* buf) {
  buf[threadIdx.x] = v;
  __syncthreads();
  for (unsigned s = blockDim.x / 2; s > 0; s >>= 1) {
    if (threadIdx.x < s) buf[threadIdx.x] = buf[threadIdx.x] > buf[threadIdx.x + s] ? buf[threadIdx.x] : buf[threadIdx.x + s];
    __syncthreads();
  }
  T r = buf[0];
  __syncthreads();
  return r;
}


}  // namespace cuda
}  // namespace alignkit
