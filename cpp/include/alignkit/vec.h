// W-lane float vectors (GCC/Clang vector extensions) shared by the CPU kernels.
//
// Kernels are built three times: W = 16 for AVX-512 (one zmm register, in functions marked
// ALIGNKIT_V4), W = 8 for AVX2+FMA (one ymm register, ALIGNKIT_V3) and W = 4 for baseline
// x86-64 (one SSE register), and one flavour is picked per process from the CPU (`simd_isa()`),
// so the wheel runs anywhere, uses the widest vectors the CPU has, and a result never depends
// on the thread count or batch composition (it may differ between flavours, i.e. machines).
// The helpers are always inlined, so no vector crosses a call boundary and GCC's ABI note about
// AVX-sized arguments does not apply.
#pragma once

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <string>

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#include <immintrin.h>  // declares the FMA builtins fmadd() below uses
#define ALIGNKIT_HAS_V3 1
#define ALIGNKIT_V3 __attribute__((target("arch=x86-64-v3")))
#define ALIGNKIT_V4 __attribute__((target("arch=x86-64-v4")))
#else
#define ALIGNKIT_HAS_V3 0
#define ALIGNKIT_V3
#define ALIGNKIT_V4
#endif

namespace alignkit {

/// The SIMD flavours of the CPU kernels, narrowest first.
enum class Isa : int { baseline = 0, avx2 = 1, avx512 = 2 };

inline const char* isa_name(Isa isa) {
  return isa == Isa::avx512 ? "avx512" : isa == Isa::avx2 ? "avx2" : "baseline";
}

/// The flavour this process runs: the widest the CPU supports (AVX-512 = x86-64-v4: F, BW, CD,
/// DQ, VL; AVX2 = x86-64-v3: AVX2, FMA, BMI1/2, F16C, MOVBE), capped by the environment variable
/// ALIGNKIT_ISA (baseline | avx2 | avx512, any case) so tests and users can ask for a narrower
/// one. Decided on first use; an unknown value throws std::invalid_argument (a Python ValueError).
inline Isa simd_isa() {
#if ALIGNKIT_HAS_V3
  static const Isa isa = [] {
    __builtin_cpu_init();  // GCC's rule: initialise the CPU model before __builtin_cpu_supports
    Isa best = Isa::baseline;
#if __GNUC__ >= 12  // the architecture levels the kernels are compiled for, exactly
    if (__builtin_cpu_supports("x86-64-v3")) best = Isa::avx2;
    if (__builtin_cpu_supports("x86-64-v4")) best = Isa::avx512;
#else
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("bmi2"))
      best = Isa::avx2;
    if (best == Isa::avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512cd") && __builtin_cpu_supports("avx512dq") &&
        __builtin_cpu_supports("avx512vl"))
      best = Isa::avx512;
#endif
    if (std::getenv("ALIGNKIT_NO_AVX2"))  // the switch of earlier versions: say what replaced it
      throw std::invalid_argument("ALIGNKIT_NO_AVX2 is no longer read: set ALIGNKIT_ISA=baseline instead");
    const char* cap = std::getenv("ALIGNKIT_ISA");
    if (!cap || !*cap) return best;
    std::string want(cap);
    for (char& c : want) c = static_cast<char>(c >= 'A' && c <= 'Z' ? c - 'A' + 'a' : c);
    Isa limit;
    if (want == "baseline") limit = Isa::baseline;
    else if (want == "avx2") limit = Isa::avx2;
    else if (want == "avx512") limit = Isa::avx512;
    else throw std::invalid_argument("ALIGNKIT_ISA='" + std::string(cap) + "' is not one of baseline, avx2, avx512 "
                                     "(unset it to use the widest SIMD this CPU has)");
    return static_cast<int>(limit) < static_cast<int>(best) ? limit : best;
  }();
  return isa;
#else
  return Isa::baseline;
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
/// a * b + c per lane, rounded once in the AVX2 and AVX-512 flavours (W = 8, 16), twice in the
/// baseline one (W = 4, no FMA). Spelled out instead of left to -ffp-contract: whether GCC fuses
/// a written a * b + c is a tuning decision (its FMA-chain avoidance, `avoid-fma-max-bits`, keeps
/// loop-carried chains unfused in some versions and tunings, for some shapes only), so two tile
/// shapes of one kernel could round differently and a row's result would depend on its batch.
/// The builtins are used rather than _mm256_fmadd_ps: those carry a target attribute and cannot
/// be inlined into these templates, which only the flavour's function gives a target.
template <int W>
__attribute__((always_inline)) inline typename Vec<W>::type fmadd(typename Vec<W>::type a, typename Vec<W>::type b,
                                                                  typename Vec<W>::type c) {
#if ALIGNKIT_HAS_V3
  if constexpr (W == 16)
    return __builtin_ia32_vfmaddps512_mask(a, b, c, static_cast<__mmask16>(-1), _MM_FROUND_CUR_DIRECTION);
  else if constexpr (W == 8) return __builtin_ia32_vfmaddps256(a, b, c);
  else
#endif
    return a * b + c;
}

/// The scalar twin of fmadd<W>: a * b + c as one lane of the W-wide flavour computes it.
template <int W>
__attribute__((always_inline)) inline float fmadd1(float a, float b, float c) {
  if constexpr (W >= 8) return __builtin_fmaf(a, b, c);  // one vfmadd in the FMA flavours' functions
  else return a * b + c;
}

template <int W>
__attribute__((always_inline)) inline float hsum(typename Vec<W>::type a) {
  v4 t;
  if constexpr (W == 16) {
    typename Vec<8>::type lo, hi;
    std::memcpy(&lo, &a, sizeof(lo));
    std::memcpy(&hi, reinterpret_cast<const char*>(&a) + sizeof(lo), sizeof(hi));
    return hsum<8>(lo + hi);
  } else if constexpr (W == 8) {
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
#define ALIGNKIT_SHUFFLE16(a, b, ...) __builtin_shufflevector(a, b, __VA_ARGS__)
#define ALIGNKIT_SHUFFLE8(a, b, ...) __builtin_shufflevector(a, b, __VA_ARGS__)
#define ALIGNKIT_SHUFFLE4(a, b, ...) __builtin_shufflevector(a, b, __VA_ARGS__)
#else
typedef int32_t mask16 __attribute__((vector_size(64)));
typedef int32_t mask8 __attribute__((vector_size(32)));
typedef int32_t mask4 __attribute__((vector_size(16)));
#define ALIGNKIT_SHUFFLE16(a, b, ...) __builtin_shuffle(a, b, mask16{__VA_ARGS__})
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
/// Every row is summed by the same tree whatever its place r (shuffles only route lanes), so a
/// row's sum does not depend on which other vectors share the call.
template <int W>
__attribute__((always_inline)) inline typename Vec<W>::type hsum_rows(const typename Vec<W>::type* a) {
  if constexpr (W == 16) {
    // Each level adds lane halves of two vectors and packs both results into one vector:
    // 16 rows x 16 lanes -> 8 x (2 rows x 8) -> 4 x (4 x 4) -> 2 x (8 x 2) -> 1 x (16 x 1).
    typename Vec<16>::type b[8], c[4], d[2];
    for (int i = 0; i < 8; ++i)
      b[i] = ALIGNKIT_SHUFFLE16(a[2 * i], a[2 * i + 1], 0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23) +
             ALIGNKIT_SHUFFLE16(a[2 * i], a[2 * i + 1], 8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31);
    for (int i = 0; i < 4; ++i)
      c[i] = ALIGNKIT_SHUFFLE16(b[2 * i], b[2 * i + 1], 0, 1, 2, 3, 8, 9, 10, 11, 16, 17, 18, 19, 24, 25, 26, 27) +
             ALIGNKIT_SHUFFLE16(b[2 * i], b[2 * i + 1], 4, 5, 6, 7, 12, 13, 14, 15, 20, 21, 22, 23, 28, 29, 30, 31);
    for (int i = 0; i < 2; ++i)
      d[i] = ALIGNKIT_SHUFFLE16(c[2 * i], c[2 * i + 1], 0, 1, 4, 5, 8, 9, 12, 13, 16, 17, 20, 21, 24, 25, 28, 29) +
             ALIGNKIT_SHUFFLE16(c[2 * i], c[2 * i + 1], 2, 3, 6, 7, 10, 11, 14, 15, 18, 19, 22, 23, 26, 27, 30, 31);
    return ALIGNKIT_SHUFFLE16(d[0], d[1], 0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30) +
           ALIGNKIT_SHUFFLE16(d[0], d[1], 1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
  } else if constexpr (W == 8) {
    auto u0 = hadd<8>(hadd<8>(a[0], a[1]), hadd<8>(a[2], a[3]));  // [r0..r3 low halves | r0..r3 high]
    auto u1 = hadd<8>(hadd<8>(a[4], a[5]), hadd<8>(a[6], a[7]));
    return ALIGNKIT_SHUFFLE8(u0, u1, 0, 1, 2, 3, 8, 9, 10, 11) + ALIGNKIT_SHUFFLE8(u0, u1, 4, 5, 6, 7, 12, 13, 14, 15);
  } else {
    return hadd<4>(hadd<4>(a[0], a[1]), hadd<4>(a[2], a[3]));
  }
}
#pragma GCC diagnostic pop

}  // namespace alignkit
