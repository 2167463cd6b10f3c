// Python bindings of the KV-cache, attention and sampling kernels.
//
// Every array argument is checked here (dtype, device, ndim, shape, contiguity) before a
// kernel sees it; index VALUES are checked by the CPU kernels themselves (attention.h).
// Wrong dtype -> TypeError; wrong shape/device/layout/values -> ValueError.
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include <cmath>
#include <initializer_list>
#include <limits>
#include <string>
#include <vector>

#include "alignkit/attention.h"
#include "alignkit/linear.h"
#include "alignkit/sampling.h"
#include "alignkit/thread_pool.h"

namespace nb = nanobind;
using nb::ndarray;

namespace alignkit {
namespace {

using Array = ndarray<>;

std::string shape_str(const Array& a) {
  std::string s = "[";
  for (size_t i = 0; i < a.ndim(); ++i) s += (i ? ", " : "") + std::to_string(a.shape(i));
  return s + "]";
}

std::string dl_dtype_name(nb::dlpack::dtype t) {
  using C = nb::dlpack::dtype_code;
  if (t.code == (uint8_t)C::Bool) return "bool";
  const char* base = t.code == (uint8_t)C::Float    ? "float"
                     : t.code == (uint8_t)C::Bfloat  ? "bfloat"
                     : t.code == (uint8_t)C::Int     ? "int"
                     : t.code == (uint8_t)C::UInt    ? "uint"
                     : t.code == (uint8_t)C::Complex ? "complex"
                                                      : nullptr;
  if (!base)  // e.g. the float8 codes of newer DLPack versions
    return "an unsupported type (DLPack code " + std::to_string(t.code) + ", " + std::to_string(t.bits) + " bits)";
  return std::string(base) + std::to_string(t.bits);
}

/// Converts a validated-layout ndarray into a Tensor view; checks dtype, ndim, contiguity, device.
Tensor view(const Array& a, const char* fn, const char* name, std::initializer_list<DType> allowed, size_t ndim) {
  const std::string who = std::string(fn) + ": `" + name + "`";
  using C = nb::dlpack::dtype_code;
  const auto dt = a.dtype();
  DType d = DType::F32;
  bool known = dt.lanes == 1;
  if (dt.code == (uint8_t)C::Float && dt.bits == 32) d = DType::F32;
  else if (dt.code == (uint8_t)C::Bfloat && dt.bits == 16) d = DType::BF16;
  else if (dt.code == (uint8_t)C::Float && dt.bits == 16) d = DType::F16;
  else if (dt.code == (uint8_t)C::Int && dt.bits == 32) d = DType::I32;
  else if (dt.code == (uint8_t)C::Int && dt.bits == 64) d = DType::I64;
  else known = false;
  bool ok = false;
  for (DType x : allowed) ok = ok || (known && x == d);
  if (!ok) {
    std::string want;
    for (DType x : allowed) want += (want.empty() ? "" : " or ") + std::string(dtype_name(x));
    throw nb::type_error((who + " must have dtype " + want + ", got " + dl_dtype_name(dt) +
                          " (convert with .to(torch.<dtype>))").c_str());
  }
  if (a.ndim() != ndim)
    throw nb::value_error((who + " must be " + std::to_string(ndim) + "-D, got shape " + shape_str(a)).c_str());
  // Row-major check (size-1 dimensions may carry any stride; empty arrays have no layout).
  int64_t expect = 1;
  bool empty = false;
  for (size_t i = 0; i < ndim; ++i) empty = empty || a.shape(i) == 0;
  for (size_t i = ndim; !empty && i-- > 0;) {
    if (a.shape(i) != 1 && a.stride(i) != expect)
      throw nb::value_error((who + " must be contiguous (row-major); call .contiguous() first").c_str());
    expect *= static_cast<int64_t>(a.shape(i));
  }
  Tensor t;
  t.data = a.data();
  t.dtype = d;
  t.ndim = static_cast<int>(ndim);
  for (size_t i = 0; i < ndim; ++i) t.shape[i] = static_cast<int64_t>(a.shape(i));
  t.device_id = a.device_id();
  if (a.device_type() == nb::device::cpu::value) {
    t.device = Device::CPU;
  } else if (a.device_type() == nb::device::cuda::value) {
    t.device = Device::CUDA;
  } else {
    throw nb::value_error((who + " is on an unsupported device (DLPack device type " +
                           std::to_string(a.device_type()) + "); use a CPU or CUDA tensor").c_str());
  }
  return t;
}

void expect_shape(const Tensor& t, const char* fn, const char* name, std::initializer_list<int64_t> shape,
                  const char* meaning) {
  size_t i = 0;
  bool ok = true;
  for (int64_t s : shape) ok = ok && t.shape[i++] == s;
  if (!ok) {
    std::string want = "[", got = "[";
    i = 0;
    for (int64_t s : shape) {
      want += (i ? ", " : "") + std::to_string(s);
      got += (i ? ", " : "") + std::to_string(t.shape[i]);
      ++i;
    }
    throw nb::value_error((std::string(fn) + ": `" + name + "` must have shape " + want + "] " + meaning +
                           ", got " + got + "]").c_str());
  }
}

/// All tensors on one device; returns it. CUDA tensors need a CUDA build and a usable device.
Device common_device(const char* fn, const std::vector<std::pair<const char*, const Tensor*>>& ts) {
  const Tensor& first = *ts.front().second;
  for (auto& [name, t] : ts) {
    if (t->device != first.device || t->device_id != first.device_id)
      throw nb::value_error((std::string(fn) + ": `" + name + "` is on a different device than `" +
                             ts.front().first + "`; move all tensors to one device").c_str());
  }
  if (first.device == Device::CUDA) {
#if defined(ALIGNKIT_WITH_CUDA)
    for (auto& [name, t] : ts)
      if (t->numel() > 0) check_cuda_pointer(t->data, (std::string(fn) + ": `" + name + "`").c_str());
#else
    throw nb::value_error((std::string(fn) + ": got CUDA tensors, but alignkit._sampler was built without "
                           "CUDA; rebuild with nvcc on PATH (pip install --no-build-isolation -e .) or "
                           "pass CPU tensors").c_str());
#endif
  }
  return first.device;
}

using Named = std::vector<std::pair<const char*, const Tensor*>>;

/// Whether two (row-major, checked) tensors share any byte of memory.
bool overlaps(const Tensor& a, const Tensor& b) {
  const char* pa = static_cast<const char*>(a.data);
  const char* pb = static_cast<const char*>(b.data);
  return a.numel() > 0 && b.numel() > 0 && pa < pb + b.nbytes() && pb < pa + a.nbytes();
}

/// A kernel writes its outputs while it still reads its inputs (and the other outputs): an output
/// sharing memory with any other argument would give silently wrong results, so it is refused.
/// Call after common_device (pointers are compared within one device).
void outputs_apart(const char* fn, const Named& outputs, const Named& all) {
  for (auto& [oname, o] : outputs)
    for (auto& [name, t] : all)
      if (t != o && overlaps(*o, *t))
        throw nb::value_error((std::string(fn) + ": `" + oname + "` overlaps `" + name +
                               "` in memory; pass separate tensors").c_str());
}

constexpr std::initializer_list<DType> kFloat = {DType::F32, DType::BF16, DType::F16};

struct CacheViews {
  Tensor kc, vc;
};

CacheViews caches(const char* fn, const Array& k_cache, const Array& v_cache) {
  CacheViews c{view(k_cache, fn, "k_cache", kFloat, 4), view(v_cache, fn, "v_cache", kFloat, 4)};
  expect_shape(c.vc, fn, "v_cache", {c.kc.shape[0], c.kc.shape[1], c.kc.shape[2], c.kc.shape[3]},
               "(same as k_cache)");
  if (c.vc.dtype != c.kc.dtype)
    throw nb::type_error((std::string(fn) + ": `v_cache` dtype " + dtype_name(c.vc.dtype) +
                          " differs from `k_cache` dtype " + dtype_name(c.kc.dtype)).c_str());
  return c;
}

void same_dtype(const char* fn, const char* name, const Tensor& t, const Tensor& cache) {
  if (t.dtype != cache.dtype)
    throw nb::type_error((std::string(fn) + ": `" + name + "` has dtype " + dtype_name(t.dtype) +
                          " but the cache is " + dtype_name(cache.dtype) + "; cast it to the cache dtype").c_str());
}

void write_kv(const Array& k_cache, const Array& v_cache, const Array& k, const Array& v, const Array& slot_mapping,
              uintptr_t stream) {
  const char* fn = "write_kv";
  auto c = caches(fn, k_cache, v_cache);
  Tensor tk = view(k, fn, "k", kFloat, 3), tv = view(v, fn, "v", kFloat, 3);
  Tensor sm = view(slot_mapping, fn, "slot_mapping", {DType::I64}, 1);
  same_dtype(fn, "k", tk, c.kc);
  same_dtype(fn, "v", tv, c.kc);
  const int64_t T = tk.shape[0];
  expect_shape(tk, fn, "k", {T, c.kc.shape[2], c.kc.shape[3]}, "[num_tokens, num_kv_heads, head_dim] of the cache");
  expect_shape(tv, fn, "v", {T, c.kc.shape[2], c.kc.shape[3]}, "(same as k)");
  expect_shape(sm, fn, "slot_mapping", {T}, "[num_tokens]");
  const Named all = {{"k_cache", &c.kc}, {"v_cache", &c.vc}, {"k", &tk}, {"v", &tv}, {"slot_mapping", &sm}};
  Device dev = common_device(fn, all);
  outputs_apart(fn, {all[0], all[1]}, all);
  if (T == 0) return;
  nb::gil_scoped_release release;
#if defined(ALIGNKIT_WITH_CUDA)
  if (dev == Device::CUDA) return write_kv_cuda(c.kc, c.vc, tk, tv, sm, stream);
#endif
  (void)dev;
  write_kv_cpu(c.kc, c.vc, tk, tv, sm);
}

void copy_blocks(const Array& k_cache, const Array& v_cache, const Array& src, const Array& dst, uintptr_t stream) {
  const char* fn = "copy_blocks";
  auto c = caches(fn, k_cache, v_cache);
  Tensor ts = view(src, fn, "src", {DType::I64}, 1), td = view(dst, fn, "dst", {DType::I64}, 1);
  expect_shape(td, fn, "dst", {ts.shape[0]}, "(same length as src)");
  const Named all = {{"k_cache", &c.kc}, {"v_cache", &c.vc}, {"src", &ts}, {"dst", &td}};
  Device dev = common_device(fn, all);
  outputs_apart(fn, {all[0], all[1]}, all);
  if (ts.shape[0] == 0) return;
  nb::gil_scoped_release release;
#if defined(ALIGNKIT_WITH_CUDA)
  if (dev == Device::CUDA) return copy_blocks_cuda(c.kc, c.vc, ts, td, stream);
#endif
  (void)dev;
  copy_blocks_cpu(c.kc, c.vc, ts, td);
}

void paged_attention(const Array& out, const Array& q, const Array& k_cache, const Array& v_cache,
                     const Array& block_tables, const Array& context_lens, const Array& query_start_loc, double scale,
                     uintptr_t stream) {
  const char* fn = "paged_attention";
  auto c = caches(fn, k_cache, v_cache);
  Tensor tq = view(q, fn, "q", kFloat, 3), to = view(out, fn, "out", kFloat, 3);
  Tensor bt = view(block_tables, fn, "block_tables", {DType::I32}, 2);
  Tensor cl = view(context_lens, fn, "context_lens", {DType::I32}, 1);
  Tensor qs = view(query_start_loc, fn, "query_start_loc", {DType::I32}, 1);
  same_dtype(fn, "q", tq, c.kc);
  same_dtype(fn, "out", to, c.kc);
  const int64_t HK = c.kc.shape[2], D = c.kc.shape[3], HQ = tq.shape[1];
  if (tq.shape[2] != D)
    throw nb::value_error(("paged_attention: `q` head_dim " + std::to_string(tq.shape[2]) +
                           " differs from the cache head_dim " + std::to_string(D)).c_str());
  if (HK == 0 || HQ % HK != 0)
    throw nb::value_error(("paged_attention: num_q_heads (" + std::to_string(HQ) +
                           ") must be a multiple of num_kv_heads (" + std::to_string(HK) + ")").c_str());
  expect_shape(to, fn, "out", {tq.shape[0], HQ, D}, "(same as q)");
  const int64_t S = bt.shape[0];
  expect_shape(cl, fn, "context_lens", {S}, "[num_seqs] (rows of block_tables)");
  expect_shape(qs, fn, "query_start_loc", {S + 1}, "[num_seqs + 1]");
  // The kernels take the scale as a float: a double beyond float's range would become inf.
  if (!(std::fabs(scale) <= static_cast<double>(std::numeric_limits<float>::max())))  // also NaN
    throw nb::value_error("paged_attention: `scale` must be finite in float32 (|scale| <= 3.4e38)");
  const Named all = {{"out", &to}, {"q", &tq}, {"k_cache", &c.kc}, {"v_cache", &c.vc},
                     {"block_tables", &bt}, {"context_lens", &cl}, {"query_start_loc", &qs}};
  Device dev = common_device(fn, all);
  outputs_apart(fn, {all[0]}, all);
  nb::gil_scoped_release release;
#if defined(ALIGNKIT_WITH_CUDA)
  if (dev == Device::CUDA) {
    if (tq.shape[0] == 0) return;
    return paged_attention_cuda(to, tq, c.kc, c.vc, bt, cl, qs, static_cast<float>(scale), stream);
  }
#endif
  (void)dev;
  check_attention_metadata(bt, cl, qs, tq.shape[0], c.kc.shape[0], c.kc.shape[1]);
  if (tq.shape[0] == 0) return;
  paged_attention_cpu(to, tq, c.kc, c.vc, bt, cl, qs, static_cast<float>(scale));
}

void sample(const Array& logits, const Array& temperature, const Array& top_k, const Array& top_p, const Array& min_p,
            const Array& seeds, const Array& sample_ids, const Array& positions, const Array& out_tokens,
            const Array& out_logprobs, const Array& out_raw_logprobs, uintptr_t stream) {
  const char* fn = "sample";
  SampleArgs a;
  a.logits = view(logits, fn, "logits", {DType::F32}, 2);
  const int64_t R = a.logits.shape[0];
  if (a.logits.shape[1] < 1) throw nb::value_error("sample: `logits` has an empty vocabulary dimension");
  struct Row {
    Tensor* t;
    const Array* arr;
    const char* name;
    DType dt;
  };
  Row rows[] = {{&a.temperature, &temperature, "temperature", DType::F32},
                {&a.top_k, &top_k, "top_k", DType::I32},
                {&a.top_p, &top_p, "top_p", DType::F32},
                {&a.min_p, &min_p, "min_p", DType::F32},
                {&a.seeds, &seeds, "seeds", DType::I64},
                {&a.sample_ids, &sample_ids, "sample_ids", DType::I64},
                {&a.positions, &positions, "positions", DType::I64},
                {&a.out_tokens, &out_tokens, "out_tokens", DType::I64},
                {&a.out_logprobs, &out_logprobs, "out_logprobs", DType::F32},
                {&a.out_raw_logprobs, &out_raw_logprobs, "out_raw_logprobs", DType::F32}};
  Named all = {{"logits", &a.logits}};
  for (auto& r : rows) {
    *r.t = view(*r.arr, fn, r.name, {r.dt}, 1);
    expect_shape(*r.t, fn, r.name, {R}, "[R] (one per logits row)");
    all.emplace_back(r.name, r.t);
  }
  Device dev = common_device(fn, all);
  // The last three rows of `rows` (so of `all`) are the outputs: out_tokens, out_logprobs, out_raw_logprobs.
  outputs_apart(fn, Named(all.end() - 3, all.end()), all);
  if (R == 0) return;
  nb::gil_scoped_release release;
#if defined(ALIGNKIT_WITH_CUDA)
  if (dev == Device::CUDA) return sample_cuda(a, stream);
#endif
  (void)dev;
  sample_cpu(a);
}

/// Shared checks of the linear bindings: fp32 CPU tensors of consistent shapes, no output
/// sharing memory with an input or another output. `outs`, `weights` and `biases` are the
/// layers of one call (one each for `linear` and `linear_kn`; `grouped` names them by index).
void linear_checked(const char* fn, bool in_out, bool grouped, const std::vector<Array>& outs, const Array& x,
                    const std::vector<Array>& weights, const std::vector<std::optional<Array>>& biases) {
  const size_t L = weights.size();
  if (outs.size() != L || biases.size() != L)
    throw nb::value_error((std::string(fn) + ": outs, weights and biases must have the same length (one per layer), "
                           "got " + std::to_string(outs.size()) + ", " + std::to_string(L) + ", " +
                           std::to_string(biases.size())).c_str());
  Tensor tx = view(x, fn, "x", {DType::F32}, 2);
  const int64_t M = tx.shape[0], K = tx.shape[1];
  std::vector<std::string> names;  // built before any c_str() is taken
  for (size_t i = 0; i < L; ++i)
    for (const char* base : {"out", "weight", "bias"}) {
      if (!grouped) names.emplace_back(base);
      else names.push_back(std::string(base) + (base[0] == 'b' ? "es[" : "s[") + std::to_string(i) + "]");
    }
  std::vector<Tensor> to(L), tw(L), tb(L);
  Named all = {{"x", &tx}};
  for (size_t i = 0; i < L; ++i) {
    const char *on = names[3 * i].c_str(), *wn = names[3 * i + 1].c_str(), *bn = names[3 * i + 2].c_str();
    tw[i] = view(weights[i], fn, wn, {DType::F32}, 2);
    to[i] = view(outs[i], fn, on, {DType::F32}, 2);
    const int64_t N = in_out ? tw[i].shape[1] : tw[i].shape[0];
    if (in_out)
      expect_shape(tw[i], fn, wn, {K, N}, "[in_features, out_features] with in_features = x.shape[1]");
    else
      expect_shape(tw[i], fn, wn, {N, K}, "[out_features, in_features] with in_features = x.shape[1]");
    const std::string out_hint = "[x.shape[0], " + names[3 * i + 1] + (in_out ? ".shape[1]]" : ".shape[0]]");
    expect_shape(to[i], fn, on, {M, N}, out_hint.c_str());
    all.emplace_back(wn, &tw[i]);
    all.emplace_back(on, &to[i]);
    if (biases[i]) {
      tb[i] = view(*biases[i], fn, bn, {DType::F32}, 1);
      expect_shape(tb[i], fn, bn, {N}, "[out_features]");
      all.emplace_back(bn, &tb[i]);
    }
  }
  if (common_device(fn, all) != Device::CPU)
    throw nb::value_error((std::string(fn) + ": this kernel runs on the CPU; on CUDA use torch's matmul").c_str());
  Named outputs;
  for (size_t i = 0; i < L; ++i) outputs.emplace_back(names[3 * i].c_str(), &to[i]);
  outputs_apart(fn, outputs, all);
  if (M == 0) return;
  nb::gil_scoped_release release;
  if (in_out) {
    if (to[0].numel() > 0) linear_kn_cpu(to[0], tx, tw[0], biases[0] ? &tb[0] : nullptr);
    return;
  }
  std::vector<LinearPart> parts;
  for (size_t i = 0; i < L; ++i) parts.push_back({&to[i], &tw[i], biases[i] ? &tb[i] : nullptr});
  linear_group_cpu(tx, parts);
}

void linear(const Array& out, const Array& x, const Array& weight, const std::optional<Array>& bias) {
  linear_checked("linear", false, false, {out}, x, {weight}, {bias});
}

void linear_kn(const Array& out, const Array& x, const Array& weight, const std::optional<Array>& bias) {
  linear_checked("linear_kn", true, false, {out}, x, {weight}, {bias});
}

void linear_group(const std::vector<Array>& outs, const Array& x, const std::vector<Array>& weights,
                  const std::vector<std::optional<Array>>& biases) {
  linear_checked("linear_group", false, true, outs, x, weights, biases);
}

}  // namespace

void bind_kernels(nb::module_& m) {
  using namespace nb::literals;
  m.def("write_kv", &write_kv, "k_cache"_a, "v_cache"_a, "k"_a, "v"_a, "slot_mapping"_a, "stream"_a = 0,
        "Scatter this step's k/v [T, Hkv, D] into the paged caches [blocks, block_size, Hkv, D] at slot_mapping "
        "(int64 [T], -1 = skip).");
  m.def("copy_blocks", &copy_blocks, "k_cache"_a, "v_cache"_a, "src"_a, "dst"_a, "stream"_a = 0,
        "Copy whole KV blocks src[i] -> dst[i] (int64) in both caches (copy-on-write of a fork).");
  m.def("paged_attention", &paged_attention, "out"_a, "q"_a, "k_cache"_a, "v_cache"_a, "block_tables"_a,
        "context_lens"_a, "query_start_loc"_a, "scale"_a, "stream"_a = 0,
        "Causal attention of packed queries q [T, Hq, D] over each sequence's paged cache, written to out.");
  m.def("sample", &sample, "logits"_a, "temperature"_a, "top_k"_a, "top_p"_a, "min_p"_a, "seeds"_a, "sample_ids"_a,
        "positions"_a, "out_tokens"_a, "out_logprobs"_a, "out_raw_logprobs"_a, "stream"_a = 0,
        "Draw one token per logits row (temperature, min-p, top-k, top-p; counter-based RNG) and report its "
        "log-prob at the sampling temperature and at T=1.");
  m.def("linear", &linear, "out"_a, "x"_a, "weight"_a, "bias"_a.none() = nb::none(),
        "out = x @ weight.T (+ bias), fp32 on the CPU, for the few rows of decode steps: the weight is read in "
        "place (no packing) and each row's result is bitwise independent of the other rows (batch-invariant).");
  m.def("linear_group", &linear_group, "outs"_a, "x"_a, "weights"_a, "biases"_a,
        "outs[i] = x @ weights[i]^T (+ biases[i], None for none) for several layers on the same input (q/k/v, "
        "gate/up) in one parallel region; each output bitwise equal to its own `linear` call.");
  m.def("linear_kn", &linear_kn, "out"_a, "x"_a, "weight"_a, "bias"_a.none() = nb::none(),
        "out = x @ weight (+ bias) for a weight stored [in_features, out_features] (transformers' Conv1D, GPT-2), "
        "fp32 on the CPU; each output is one multiply-add chain over k, so each row's result is bitwise "
        "independent of the other rows (batch-invariant).");
  m.def("attention_isa", [] { return std::string(attention_isa()); },
        "SIMD flavour of the CPU attention and linear kernels: 'avx512', 'avx2' or 'baseline' (the widest the CPU has; env ALIGNKIT_ISA=avx2 or baseline caps it).");
  m.def("num_threads", [] { return num_threads(); }, "Threads the CPU kernels use: env ALIGNKIT_NUM_THREADS, else torch's (OpenMP) thread count.");
  m.def("set_num_threads", [](int n) {
    if (n < 1) throw nb::value_error(("set_num_threads(" + std::to_string(n) + "): expected an int >= 1").c_str());
    set_num_threads(n);
  }, "n"_a, "Threads for kernels called from this thread (OpenMP's count is per thread; no-op without OpenMP).");
}

}  // namespace alignkit
