// CPU linear layer with the weight stored [in, out] (transformers' Conv1D: GPT-2's attention and
// MLP projections), for sampler steps (see linear.h).
//
// Each output is one multiply-add chain over k in order, acc = x[m, k] * w[k, n] + acc from
// acc = 0, then + bias[n]: fused on the AVX2 and AVX-512 builds (which therefore agree bitwise),
// rounded twice on the baseline one. The weight's rows are contiguous in n, so vector lanes hold
// adjacent outputs of one input row and nothing is ever reduced across lanes; a row's result is
// bitwise the same whatever the other rows, the tile shapes, the vector width or the thread count.
#include <algorithm>

#include "alignkit/linear.h"
#include "alignkit/thread_pool.h"
#include "alignkit/vec.h"

namespace alignkit {
namespace {

#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wpsabi"

/// Register tile per vector width: MB input rows x NV vectors of outputs of accumulators, plus NV
/// weight vectors and one broadcast input element.
template <int W>
struct KnTile {
  static constexpr int MB = 6, NV = 2;  // 12 + 2 + 1 = 15 of 16 registers
};
template <>
struct KnTile<16> {
  static constexpr int MB = 6, NV = 4;  // 24 + 4 + 1 = 29 of 32
};

/// out[j, n .. n + NV * W) for MB input rows at x: the chains over k, then + bias.
template <int W, int MB, int NV>
__attribute__((always_inline)) inline void kn_tile(const float* __restrict x, const float* __restrict w, int64_t K,
                                                   int64_t N, const float* __restrict bias, float* out, int64_t n) {
  using V = typename Vec<W>::type;
  V acc[MB][NV];
#pragma GCC unroll 8
  for (int j = 0; j < MB; ++j)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) acc[j][v] = V{};
  for (int64_t k = 0; k < K; ++k) {
    V wv[NV];
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) wv[v] = loadv<W>(w + k * N + n + v * W);
#pragma GCC unroll 8
    for (int j = 0; j < MB; ++j) {
      // The element goes through a register before the broadcast: GCC 12 otherwise builds the
      // splat of a loaded scalar lane by lane (one masked broadcast per lane).
      float s = x[j * K + k];
      asm("" : "+x"(s));
      const V xb = s - V{};  // s - (+0) is exactly s: a plain broadcast
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) acc[j][v] = fmadd<W>(xb, wv[v], acc[j][v]);
    }
  }
  for (int j = 0; j < MB; ++j)
    for (int v = 0; v < NV; ++v) {
      V r = acc[j][v];
      if (bias) r += loadv<W>(bias + n + v * W);
      storev<W>(out + j * N + n + v * W, r);
    }
}

/// Columns [n, n + cols) (cols < W) for MB rows, one scalar chain each: the same operations as a lane.
template <int W, int MB>
__attribute__((always_inline)) inline void kn_columns(const float* x, const float* w, int64_t K, int64_t N,
                                                      const float* bias, float* out, int64_t n, int64_t cols) {
  for (int j = 0; j < MB; ++j)
    for (int64_t c = n; c < n + cols; ++c) {
      float acc = 0.f;
      for (int64_t k = 0; k < K; ++k) {
        acc = fmadd1<W>(x[j * K + k], w[k * N + c], acc);  // fused where the flavour fuses, as a lane
        // Keeps the chain scalar: GCC would otherwise vectorise it as an in-order reduction with
        // the products rounded first (vmulps, then vaddss), which no longer matches a vector lane.
        asm("" : "+x"(acc));
      }
      out[j * N + c] = bias ? acc + bias[c] : acc;
    }
}

/// Output columns [n0, n1) for MB input rows: whole tiles, then narrower ones, then single columns.
template <int W, int MB>
__attribute__((always_inline)) inline void kn_rows(const float* x, const float* w, int64_t K, int64_t N,
                                                   const float* bias, float* out, int64_t n0, int64_t n1) {
  constexpr int NV = KnTile<W>::NV;
  int64_t n = n0;
  for (; n + NV * W <= n1; n += NV * W) kn_tile<W, MB, NV>(x, w, K, N, bias, out, n);
  for (; n + W <= n1; n += W) kn_tile<W, MB, 1>(x, w, K, N, bias, out, n);
  if (n < n1) kn_columns<W, MB>(x, w, K, N, bias, out, n, n1 - n);
}

/// The last r (< MB) input rows, as one narrower tile.
template <int W, int MB>
__attribute__((always_inline)) inline void kn_row_tail(int64_t r, const float* x, const float* w, int64_t K,
                                                       int64_t N, const float* bias, float* out, int64_t n0,
                                                       int64_t n1) {
  if constexpr (MB > 1) {
    if (r == MB - 1) return kn_rows<W, MB - 1>(x, w, K, N, bias, out, n0, n1);
    kn_row_tail<W, MB - 1>(r, x, w, K, N, bias, out, n0, n1);
  }
}

/// Output columns [n0, n1) for all M input rows.
template <int W>
__attribute__((always_inline)) inline void kn_block(const float* x, const float* w, const float* bias, float* out,
                                                    int64_t M, int64_t N, int64_t K, int64_t n0, int64_t n1) {
  constexpr int MB = KnTile<W>::MB;
  int64_t m = 0;
  for (; m + MB <= M; m += MB) kn_rows<W, MB>(x + m * K, w, K, N, bias, out + m * N, n0, n1);
  if (m < M) kn_row_tail<W, MB>(M - m, x + m * K, w, K, N, bias, out + m * N, n0, n1);
}

#define ALIGNKIT_KN_ARGS \
  const float *x, const float *w, const float *bias, float *out, int64_t M, int64_t N, int64_t K, int64_t n0, int64_t n1
void kn_block_base(ALIGNKIT_KN_ARGS) { kn_block<4>(x, w, bias, out, M, N, K, n0, n1); }
#if ALIGNKIT_HAS_V3
ALIGNKIT_V3 void kn_block_v3(ALIGNKIT_KN_ARGS) { kn_block<8>(x, w, bias, out, M, N, K, n0, n1); }
ALIGNKIT_V4 void kn_block_v4(ALIGNKIT_KN_ARGS) { kn_block<16>(x, w, bias, out, M, N, K, n0, n1); }
#endif
#undef ALIGNKIT_KN_ARGS
#pragma GCC diagnostic pop

}  // namespace

void linear_kn_cpu(const Tensor& out, const Tensor& x, const Tensor& w, const Tensor* bias) {
  const int64_t M = x.shape[0], K = x.shape[1], N = w.shape[1];
  const float* wd = w.ptr<float>();
  const float* xd = x.ptr<float>();
  const float* bd = bias ? bias->ptr<float>() : nullptr;
  float* od = out.ptr<float>();
  const Isa isa = simd_isa();
  const int64_t cols = isa == Isa::avx512 ? KnTile<16>::NV * 16 : isa == Isa::avx2 ? KnTile<8>::NV * 8
                                                                                    : KnTile<4>::NV * 4;
  // Work item = a block of output columns (whole tiles, about four per thread) for every input
  // row: the item's slice of the weight is read from memory once and stays in L2 for the rows.
  parallel_blocks(N, cols, 0, M * N * K < kLinearSerialMacs, [&](int64_t n0, int64_t n1) {
#if ALIGNKIT_HAS_V3
    if (isa == Isa::avx512) return kn_block_v4(xd, wd, bd, od, M, N, K, n0, n1);
    if (isa == Isa::avx2) return kn_block_v3(xd, wd, bd, od, M, N, K, n0, n1);
#endif
    kn_block_base(xd, wd, bd, od, M, N, K, n0, n1);
  });
}

}  // namespace alignkit
