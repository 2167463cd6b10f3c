// Plain, Python-free views over DLPack memory handed in by the bindings.
//
// The bindings validate dtype/device/shape/contiguity once (bindings_validate.cpp) and
// hand kernels a `Tensor`: a raw pointer plus its dtype, device and row-major shape.
// Kernels never see Python objects and never allocate the caller's tensors.
#pragma once

#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>

#if defined(__CUDACC__)
#define AK_HD __host__ __device__ __forceinline__
#else
#define AK_HD inline
#endif

namespace alignkit {

enum class DType : int { F32 = 0, BF16 = 1, F16 = 2, I32 = 3, I64 = 4 };
enum class Device : int { CPU = 0, CUDA = 1 };

/// Human name of a dtype, used in error messages ("float32", "bfloat16", ...).
const char* dtype_name(DType t);

/// Bytes of one element of a dtype.
inline int64_t element_size(DType t) {
  return t == DType::I64 ? 8 : (t == DType::BF16 || t == DType::F16) ? 2 : 4;
}

/// A dense, row-major (C-contiguous) tensor view; at most 4 dimensions.
struct Tensor {
  void* data = nullptr;
  DType dtype = DType::F32;
  Device device = Device::CPU;
  int device_id = 0;
  int ndim = 0;
  int64_t shape[4] = {0, 0, 0, 0};

  /// Number of elements.
  int64_t numel() const {
    int64_t n = 1;
    for (int i = 0; i < ndim; ++i) n *= shape[i];
    return n;
  }
  /// Bytes spanned (the view is row-major and dense).
  int64_t nbytes() const { return numel() * element_size(dtype); }
  /// Size of dimension i (0 for dimensions beyond ndim).
  int64_t size(int i) const { return i < ndim ? shape[i] : 0; }
  /// Typed pointer to the first element.
  template <class T>
  T* ptr() const {
    return static_cast<T*>(data);
  }
};

// ---------------------------------------------------------------- 16-bit floats
// Conversions done in registers (bit manipulation), so kernels read bf16/fp16 caches
// and accumulate in fp32 without a temporary fp32 copy of the cache.

/// bfloat16 bits -> float (exact).
AK_HD float bf16_to_float(uint16_t h) {
  uint32_t u = static_cast<uint32_t>(h) << 16;
  float f;
  memcpy(&f, &u, 4);
  return f;
}

/// float -> bfloat16 bits, round to nearest even (NaN stays NaN).
AK_HD uint16_t float_to_bf16(float f) {
  uint32_t u;
  memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40u);
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}

/// IEEE half bits -> float (exact, handles subnormals/inf/nan).
AK_HD float f16_to_float(uint16_t h) {
  uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1fu;
  uint32_t man = h & 0x3ffu;
  uint32_t u;
  if (exp == 0x1fu) {
    u = sign | 0x7f800000u | (man << 13);
  } else if (exp != 0) {
    u = sign | ((exp + 112u) << 23) | (man << 13);
  } else if (man == 0) {
    u = sign;
  } else {  // subnormal: renormalise
    int e = -1;
    do {
      ++e;
      man <<= 1;
    } while ((man & 0x400u) == 0);
    u = sign | ((112u - static_cast<uint32_t>(e)) << 23) | ((man & 0x3ffu) << 13);
  }
  float f;
  memcpy(&f, &u, 4);
  return f;
}

/// float -> IEEE half bits, round to nearest even (overflow -> inf).
AK_HD uint16_t float_to_f16(float f) {
  uint32_t u;
  memcpy(&u, &f, 4);
  uint32_t sign = (u >> 16) & 0x8000u;
  uint32_t au = u & 0x7fffffffu;
  if (au > 0x7f800000u) return static_cast<uint16_t>(sign | 0x7e00u);  // NaN
  if (au >= 0x477ff000u) return static_cast<uint16_t>(sign | 0x7c00u);  // >= 65520 rounds to inf
  if (au < 0x38800000u) {  // result is subnormal (or zero) in half
    if (au < 0x33000000u) return static_cast<uint16_t>(sign);  // < 2^-25 -> 0
    uint32_t e = au >> 23;
    uint32_t man = (au & 0x7fffffu) | 0x800000u;
    uint32_t shift = 126u - e;  // 14 + (113 - e) - 1
    uint32_t half = man >> shift;
    uint32_t rem = man & ((1u << shift) - 1u);
    uint32_t mid = 1u << (shift - 1u);
    if (rem > mid || (rem == mid && (half & 1u))) ++half;
    return static_cast<uint16_t>(sign | half);
  }
  uint32_t h = ((au >> 13) - (112u << 10));
  uint32_t rem = au & 0x1fffu;
  if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) ++h;
  return static_cast<uint16_t>(sign | h);
}

/// Element type tags used by templated kernels: load to float / store from float.
struct F32T {
  using storage = float;
  static AK_HD float load(float x) { return x; }
  static AK_HD float store(float x) { return x; }
};
struct BF16T {
  using storage = uint16_t;
  static AK_HD float load(uint16_t x) { return bf16_to_float(x); }
  static AK_HD uint16_t store(float x) { return float_to_bf16(x); }
};
struct F16T {
  using storage = uint16_t;
  static AK_HD float load(uint16_t x) { return f16_to_float(x); }
  static AK_HD uint16_t store(float x) { return float_to_f16(x); }
};

/// Call f with the element tag of a floating dtype (CPU and CUDA kernels share it).
template <class F>
void dispatch_float(DType t, F&& f) {
  switch (t) {
    case DType::F32: f(F32T{}); break;
    case DType::BF16: f(BF16T{}); break;
    case DType::F16: f(F16T{}); break;
    default: throw std::invalid_argument("internal: kernels take float32/bfloat16/float16");
  }
}

}  // namespace alignkit
