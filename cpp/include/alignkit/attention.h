// Paged KV-cache kernels: write this step's K/V into cache slots, copy whole blocks
// (copy-on-write of a fork's partial block), and causal paged attention over the cache.
//
// Layout (see /tmp/sampler_api.md, kept in the README):
//   k_cache, v_cache   [num_blocks, block_size, num_kv_heads, head_dim]
//   k, v               [num_tokens, num_kv_heads, head_dim]
//   q, out             [num_tokens, num_q_heads, head_dim], num_q_heads % num_kv_heads == 0
//   slot_mapping       int64 [num_tokens], slot = block * block_size + offset, -1 = skip
//   block_tables       int32 [num_seqs, max_blocks_per_seq]
//   context_lens       int32 [num_seqs]   tokens cached for the seq, incl. this step's
//   query_start_loc    int32 [num_seqs+1] prefix sums of the per-seq query lengths
// Query token j of seq s (q_len = qsl[s+1]-qsl[s]) sits at position ctx[s]-q_len+j and
// attends to cache positions 0..that position. Softmax and accumulation run in fp32.
//
// CPU entry points check index VALUES (slots, block ids, lengths) and throw
// std::invalid_argument before touching memory. CUDA entry points cannot read device
// index arrays without a sync, so their kernels guard every index instead (an invalid
// slot is skipped, an invalid block id contributes nothing) and never read out of bounds.
#pragma once

#include <cstdint>

#include "alignkit/tensor.h"

namespace alignkit {

/// Problem sizes shared by the attention entry points (filled by the bindings).
struct AttnDims {
  int64_t num_blocks, block_size, num_kv_heads, head_dim;
  int64_t num_tokens, num_q_heads;
  int64_t num_seqs, max_blocks_per_seq;
};

/// SIMD flavour of the CPU attention and linear kernels in this process: "avx512", "avx2" or "baseline".
const char* attention_isa();

/// Scatter k/v rows into their cache slots (CPU).
void write_kv_cpu(const Tensor& k_cache, const Tensor& v_cache, const Tensor& k, const Tensor& v,
                  const Tensor& slot_mapping);
/// Copy whole blocks src[i] -> dst[i] in both caches (CPU).
void copy_blocks_cpu(const Tensor& k_cache, const Tensor& v_cache, const Tensor& src, const Tensor& dst);
/// Causal paged attention (CPU, threaded over (token set, kv-head group) work items; the tokens of
/// sequences that share their first block run together so shared prompt blocks are read once).
void paged_attention_cpu(const Tensor& out, const Tensor& q, const Tensor& k_cache, const Tensor& v_cache,
                         const Tensor& block_tables, const Tensor& context_lens, const Tensor& query_start_loc,
                         float scale);

/// Checks the host-side metadata of paged attention (lengths consistent, block ids in range).
void check_attention_metadata(const Tensor& block_tables, const Tensor& context_lens,
                              const Tensor& query_start_loc, int64_t num_tokens, int64_t num_blocks,
                              int64_t block_size);

#if defined(ALIGNKIT_WITH_CUDA)
/// CUDA versions; `stream` is a cudaStream_t passed as an integer. Asynchronous.
void write_kv_cuda(const Tensor& k_cache, const Tensor& v_cache, const Tensor& k, const Tensor& v,
                   const Tensor& slot_mapping, uintptr_t stream);
void copy_blocks_cuda(const Tensor& k_cache, const Tensor& v_cache, const Tensor& src, const Tensor& dst,
                      uintptr_t stream);
void paged_attention_cuda(const Tensor& out, const Tensor& q, const Tensor& k_cache, const Tensor& v_cache,
                          const Tensor& block_tables, const Tensor& context_lens, const Tensor& query_start_loc,
                          float scale, uintptr_t stream);
/// Throws std::runtime_error unless a CUDA device is usable and `ptr` is device-accessible memory.
void check_cuda_pointer(const void* ptr, const char* name);
#endif

}  // namespace alignkit
