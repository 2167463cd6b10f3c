// CPU linear layer for decode steps (see linear.h).
#include "alignkit/linear.h"

#include <algorithm>
#include <vector>

#include "alignkit/thread_pool.h"
#include "alignkit/vec.h"

namespace alignkit {
namespace {

#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wpsabi"

/// out[j, i] = x_j . w_i (+ b_i) for NB weight rows x MB input rows: NB * MB independent W-lane
/// accumulators over k (each weight vector loaded once for MB rows, each input vector once for
/// NB rows), the k tail as one more zero-padded vector step, then reduced W at a time by one fixed tree
/// (hsum_rows), then the bias.
/// Every output takes the same operations in the same order whatever NB, MB or its place.
template <int W, int NB, int MB>
__attribute__((always_inline)) inline void tile(const float* __restrict w, const float* __restrict x, int64_t K,
                                                const float* __restrict bias, float* out, int64_t N) {
  using V = typename Vec<W>::type;
  constexpr int T = NB * MB;
  V acc[T];
  for (int t = 0; t < T; ++t) acc[t] = V{};
  int64_t k = 0;
  for (; k + W <= K; k += W) {
    V xv[MB];
    for (int j = 0; j < MB; ++j) xv[j] = loadv<W>(x + j * K + k);
    for (int i = 0; i < NB; ++i) {
      V wv = loadv<W>(w + i * K + k);
      // Keep the weight vector in a register: otherwise GCC folds it into each of the MB FMAs
      // as a memory operand, loading it MB times and making the loop load-bound.
      asm("" : "+x"(wv));
      for (int j = 0; j < MB; ++j) acc[j * NB + i] = fmadd<W>(wv, xv[j], acc[j * NB + i]);
    }
  }
  if (k < K) {  // the k tail as one more zero-padded vector step: the same operations for every tile
    float xt[MB][W] = {}, wt[NB][W] = {};
    for (int j = 0; j < MB; ++j) std::copy(x + j * K + k, x + j * K + K, xt[j]);
    for (int i = 0; i < NB; ++i) std::copy(w + i * K + k, w + i * K + K, wt[i]);
    for (int i = 0; i < NB; ++i)
      for (int j = 0; j < MB; ++j) acc[j * NB + i] = fmadd<W>(loadv<W>(wt[i]), loadv<W>(xt[j]), acc[j * NB + i]);
  }
  constexpr int G = (T + W - 1) / W;
  float s[G * W];
  for (int g = 0; g < G; ++g) {
    V group[W];
    for (int r = 0; r < W; ++r) group[r] = g * W + r < T ? acc[g * W + r] : V{};
    storev<W>(s + g * W, hsum_rows<W>(group));
  }
  // Input-row-major accumulators: an output row's NB results are adjacent, stored as one run.
  for (int j = 0; j < MB; ++j)
    for (int i = 0; i < NB; ++i) out[j * N + i] = bias ? s[j * NB + i] + bias[i] : s[j * NB + i];
}

/// Register tile per vector width: NB weight rows x MB input rows of accumulators, plus MB input
/// vectors and one weight vector, within the register file (16 vector registers below AVX-512, 32 with it).
template <int W>
struct TileShape {
  static constexpr int NB = 4, MB = 3;  // 12 accumulators + 3 inputs + 1 weight = 16 registers
};
template <>
struct TileShape<16> {
  static constexpr int NB = 4, MB = 4;  // 16 accumulators: one reduction tree (hsum_rows) per tile
};
constexpr int64_t kChunkBytes = 24 * 1024;   // input rows per pass over an item's weight rows: half an L1
                                             // (at least 12 rows, so more for K > 512)
constexpr int64_t kItemBytes = 512 * 1024;   // weight rows per work item: a quarter of a 2 MB L2

/// The last r (< MB) input rows against NB weight rows, as one narrower tile.
template <int W, int NB, int MB>
__attribute__((always_inline)) inline void input_tail(int64_t r, const float* w, const float* x, int64_t K,
                                                      const float* bias, float* out, int64_t N) {
  if constexpr (MB > 1) {
    if (r == MB - 1) return tile<W, NB, MB - 1>(w, x, K, bias, out, N);
    input_tail<W, NB, MB - 1>(r, w, x, K, bias, out, N);
  }
}

/// NB weight rows (starting at w) against all M input rows.
template <int W, int NB>
__attribute__((always_inline)) inline void weight_rows(const float* w, const float* x, int64_t M, int64_t K,
                                                       const float* bias, float* out, int64_t N) {
  constexpr int MB = TileShape<W>::MB;
  int64_t m = 0;
  for (; m + MB <= M; m += MB) tile<W, NB, MB>(w, x + m * K, K, bias, out + m * N, N);
  if (m < M) input_tail<W, NB, MB>(M - m, w, x + m * K, K, bias, out + m * N, N);
}

/// The last n (< NB) weight rows of a block, as one narrower tile.
template <int W, int NB>
__attribute__((always_inline)) inline void weight_tail(int64_t n, const float* w, const float* x, int64_t M,
                                                       int64_t K, const float* bias, float* out, int64_t N) {
  if constexpr (NB > 1) {
    if (n == NB - 1) return weight_rows<W, NB - 1>(w, x, M, K, bias, out, N);
    weight_tail<W, NB - 1>(n, w, x, M, K, bias, out, N);
  }
}

/// Weight rows [n0, n1) against all input rows.
template <int W>
__attribute__((always_inline)) inline void weight_block(const float* w, const float* x, const float* bias,
                                                        float* out, int64_t M, int64_t N, int64_t K, int64_t n0,
                                                        int64_t n1) {
  constexpr int NB = TileShape<W>::NB;
  int64_t n = n0;
  for (; n + NB <= n1; n += NB) {
    // Few input rows leave the loads of each weight tile exposed: fetch the next tile meanwhile.
    const float* next = w + (n + NB) * K;
    const int64_t ahead = std::min<int64_t>(NB, n1 - n - NB) * K;
    for (int64_t o = 0; o < ahead; o += 16) __builtin_prefetch(next + o, 0, 3);
    weight_rows<W, NB>(w + n * K, x, M, K, bias ? bias + n : nullptr, out + n, N);
  }
  if (n < n1) weight_tail<W, NB>(n1 - n, w + n * K, x, M, K, bias ? bias + n : nullptr, out + n, N);
}

#define ALIGNKIT_LINEAR_ARGS \
  const float *w, const float *x, const float *bias, float *out, int64_t M, int64_t N, int64_t K, int64_t n0, int64_t n1
void weight_block_base(ALIGNKIT_LINEAR_ARGS) { weight_block<4>(w, x, bias, out, M, N, K, n0, n1); }
#if ALIGNKIT_HAS_V3
ALIGNKIT_V3 void weight_block_v3(ALIGNKIT_LINEAR_ARGS) { weight_block<8>(w, x, bias, out, M, N, K, n0, n1); }
ALIGNKIT_V4 void weight_block_v4(ALIGNKIT_LINEAR_ARGS) { weight_block<16>(w, x, bias, out, M, N, K, n0, n1); }
#endif
#undef ALIGNKIT_LINEAR_ARGS
#pragma GCC diagnostic pop

}  // namespace

void linear_cpu(const Tensor& out, const Tensor& x, const Tensor& w, const Tensor* bias) {
  linear_group_cpu(x, {LinearPart{&out, &w, bias}});
}

void linear_group_cpu(const Tensor& x, const std::vector<LinearPart>& parts) {
  const int64_t M = x.shape[0], K = x.shape[1];
  const float* xd = x.ptr<float>();
  // Work item = a block of one layer's weight rows against every input row, taken a chunk of
  // input rows at a time: the chunk stays in L1 while the item's weight rows stream past it, and
  // the item's rows (at most kItemBytes, so they stay in L2) come from memory once. Before, a chunk
  // was as large as half an L2 and every weight tile re-read the inputs from L2, which bounded the
  // kernel (~32 bytes a cycle) at ~165 GFLOP/s on two AVX-512 cores; now ~190. Each layer is cut
  // into whole tiles, and the blocks of all layers share one parallel region.
  const Isa isa = simd_isa();
  const int64_t NB = isa == Isa::avx512 ? TileShape<16>::NB
                     : isa == Isa::avx2 ? TileShape<8>::NB
                                        : TileShape<4>::NB;
  // A row's arithmetic does not depend on its chunk or tile. A chunk is a multiple of 12 rows so
  // that every flavour's input-row tile (3 or 4 rows) divides it: no tail tiles (speed only).
  const int64_t chunk_rows = std::max<int64_t>(12, (kChunkBytes / (4 * std::max<int64_t>(K, 1))) / 12 * 12);
  const int64_t max_rows = std::max<int64_t>(1, kItemBytes / (4 * std::max<int64_t>(K, 1)));
  struct Block {
    const LinearPart* part;
    int64_t n0, n1;
  };
  int64_t total_n = 0;
  for (const LinearPart& p : parts) total_n += p.weight->shape[0];
  if (M == 0 || total_n == 0) return;
  // Blocks as long as if the layers were one weight of total_n rows (a layer's last block may be
  // shorter): many small blocks would each re-read the input chunk from L2.
  const int64_t per = block_length(total_n, NB, max_rows);
  std::vector<Block> blocks;
  for (const LinearPart& p : parts)
    for (int64_t n0 = 0; n0 < p.weight->shape[0]; n0 += per)
      blocks.push_back({&p, n0, std::min(p.weight->shape[0], n0 + per)});
  const int64_t n_blocks = static_cast<int64_t>(blocks.size());
  parallel_for(n_blocks, [&](int64_t b) {
    const LinearPart& p = *blocks[b].part;
    const int64_t N = p.weight->shape[0], n0 = blocks[b].n0, n1 = blocks[b].n1;
    const float* wd = p.weight->ptr<float>();
    const float* bd = p.bias ? p.bias->ptr<float>() : nullptr;
    float* od = p.out->ptr<float>();
    for (int64_t m0 = 0; m0 < M; m0 += chunk_rows) {
      const int64_t rows = std::min(chunk_rows, M - m0);
#if ALIGNKIT_HAS_V3
      if (isa == Isa::avx512) {
        weight_block_v4(wd, xd + m0 * K, bd, od + m0 * N, rows, N, K, n0, n1);
        continue;
      }
      if (isa == Isa::avx2) {
        weight_block_v3(wd, xd + m0 * K, bd, od + m0 * N, rows, N, K, n0, n1);
        continue;
      }
#endif
      weight_block_base(wd, xd + m0 * K, bd, od + m0 * N, rows, N, K, n0, n1);
    }
  }, M * total_n * K < kLinearSerialMacs ? n_blocks : 1);
}

}  // namespace alignkit
