// CPU paged KV-cache kernels (see attention.h for layouts and semantics).
#include "alignkit/attention.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <type_traits>
#include <cmath>
#include <string>
#include <vector>

#include "alignkit/simd.h"
#include "alignkit/vec.h"
#include "alignkit/thread_pool.h"

namespace alignkit {
namespace {

[[noreturn]] void bad(const std::string& msg) { throw std::invalid_argument(msg); }

/// Dot product with 8 independent accumulators so -O3 vectorises it without -ffast-math.
inline float dot(const float* a, const float* b, int64_t d) {
  float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t j = 0;
  for (; j + 8 <= d; j += 8)
    for (int l = 0; l < 8; ++l) acc[l] += a[j + l] * b[j + l];
  float s = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
  for (; j < d; ++j) s += a[j] * b[j];
  return s;
}

#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wpsabi"
/// Scores of `rows` consecutive keys (row stride `ks` floats) for every q head of the item:
/// scores[h * n + p0 + r] = q_h . k_r, q head h reading kv head h / G of the row segment.
/// DC > 0 (a multiple of 32: whole vectors of every width) fixes head_dim at compile time; DC == 0
/// reads it from D.
/// W keys at a time, each with its own accumulator, reduced together (hsum_rows): the dot
/// products are independent chains instead of one latency-bound chain plus a reduction per key.
/// A key's rounding depends on its place in the block and on how many of the block's rows the
/// query sees (a full group of W or the tail), so on the query's position: never on the batch.
template <int DC, int W>
__attribute__((always_inline)) inline void block_scores_t(const float* __restrict qf, const float* __restrict k,
                                                          int64_t ks, int64_t rows, int64_t HKi, int64_t G,
                                                          int64_t D_, float* __restrict scores, int64_t n,
                                                          int64_t p0) {
  using V = typename Vec<W>::type;
  static_assert(DC % 32 == 0, "specialised head dims are whole 32-lane slices");
  const int64_t D = DC > 0 ? DC : D_;
  for (int64_t kv = 0; kv < HKi; ++kv) {
    const float* kh = k + kv * D;
    for (int64_t g = 0; g < G; ++g) {
      const int64_t h = kv * G + g;
      const float* qh = qf + h * D;
      float* sc = scores + h * n + p0;
      int64_t r = 0;
      if constexpr (DC > 0) {
        V qv[DC / W];
        for (int i = 0; i < DC / W; ++i) qv[i] = loadv<W>(qh + W * i);
        for (; r + W <= rows; r += W) {
          V acc[W];
          for (int j = 0; j < W; ++j) acc[j] = qv[0] * loadv<W>(kh + (r + j) * ks);
          for (int i = 1; i < DC / W; ++i)
            for (int j = 0; j < W; ++j) acc[j] += qv[i] * loadv<W>(kh + (r + j) * ks + W * i);
          storev<W>(sc + r, hsum_rows<W>(acc));
        }
        for (; r < rows; ++r) {  // the tail of a partly filled block
          V acc = qv[0] * loadv<W>(kh + r * ks);
          for (int i = 1; i < DC / W; ++i) acc += qv[i] * loadv<W>(kh + r * ks + W * i);
          sc[r] = hsum<W>(acc);
        }
      } else {
        for (; r < rows; ++r) sc[r] = dot(qh, kh + r * ks, D);
      }
    }
  }
}

/// acc_h += sum_r w[h, p0 + r] * v_r over `rows` consecutive value rows (row stride `vs`).
/// Two q heads of a kv head and 32 lanes of head_dim at a time: each value row is loaded once
/// for both heads and eight accumulators stay in registers. Per lane the rows are added in
/// order, as a plain loop would.
template <int DC, int W>
__attribute__((always_inline)) inline void block_accumulate_t(float* __restrict acc, const float* __restrict w,
                                                              int64_t n, int64_t p0, const float* __restrict v,
                                                              int64_t vs, int64_t rows, int64_t HKi, int64_t G,
                                                              int64_t D_) {
  using V = typename Vec<W>::type;
  static_assert(DC % 32 == 0, "specialised head dims are whole 32-lane slices");
  const int64_t D = DC > 0 ? DC : D_;
  for (int64_t kv = 0; kv < HKi; ++kv) {
    const float* vh = v + kv * D;
    if constexpr (DC > 0) {
      constexpr int C = 32 / W;  // vectors per 32-lane slice of head_dim
      for (int64_t g = 0; g < G; g += 2) {
        const bool two = g + 1 < G;
        const int64_t h = kv * G + g;
        const float* w0 = w + h * n + p0;
        const float* w1 = two ? w0 + n : w0;
        for (int d0 = 0; d0 < DC; d0 += 32) {
          V a0[C], a1[C];
          for (int i = 0; i < C; ++i) {
            a0[i] = loadv<W>(acc + h * DC + d0 + W * i);
            a1[i] = two ? loadv<W>(acc + (h + 1) * DC + d0 + W * i) : a0[i];
          }
          for (int64_t r = 0; r < rows; ++r) {
            const float wt0 = w0[r], wt1 = w1[r];
            const float* x = vh + r * vs + d0;
            for (int i = 0; i < C; ++i) {
              const V xv = loadv<W>(x + W * i);
              a0[i] += wt0 * xv;
              a1[i] += wt1 * xv;
            }
          }
          for (int i = 0; i < C; ++i) {
            storev<W>(acc + h * DC + d0 + W * i, a0[i]);
            if (two) storev<W>(acc + (h + 1) * DC + d0 + W * i, a1[i]);
          }
        }
      }
    } else {
      for (int64_t g = 0; g < G; ++g) {
        const int64_t h = kv * G + g;
        const float* wh = w + h * n + p0;
        float* a = acc + h * D;
        for (int64_t r = 0; r < rows; ++r) {
          const float wt = wh[r];
          const float* x = vh + r * vs;
          for (int64_t j = 0; j < D; ++j) a[j] += wt * x[j];
        }
      }
    }
  }
}

#define ALIGNKIT_BLOCK_ARGS_S                                                                                  \
  const float *qf, const float *k, int64_t ks, int64_t rows, int64_t HKi, int64_t G, int64_t D, float *scores, \
      int64_t n, int64_t p0
#define ALIGNKIT_BLOCK_ARGS_A                                                                               \
  float *acc, const float *w, int64_t n, int64_t p0, const float *v, int64_t vs, int64_t rows, int64_t HKi, \
      int64_t G, int64_t D

template <int DC>
void block_scores_base(ALIGNKIT_BLOCK_ARGS_S) { block_scores_t<DC, 4>(qf, k, ks, rows, HKi, G, D, scores, n, p0); }
template <int DC>
void block_accumulate_base(ALIGNKIT_BLOCK_ARGS_A) {
  block_accumulate_t<DC, 4>(acc, w, n, p0, v, vs, rows, HKi, G, D);
}
#if ALIGNKIT_HAS_V3
template <int DC>
ALIGNKIT_V3 void block_scores_v3(ALIGNKIT_BLOCK_ARGS_S) {
  block_scores_t<DC, 8>(qf, k, ks, rows, HKi, G, D, scores, n, p0);
}
template <int DC>
ALIGNKIT_V3 void block_accumulate_v3(ALIGNKIT_BLOCK_ARGS_A) {
  block_accumulate_t<DC, 8>(acc, w, n, p0, v, vs, rows, HKi, G, D);
}
template <int DC>
ALIGNKIT_V4 void block_scores_v4(ALIGNKIT_BLOCK_ARGS_S) {
  block_scores_t<DC, 16>(qf, k, ks, rows, HKi, G, D, scores, n, p0);
}
template <int DC>
ALIGNKIT_V4 void block_accumulate_v4(ALIGNKIT_BLOCK_ARGS_A) {
  block_accumulate_t<DC, 16>(acc, w, n, p0, v, vs, rows, HKi, G, D);
}
#endif

/// Scores for one block of keys, on the widest SIMD the CPU offers.
template <int DC>
inline void block_scores(ALIGNKIT_BLOCK_ARGS_S) {
#if ALIGNKIT_HAS_V3
  if (simd_isa() == Isa::avx512) return block_scores_v4<DC>(qf, k, ks, rows, HKi, G, D, scores, n, p0);
  if (simd_isa() == Isa::avx2) return block_scores_v3<DC>(qf, k, ks, rows, HKi, G, D, scores, n, p0);
#endif
  block_scores_base<DC>(qf, k, ks, rows, HKi, G, D, scores, n, p0);
}
/// Value accumulation for one block, on the widest SIMD the CPU offers.
template <int DC>
inline void block_accumulate(ALIGNKIT_BLOCK_ARGS_A) {
#if ALIGNKIT_HAS_V3
  if (simd_isa() == Isa::avx512) return block_accumulate_v4<DC>(acc, w, n, p0, v, vs, rows, HKi, G, D);
  if (simd_isa() == Isa::avx2) return block_accumulate_v3<DC>(acc, w, n, p0, v, vs, rows, HKi, G, D);
#endif
  block_accumulate_base<DC>(acc, w, n, p0, v, vs, rows, HKi, G, D);
}
#undef ALIGNKIT_BLOCK_ARGS_S
#undef ALIGNKIT_BLOCK_ARGS_A
#pragma GCC diagnostic pop

/// Calls f(std::integral_constant<int, DC>) with DC = head_dim for common sizes, 0 otherwise.
template <class F>
inline void dispatch_dim(int64_t D, F&& f) {
  switch (D) {
    case 32: f(std::integral_constant<int, 32>{}); break;
    case 64: f(std::integral_constant<int, 64>{}); break;
    case 128: f(std::integral_constant<int, 128>{}); break;
    default: f(std::integral_constant<int, 0>{}); break;
  }
}

/// In place sc[p] = exp(sc[p] - max) over each of the H rows of length n, and inv[h] = 1 / the
/// row's sum (applied to the output, not the weights); exp_nonpos vectorises (simd.h).
ALIGNKIT_HOT void softmax_rows(float* scores, int64_t H, int64_t n, float* inv) {
  for (int64_t h = 0; h < H; ++h) {
    float* sc = scores + h * n;
    const float m = row_max(sc, n);
    for (int64_t p = 0; p < n; ++p) sc[p] = exp_nonpos(sc[p] - m);
    int64_t p = 0;
    float part[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    for (; p + 8 <= n; p += 8)
      for (int l = 0; l < 8; ++l) part[l] += sc[p + l];
    float sum = ((part[0] + part[1]) + (part[2] + part[3])) + ((part[4] + part[5]) + (part[6] + part[7]));
    for (; p < n; ++p) sum += sc[p];
    inv[h] = 1.f / sum;
  }
}

template <class E>
void write_kv_impl(const Tensor& kc, const Tensor& vc, const Tensor& k, const Tensor& v, const int64_t* slots) {
  using S = typename E::storage;
  const int64_t row = kc.shape[2] * kc.shape[3];  // one token's [num_kv_heads, head_dim]
  const int64_t n = k.shape[0];
  S* kd = kc.ptr<S>();
  S* vd = vc.ptr<S>();
  const S* ks = k.ptr<S>();
  const S* vs = v.ptr<S>();
  parallel_for(n, [&](int64_t t) {
    int64_t slot = slots[t];
    if (slot < 0) return;
    std::copy(ks + t * row, ks + (t + 1) * row, kd + slot * row);
    std::copy(vs + t * row, vs + (t + 1) * row, vd + slot * row);
  }, 64);
}

/// Rows [r0, r0 + rows) of one cache block's head segment as fp32 with row stride *stride:
/// fp32 caches are read in place, 16-bit ones are converted into buf.
template <class E>
inline const float* block_rows(const typename E::storage* base, int64_t row_elems, int64_t seg, int64_t rows,
                               float* buf, int64_t* stride) {
  if constexpr (std::is_same<E, F32T>::value) {
    *stride = row_elems;
    return base;
  } else {
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t j = 0; j < seg; ++j) buf[r * seg + j] = E::load(base[r * row_elems + j]);
    *stride = seg;
    return buf;
  }
}

constexpr int64_t kSetScratchFloats = 1 << 20;  // 4 MB of scratch per set at most

template <class E>
void attention_impl(const Tensor& out, const Tensor& q, const Tensor& kc, const Tensor& vc, const Tensor& bt,
                    const Tensor& ctx, const Tensor& qsl, float scale) {
  using S = typename E::storage;
  const int64_t T = q.shape[0], HQ = q.shape[1], D = q.shape[2];
  const int64_t BS = kc.shape[1], HK = kc.shape[2];
  const int64_t G = HQ / HK;  // q heads per kv head
  const int64_t S_ = ctx.shape[0], MB = bt.shape[1];
  const int32_t* qs = qsl.ptr<int32_t>();
  const int32_t* cl = ctx.ptr<int32_t>();
  const int32_t* tables = bt.ptr<int32_t>();
  const S* kd = kc.ptr<S>();
  const S* vd = vc.ptr<S>();
  const S* qd = q.ptr<S>();
  S* od = out.ptr<S>();

  // Work is grouped into sets of query tokens whose sequences begin with the same physical block:
  // the samples of one prompt share its full blocks (forked, not copied), and the tokens of a
  // prefill chunk share everything. A set's work item walks the blocks in order and runs every
  // token of the set over each block while it is in cache, so a shared prompt is read from memory
  // once per step instead of once per sample. Each token still sees its own blocks in the same
  // order with the same arithmetic, so a result never depends on how tokens were grouped.
  std::vector<int32_t> seq_of(static_cast<size_t>(T));
  std::vector<int32_t> live;  // sequences with queries this step
  live.reserve(static_cast<size_t>(S_));
  int64_t total_keys = 0;
  for (int64_t s = 0; s < S_; ++s) {
    const int64_t qlen = qs[s + 1] - qs[s];
    for (int64_t t = qs[s]; t < qs[s + 1]; ++t) seq_of[t] = static_cast<int32_t>(s);
    total_keys += qlen * cl[s] - qlen * (qlen - 1) / 2;  // query j of the chunk sees cl - qlen + j + 1 keys
    if (qlen > 0) live.push_back(static_cast<int32_t>(s));
  }
  std::stable_sort(live.begin(), live.end(),
                   [&](int32_t a, int32_t b) { return tables[a * MB] < tables[b * MB]; });
  // Sets are capped so there are enough work items to keep every thread busy, and so a set's
  // scratch (its queries, outputs and scores, ~H * (2D + keys) floats a token) stays within
  // kSetScratchFloats: a long prefill chunk is split rather than holding chunk x context scores.
  const int64_t want_items = 4 * static_cast<int64_t>(num_threads());
  const int64_t max_set = std::max<int64_t>(1, T * HK / want_items);
  std::vector<int32_t> order;          // query tokens, set by set
  std::vector<int64_t> set_start{0};   // set i is order[set_start[i], set_start[i + 1])
  order.reserve(static_cast<size_t>(T));
  int64_t set_floats = 0;
  for (size_t i = 0; i < live.size(); ++i) {
    const int32_t s = live[i];
    const int64_t qlen = qs[s + 1] - qs[s];
    for (int32_t t = qs[s]; t < qs[s + 1]; ++t) {
      const int64_t in_set = static_cast<int64_t>(order.size()) - set_start.back();
      const bool same_prefix = i > 0 && tables[live[i - 1] * MB] == tables[s * MB];
      const int64_t floats = HQ * (2 * D + cl[s] - qlen + (t - qs[s]) + 2);
      if (in_set > 0 && (in_set >= max_set || (t == qs[s] && !same_prefix) || set_floats + floats > kSetScratchFloats)) {
        set_start.push_back(order.size());
        set_floats = 0;
      }
      order.push_back(t);
      set_floats += floats;
    }
  }
  set_start.push_back(static_cast<int64_t>(order.size()));
  const int64_t n_sets = static_cast<int64_t>(set_start.size()) - 1;

  // One work item = one set x a contiguous range of kv heads (all their q heads). Heads of one
  // cache row are adjacent in memory, so a range reads each key/value row sequentially; ranges
  // are split only as far as needed to keep every thread busy.
  const int64_t chunks = std::min<int64_t>(HK, std::max<int64_t>(1, (want_items + n_sets - 1) / n_sets));
  const int64_t per = (HK + chunks - 1) / chunks;  // kv heads per item
  const int64_t n_chunks = (HK + per - 1) / per;
  const int64_t n_items = n_sets * n_chunks;
  // Calls under ~2^18 multiply-adds (tens of microseconds on one core) cost less than
  // waking the pool, so they run inline on the calling thread.
  const int64_t macs = total_keys * HQ * D * 2;
  const int64_t grain = macs < (int64_t{1} << 18) ? n_items : 1;
  const int64_t row_elems = HK * D;
  parallel_for(n_items, [&](int64_t item) {
    const int64_t set = item / n_chunks;
    const int64_t h0 = (item % n_chunks) * per, h1 = std::min(HK, h0 + per);
    const int64_t H = (h1 - h0) * G;  // q heads in this item: h0*G .. h1*G-1
    const int64_t seg = (h1 - h0) * D;  // elements of the row segment this item reads
    const int32_t* toks = order.data() + set_start[set];
    const int64_t m = set_start[set + 1] - set_start[set];

    // Per token of the set: keys attended (n), its block table, where its scores start.
    thread_local std::vector<int64_t> meta;
    meta.resize(static_cast<size_t>(3 * m));
    int64_t* nkeys = meta.data();
    int64_t* score_at = nkeys + m;
    int64_t* table_at = score_at + m;
    int64_t score_total = 0, max_blocks = 0;
    for (int64_t i = 0; i < m; ++i) {
      const int64_t t = toks[i], s = seq_of[t];
      const int64_t pos = cl[s] - (qs[s + 1] - qs[s]) + (t - qs[s]);
      nkeys[i] = pos + 1;  // keys attended: positions 0..pos
      score_at[i] = score_total;
      score_total += H * nkeys[i];
      table_at[i] = s * MB;
      max_blocks = std::max(max_blocks, (nkeys[i] + BS - 1) / BS);
    }
    // Scratch reused across items; raw pointers so the loops below do no TLS lookups.
    thread_local std::vector<float> scratch;
    const bool convert = !std::is_same<E, F32T>::value;
    scratch.resize(static_cast<size_t>(m * H * D * 2 + score_total + m * H + (convert ? BS * seg : 0)));
    float* qf = scratch.data();     // [m, H, D]
    float* acc = qf + m * H * D;    // [m, H, D]
    float* scores = acc + m * H * D;  // token i: [H, n_i] at score_at[i]
    float* inv = scores + score_total;  // [m, H]
    float* buf = inv + m * H;       // one converted block segment [BS, seg]
    std::fill(acc, acc + m * H * D, 0.f);
    for (int64_t i = 0; i < m; ++i)
      for (int64_t h = 0; h < H; ++h) {
        const S* qrow = qd + (toks[i] * HQ + h0 * G + h) * D;
        for (int64_t j = 0; j < D; ++j) qf[(i * H + h) * D + j] = E::load(qrow[j]) * scale;
      }
    // Block b of every token of the set, one block at a time (16-bit caches convert a block
    // once for consecutive tokens that share it).
    auto for_each_block = [&](const S* base, auto&& body) {
      for (int64_t b = 0; b < max_blocks; ++b) {
        int64_t converted_id = -1, converted_rows = 0, stride = seg;
        for (int64_t i = 0; i < m; ++i) {
          const int64_t n = nkeys[i];
          if (b * BS >= n) continue;
          const int64_t rows = std::min(BS, n - b * BS);
          const int64_t id = tables[table_at[i] + b];
          const S* src = base + (id * BS * HK + h0) * D;
          const float* rows_ptr;
          if (convert && id == converted_id && rows <= converted_rows) {
            rows_ptr = buf;
          } else {
            rows_ptr = block_rows<E>(src, row_elems, seg, rows, buf, &stride);
            converted_id = id;
            converted_rows = rows;
          }
          body(i, b, rows_ptr, stride, rows);
        }
      }
    };
    for_each_block(kd, [&](int64_t i, int64_t b, const float* k, int64_t stride, int64_t rows) {
      dispatch_dim(D, [&](auto dc) {
        block_scores<decltype(dc)::value>(qf + i * H * D, k, stride, rows, h1 - h0, G, D, scores + score_at[i],
                                          nkeys[i], b * BS);
      });
    });
    for (int64_t i = 0; i < m; ++i) softmax_rows(scores + score_at[i], H, nkeys[i], inv + i * H);
    for_each_block(vd, [&](int64_t i, int64_t b, const float* v, int64_t stride, int64_t rows) {
      dispatch_dim(D, [&](auto dc) {
        block_accumulate<decltype(dc)::value>(acc + i * H * D, scores + score_at[i], nkeys[i], b * BS, v, stride,
                                              rows, h1 - h0, G, D);
      });
    });
    for (int64_t i = 0; i < m; ++i)
      for (int64_t h = 0; h < H; ++h) {
        S* orow = od + (toks[i] * HQ + h0 * G + h) * D;
        for (int64_t j = 0; j < D; ++j) orow[j] = E::store(acc[(i * H + h) * D + j] * inv[i * H + h]);
      }
  }, grain);
}


}  // namespace

const char* attention_isa() { return isa_name(simd_isa()); }

const char* dtype_name(DType t) {
  switch (t) {
    case DType::F32: return "float32";
    case DType::BF16: return "bfloat16";
    case DType::F16: return "float16";
    case DType::I32: return "int32";
    case DType::I64: return "int64";
  }
  return "?";
}

void write_kv_cpu(const Tensor& k_cache, const Tensor& v_cache, const Tensor& k, const Tensor& v,
                  const Tensor& slot_mapping) {
  const int64_t num_slots = k_cache.shape[0] * k_cache.shape[1];
  const int64_t* slots = slot_mapping.ptr<int64_t>();
  for (int64_t t = 0; t < slot_mapping.shape[0]; ++t) {
    if (slots[t] < -1 || slots[t] >= num_slots)
      bad("write_kv: slot_mapping[" + std::to_string(t) + "] = " + std::to_string(slots[t]) +
          " is outside [-1, num_blocks * block_size = " + std::to_string(num_slots) + ")");
  }
  dispatch_float(k.dtype, [&](auto tag) { write_kv_impl<decltype(tag)>(k_cache, v_cache, k, v, slots); });
}

void copy_blocks_cpu(const Tensor& k_cache, const Tensor& v_cache, const Tensor& src, const Tensor& dst) {
  const int64_t nb = k_cache.shape[0];
  const int64_t n = src.shape[0];
  const int64_t* s = src.ptr<int64_t>();
  const int64_t* d = dst.ptr<int64_t>();
  for (int64_t i = 0; i < n; ++i) {
    if (s[i] < 0 || s[i] >= nb || d[i] < 0 || d[i] >= nb)
      bad("copy_blocks: pair " + std::to_string(i) + " (src " + std::to_string(s[i]) + ", dst " +
          std::to_string(d[i]) + ") has a block id outside [0, num_blocks = " + std::to_string(nb) + ")");
  }
  const int64_t bytes = k_cache.shape[1] * k_cache.shape[2] * k_cache.shape[3] * element_size(k_cache.dtype);
  char* kd = k_cache.ptr<char>();
  char* vd = v_cache.ptr<char>();
  for (int64_t i = 0; i < n; ++i) {
    if (s[i] == d[i]) continue;
    std::memcpy(kd + d[i] * bytes, kd + s[i] * bytes, static_cast<size_t>(bytes));
    std::memcpy(vd + d[i] * bytes, vd + s[i] * bytes, static_cast<size_t>(bytes));
  }
}

void check_attention_metadata(const Tensor& block_tables, const Tensor& context_lens,
                              const Tensor& query_start_loc, int64_t num_tokens, int64_t num_blocks,
                              int64_t block_size) {
  const int64_t S = context_lens.shape[0], MB = block_tables.shape[1];
  const int32_t* qs = query_start_loc.ptr<int32_t>();
  const int32_t* cl = context_lens.ptr<int32_t>();
  const int32_t* bt = block_tables.ptr<int32_t>();
  if (qs[0] != 0) bad("paged_attention: query_start_loc[0] must be 0, got " + std::to_string(qs[0]));
  if (qs[S] != num_tokens)
    bad("paged_attention: query_start_loc[-1] = " + std::to_string(qs[S]) + " must equal num_tokens = " +
        std::to_string(num_tokens) + " (q.shape[0])");
  for (int64_t s = 0; s < S; ++s) {
    const int64_t qlen = static_cast<int64_t>(qs[s + 1]) - qs[s];
    const std::string seq = "sequence " + std::to_string(s);
    if (qlen < 0) bad("paged_attention: query_start_loc must be non-decreasing (" + seq + ")");
    if (cl[s] < qlen)
      bad("paged_attention: context_lens[" + std::to_string(s) + "] = " + std::to_string(cl[s]) +
          " is smaller than its query length " + std::to_string(qlen) +
          " (context_lens counts cached tokens INCLUDING this step's)");
    if (static_cast<int64_t>(cl[s]) > MB * block_size)
      bad("paged_attention: context_lens[" + std::to_string(s) + "] = " + std::to_string(cl[s]) +
          " exceeds max_blocks_per_seq * block_size = " + std::to_string(MB * block_size));
    if (qlen == 0) continue;
    const int64_t used = (static_cast<int64_t>(cl[s]) + block_size - 1) / block_size;
    for (int64_t b = 0; b < used; ++b) {
      const int32_t id = bt[s * MB + b];
      if (id < 0 || id >= num_blocks)
        bad("paged_attention: block_tables[" + std::to_string(s) + ", " + std::to_string(b) + "] = " +
            std::to_string(id) + " is outside [0, num_blocks = " + std::to_string(num_blocks) + ")");
    }
  }
}

void paged_attention_cpu(const Tensor& out, const Tensor& q, const Tensor& k_cache, const Tensor& v_cache,
                         const Tensor& block_tables, const Tensor& context_lens, const Tensor& query_start_loc,
                         float scale) {
  check_attention_metadata(block_tables, context_lens, query_start_loc, q.shape[0], k_cache.shape[0],
                           k_cache.shape[1]);
  simd_isa();  // a bad ALIGNKIT_ISA raises here, before any work, not from inside a worker
  dispatch_float(q.dtype, [&](auto tag) {
    attention_impl<decltype(tag)>(out, q, k_cache, v_cache, block_tables, context_lens, query_start_loc, scale);
  });
}

}  // namespace alignkit
