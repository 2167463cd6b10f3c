// W-lane float vectors (GCC/Clang vector extensions) shared by the CPU kernels.
//
// Kernels are built twice: W = 8 for AVX2+FMA (one ymm register, in functions marked
// ALIGNKIT_V3) and W = 4 for baseline x86-64 (one SSE register), and one flavour is picked per
// process from the CPU (`use_avx2()`), so the wheel runs anywhere and a result never depends on
// the thread count or batch composition. The helpers are always inlined, so no vector crosses a
// call boundary and GCC's ABI note about AVX-sized arguments does not apply.
#pragma once

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define ALIGNKIT_HAS_V3 1
#define ALIGNKIT_V3 __attribute__((target("arch=x86-64-v3")))
#else
#define ALIGNKIT_HAS_V3 0
#define ALIGNKIT_V3
#endif

namespace alignkit {

/// Whether this process runs the 8-wide AVX2+FMA kernels (decided once; ALIGNKIT_NO_AVX2=1 forces
/// the baseline ones, so tests can check them on an AVX2 machine).
inline bool use_avx2() {
#if ALIGNKIT_HAS_V3
  static const bool on = [] {
    __builtin_cpu_init();  // GCC's rule: initialise the CPU model before __builtin_cpu_supports
    const char* off = std::getenv("ALIGNKIT_NO_AVX2");
    if (off && *off && std::string(off) != "0") return false;
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  }();
  return on;
#else
  return false;
#endif
}

#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wpsabi"
template <int W>
struct Vec {
  typedef float type __attribute__((vector_size(4 * W)));
};
typedef Vec<4>::type v4;

template <int W>
__attribute__((always_inline)) inline typename Vec<W>::type loadv(const float* p) {
  typename Vec<W>::type v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}
template <int W>
__attribute__((always_inline)) inline void storev(float* p, typename Vec<W>::type v) {
  std::memcpy(p, &v, sizeof(v));
}
template <int W>
__attribute__((always_inline)) inline float hsum(typename Vec<W>::type a) {
  v4 t;
  if constexpr (W == 8) {
    v4 lo, hi;
    std::memcpy(&lo, &a, sizeof(lo));
    std::memcpy(&hi, reinterpret_cast<const char*>(&a) + sizeof(lo), sizeof(hi));
    t = lo + hi;
  } else {
    t = a;
  }
  return (t[0] + t[2]) + (t[1] + t[3]);
}

// Two-vector lane shuffles with constant indices: Clang spells it __builtin_shufflevector, GCC
// (any version since 4.7; __builtin_shufflevector only from GCC 12) __builtin_shuffle with a mask.
#if defined(__clang__)
#define ALIGNKIT_SHUFFLE8(a, b, ...) __builtin_shufflevector(a, b, __VA_ARGS__)
#define ALIGNKIT_SHUFFLE4(a, b, ...) __builtin_shufflevector(a, b, __VA_ARGS__)
#else
typedef int32_t mask8 __attribute__((vector_size(32)));
typedef int32_t mask4 __attribute__((vector_size(16)));
#define ALIGNKIT_SHUFFLE8(a, b, ...) __builtin_shuffle(a, b, mask8{__VA_ARGS__})
#define ALIGNKIT_SHUFFLE4(a, b, ...) __builtin_shuffle(a, b, mask4{__VA_ARGS__})
#endif

/// Pairwise sums of adjacent lanes of a and b, interleaved per 4-lane half: SSE3/AVX `hadd`.
template <int W>
__attribute__((always_inline)) inline typename Vec<W>::type hadd(typename Vec<W>::type a, typename Vec<W>::type b) {
  if constexpr (W == 8) {
    return ALIGNKIT_SHUFFLE8(a, b, 0, 2, 8, 10, 4, 6, 12, 14) + ALIGNKIT_SHUFFLE8(a, b, 1, 3, 9, 11, 5, 7, 13, 15);
  } else {
    return ALIGNKIT_SHUFFLE4(a, b, 0, 2, 4, 6) + ALIGNKIT_SHUFFLE4(a, b, 1, 3, 5, 7);
  }
}

/// Horizontal sums of W vectors at once: lane r of the result = sum of the lanes of a[r].
template <int W>
__attribute__((always_inline)) inline typename Vec<W>::type hsum_rows(const typename Vec<W>::type* a) {
  if constexpr (W == 8) {
    auto u0 = hadd<8>(hadd<8>(a[0], a[1]), hadd<8>(a[2], a[3]));  // [r0..r3 low halves | r0..r3 high]
    auto u1 = hadd<8>(hadd<8>(a[4], a[5]), hadd<8>(a[6], a[7]));
    return ALIGNKIT_SHUFFLE8(u0, u1, 0, 1, 2, 3, 8, 9, 10, 11) + ALIGNKIT_SHUFFLE8(u0, u1, 4, 5, 6, 7, 12, 13, 14, 15);
  } else {
    return hadd<4>(hadd<4>(a[0], a[1]), hadd<4>(a[2], a[3]));
  }
}
#pragma GCC diagnostic pop

}  // namespace alignkit
