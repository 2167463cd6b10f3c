// CPU paged KV-cache kernels (see attention.h for layouts and semantics).
#include "alignkit/attention.h"

#include <algorithm>
#include <cstring>
#include <type_traits>
#include <cmath>
#include <string>
#include <vector>

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

/// y += w * x over d floats.
inline void axpy(float* y, float w, const float* x, int64_t d) {
  for (int64_t j = 0; j < d; ++j) y[j] += w * x[j];
}

/// Hints the cache lines of a K/V row a few keys ahead: rows of one head sit num_kv_heads *
/// head_dim apart (often across 4 KiB pages), which the hardware prefetcher does not follow.
inline void prefetch_row(const void* p, int64_t bytes) {
  const char* c = static_cast<const char*>(p);
  for (int64_t off = 0; off < bytes; off += 64) __builtin_prefetch(c + off, 0, 1);
}

constexpr int64_t kPrefetchAhead = 4;

template <class E>
inline const float* as_float_row(const typename E::storage* src, int64_t d, float* buf) {
  if constexpr (std::is_same<E, F32T>::value) {
    return src;
  } else {
    for (int64_t j = 0; j < d; ++j) buf[j] = E::load(src[j]);
    return buf;
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

  std::vector<int32_t> seq_of(static_cast<size_t>(T));
  for (int64_t s = 0; s < S_; ++s)
    for (int64_t t = qs[s]; t < qs[s + 1]; ++t) seq_of[t] = static_cast<int32_t>(s);

  // One work item = one query token x a contiguous range of kv heads (all their q heads).
  // Heads of one cache row are adjacent in memory, so a range reads each key/value row
  // sequentially; ranges are split only as far as needed to keep every thread busy.
  const int64_t want_items = 4 * static_cast<int64_t>(num_threads());
  const int64_t chunks = std::min<int64_t>(HK, std::max<int64_t>(1, (want_items + T - 1) / T));
  const int64_t per = (HK + chunks - 1) / chunks;  // kv heads per item
  const int64_t n_chunks = (HK + per - 1) / per;
  parallel_for(T * n_chunks, [&](int64_t item) {
    const int64_t t = item / n_chunks;
    const int64_t h0 = (item % n_chunks) * per, h1 = std::min(HK, h0 + per);
    const int64_t H = (h1 - h0) * G;  // q heads in this item: h0*G .. h1*G-1
    const int64_t s = seq_of[t];
    const int64_t qlen = qs[s + 1] - qs[s];
    const int64_t pos = cl[s] - qlen + (t - qs[s]);
    const int64_t n = pos + 1;  // keys attended: positions 0..pos
    const int32_t* table = tables + s * MB;

    // Scratch reused across items; raw pointers so the loops below do no TLS lookups.
    thread_local std::vector<float> scratch;
    scratch.resize(static_cast<size_t>(H * D * 2 + H * n + 2 * per * D));
    float* qf = scratch.data();
    float* acc = qf + H * D;
    float* scores = acc + H * D;  // [H, n]
    float* buf = scores + H * n;  // one converted cache row segment [(h1-h0), D]
    std::fill(acc, acc + H * D, 0.f);
    for (int64_t h = 0; h < H; ++h) {
      const S* qrow = qd + (t * HQ + h0 * G + h) * D;
      for (int64_t j = 0; j < D; ++j) qf[h * D + j] = E::load(qrow[j]) * scale;
    }
    const int64_t seg = (h1 - h0) * D;  // elements of the row segment this item reads
    const int64_t seg_bytes = seg * static_cast<int64_t>(sizeof(S));
    auto row_of = [&](const S* base, int64_t p) {
      return base + ((static_cast<int64_t>(table[p / BS]) * BS + p % BS) * HK + h0) * D;
    };
    for (int64_t p = 0; p < std::min(n, kPrefetchAhead); ++p) prefetch_row(row_of(kd, p), seg_bytes);
    for (int64_t p = 0; p < n; ++p) {
      if (p + kPrefetchAhead < n) prefetch_row(row_of(kd, p + kPrefetchAhead), seg_bytes);
      const float* kr = as_float_row<E>(row_of(kd, p), seg, buf);
      for (int64_t h = 0; h < H; ++h) scores[h * n + p] = dot(qf + h * D, kr + (h / G) * D, D);
    }
    for (int64_t h = 0; h < H; ++h) {
      float* sc = scores + h * n;
      float m = -INFINITY;
      for (int64_t p = 0; p < n; ++p) m = std::max(m, sc[p]);
      float sum = 0.f;
      for (int64_t p = 0; p < n; ++p) {
        sc[p] = std::exp(sc[p] - m);
        sum += sc[p];
      }
      const float inv = 1.f / sum;
      for (int64_t p = 0; p < n; ++p) sc[p] *= inv;
    }
    for (int64_t p = 0; p < std::min(n, kPrefetchAhead); ++p) prefetch_row(row_of(vd, p), seg_bytes);
    for (int64_t p = 0; p < n; ++p) {
      if (p + kPrefetchAhead < n) prefetch_row(row_of(vd, p + kPrefetchAhead), seg_bytes);
      const float* vr = as_float_row<E>(row_of(vd, p), seg, buf);
      for (int64_t h = 0; h < H; ++h) axpy(acc + h * D, scores[h * n + p], vr + (h / G) * D, D);
    }
    for (int64_t h = 0; h < H; ++h) {
      S* orow = od + (t * HQ + h0 * G + h) * D;
      for (int64_t j = 0; j < D; ++j) orow[j] = E::store(acc[h * D + j]);
    }
  });
}

template <class F>
void dispatch_float(DType t, F&& f) {
  switch (t) {
    case DType::F32: f(F32T{}); break;
    case DType::BF16: f(BF16T{}); break;
    case DType::F16: f(F16T{}); break;
    default: bad("internal: attention kernels take float32/bfloat16/float16");
  }
}

}  // namespace

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
  const int64_t esize = k_cache.dtype == DType::F32 ? 4 : 2;
  const int64_t bytes = k_cache.shape[1] * k_cache.shape[2] * k_cache.shape[3] * esize;
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
  dispatch_float(q.dtype, [&](auto tag) {
    attention_impl<decltype(tag)>(out, q, k_cache, v_cache, block_tables, context_lens, query_start_loc, scale);
  });
}

}  // namespace alignkit
