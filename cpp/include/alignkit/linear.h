// A linear layer for the few-row products of decode steps: out = x @ w^T (+ bias), fp32, CPU.
//
// Each output is one dot product of an input row and a weight row, summed in a fixed order
// (16-, 8- or 4-lane partial sums over k, by the process's SIMD flavour; the k tail zero-padded
// into one more such step; a fixed reduction tree; then the bias), so a row's result is bitwise
// the same whatever the other rows of the call, their number, or the thread count: sampler
// steps are batch-invariant. The weight is read where it is, row by row
// (no packing), which is what makes it fast for few rows where sgemm re-packs the whole weight.
#pragma once

#include <vector>

#include "alignkit/tensor.h"

namespace alignkit {

/// Below this many multiply-adds (about a microsecond) a linear call runs on the calling thread:
/// waking the other threads would cost more than it saves.
constexpr int64_t kLinearSerialMacs = int64_t{1} << 15;

/// out[M, N] = x[M, K] @ w[N, K]^T (+ bias[N]); fp32, row-major, CPU; bias may be null.
void linear_cpu(const Tensor& out, const Tensor& x, const Tensor& w, const Tensor* bias);

/// One layer of a grouped call: out = x @ weight^T (+ bias), weight [N, K]; bias may be null.
struct LinearPart {
  const Tensor* out;
  const Tensor* weight;
  const Tensor* bias;
};

/// Several linear layers on the same input (a decoder's q/k/v or gate/up projections) in one
/// parallel region: every output bitwise equal to its own linear_cpu call, fewer thread
/// hand-offs and better-balanced work than one call per layer. Unchecked (the binding checks):
/// each out is [M, N] for its weight [N, K], and no out overlaps x, a weight, a bias or another out.
void linear_group_cpu(const Tensor& x, const std::vector<LinearPart>& parts);

/// out[M, N] = x[M, K] @ w[K, N] (+ bias[N]) for a weight stored [in, out] (transformers' Conv1D,
/// GPT-2); fp32, row-major, CPU; each output one multiply-add chain over k, so batch-invariant
/// too (linear_kn.cpp).
void linear_kn_cpu(const Tensor& out, const Tensor& x, const Tensor& w, const Tensor* bias);

}  // namespace alignkit
