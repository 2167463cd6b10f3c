// Helpers the CPU kernels share so their hot loops vectorise without -ffast-math.
//
// ALIGNKIT_HOT compiles a function twice (AVX2+FMA and baseline x86-64; GCC picks one at load
// time), so the wheel runs on any x86-64 while current CPUs get 8-wide FMA. The choice is per
// machine, so results stay bitwise identical across thread counts and batch compositions.
#pragma once

#include <cstdint>
#include <cstring>

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define ALIGNKIT_HOT __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define ALIGNKIT_HOT
#endif

namespace alignkit {

/// exp(d) for d <= 0; exactly 0 for d <= -87 (where exp underflows anyway), -inf and NaN, so a
/// token with a -inf or NaN logit gets weight 0. A Cephes-style polynomial, about 1 ulp, written
/// with plain float/int ops so a loop calling it vectorises.
__attribute__((always_inline)) inline float exp_nonpos(float d) {
  // x = max(d, -87) computed on the bit pattern (d <= 0, so |d| decides); integer compares keep
  // the loop branch-free (-inf and NaN have the largest magnitudes' bit patterns).
  int32_t db;
  std::memcpy(&db, &d, sizeof(float));
  db &= 0x7fffffff;
  const int32_t xb = db < 0x42ae0000 ? db : 0x42ae0000;  // bits of 87.0f
  const int32_t keep = -static_cast<int32_t>(db < 0x42ae0000);  // all ones unless it underflows
  float x;
  std::memcpy(&x, &xb, sizeof(float));
  x = -x;
  const int32_t k = static_cast<int32_t>(x * 1.44269504088896341f - 0.5f);
  const float fk = static_cast<float>(k);
  float r = x - fk * 0.693359375f;
  r = r - fk * -2.12194440e-4f;
  float y = 1.9875691500e-4f;
  y = y * r + 1.3981999507e-3f;
  y = y * r + 8.3334519073e-3f;
  y = y * r + 4.1665795894e-2f;
  y = y * r + 1.6666665459e-1f;
  y = y * r + 5.0000001201e-1f;
  y = y * r * r + r + 1.0f;
  const int32_t bits = (k + 127) << 23;
  float two_k;
  std::memcpy(&two_k, &bits, sizeof(float));
  float e = y * two_k;
  int32_t eb;
  std::memcpy(&eb, &e, sizeof(float));
  eb &= keep;  // an integer mask, not a branch, so the loop still vectorises
  std::memcpy(&e, &eb, sizeof(float));
  return e;
}

/// max of x[0, n) (-inf if empty), with eight independent running maxima so the loop vectorises.
__attribute__((always_inline)) inline float row_max(const float* x, int64_t n) {
  float mx[8] = {-__builtin_inff(), -__builtin_inff(), -__builtin_inff(), -__builtin_inff(),
                 -__builtin_inff(), -__builtin_inff(), -__builtin_inff(), -__builtin_inff()};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (int l = 0; l < 8; ++l) mx[l] = x[i + l] > mx[l] ? x[i + l] : mx[l];
  float m = -__builtin_inff();
  for (int l = 0; l < 8; ++l) m = mx[l] > m ? mx[l] : m;
  for (; i < n; ++i) m = x[i] > m ? x[i] : m;
  return m;
}

}  // namespace alignkit
