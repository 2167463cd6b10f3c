"""Every kernel binding rejects bad arrays (dtype, device, shape, layout, index values) with a Python exception.

The matrix below perturbs one array argument at a time; for a list argument (linear_group's
`outs`, `weights`, `biases`) every element is perturbed on its own and the error must name that
element (`weights[1]`), so a check that only looked at the first layer would be caught.
"""

from __future__ import annotations

import re

import pytest
import torch

import alignkit._sampler as ops

from .fake_dlpack import FakeCudaTensor

NB, BS, HK, HQ, D, T = 6, 4, 2, 4, 8, 5


def _write_kv():
    return dict(k_cache=torch.zeros(NB, BS, HK, D), v_cache=torch.zeros(NB, BS, HK, D),
                k=torch.randn(T, HK, D), v=torch.randn(T, HK, D),
                slot_mapping=torch.tensor([0, 1, 2, 9, -1], dtype=torch.int64))


def _copy_blocks():
    return dict(k_cache=torch.randn(NB, BS, HK, D), v_cache=torch.randn(NB, BS, HK, D),
                src=torch.tensor([0, 1], dtype=torch.int64), dst=torch.tensor([2, 3], dtype=torch.int64))


def _paged_attention():
    return dict(out=torch.empty(T, HQ, D), q=torch.randn(T, HQ, D), k_cache=torch.randn(NB, BS, HK, D),
                v_cache=torch.randn(NB, BS, HK, D), block_tables=torch.tensor([[0, 1], [2, 3]], dtype=torch.int32),
                context_lens=torch.tensor([4, 7], dtype=torch.int32),
                query_start_loc=torch.tensor([0, 4, 5], dtype=torch.int32), scale=0.3)


def _sample():
    r = 3
    return dict(logits=torch.randn(r, 10), temperature=torch.ones(r), top_k=torch.zeros(r, dtype=torch.int32),
                top_p=torch.ones(r), min_p=torch.zeros(r), seeds=torch.arange(r), sample_ids=torch.zeros(r, dtype=torch.int64),
                positions=torch.arange(r), out_tokens=torch.empty(r, dtype=torch.int64), out_logprobs=torch.empty(r),
                out_raw_logprobs=torch.empty(r))


def _linear():
    return dict(out=torch.empty(3, 5), x=torch.randn(3, 8), weight=torch.randn(5, 8), bias=torch.randn(5))


def _linear_kn():
    return dict(out=torch.empty(3, 5), x=torch.randn(3, 8), weight=torch.randn(8, 5), bias=torch.randn(5))


def _linear_group():
    # Two layers of different widths (5 and 4), each with a bias: every list position holds an array.
    return dict(outs=[torch.empty(3, 5), torch.empty(3, 4)], x=torch.randn(3, 8),
                weights=[torch.randn(5, 8), torch.randn(4, 8)], biases=[torch.randn(5), torch.randn(4)])


BINDINGS = {"write_kv": _write_kv, "copy_blocks": _copy_blocks, "paged_attention": _paged_attention, "sample": _sample,
            "linear": _linear, "linear_kn": _linear_kn, "linear_group": _linear_group}


def _array_names(kwargs):
    """Each array argument by the name the binding reports: `x`, or `outs[1]` for an element of a list."""
    for name, v in kwargs.items():
        if isinstance(v, torch.Tensor):
            yield name
        elif isinstance(v, list):
            yield from (f"{name}[{i}]" for i, e in enumerate(v) if isinstance(e, torch.Tensor))


ARRAYS = [(fn, name) for fn, make in BINDINGS.items() for name in _array_names(make())]


def _get(kw, name):  # kw["outs"][1] for "outs[1]"
    arg, _, index = name.partition("[")
    return kw[arg][int(index[:-1])] if index else kw[arg]


def _set(kw, name, value):
    arg, _, index = name.partition("[")
    if index:
        kw[arg][int(index[:-1])] = value
    else:
        kw[arg] = value


def _call(fn, kwargs):
    return getattr(ops, fn)(**kwargs)


def test_the_matrix_reaches_every_element_of_the_list_arguments():
    # The perturbation tests below are parametrized by ARRAYS: a layer missing here is a layer unchecked.
    assert [n for f, n in ARRAYS if f == "linear_group"] == [
        "outs[0]", "outs[1]", "x", "weights[0]", "weights[1]", "biases[0]", "biases[1]"]


@pytest.mark.parametrize("fn", BINDINGS)
def test_valid_arguments_are_accepted(fn):
    _call(fn, BINDINGS[fn]())  # the baseline every failure test perturbs must itself pass


@pytest.mark.parametrize("fn, name", ARRAYS)
def test_wrong_dtype_raises_type_error_naming_the_argument(fn, name):
    kw = BINDINGS[fn]()
    x = _get(kw, name)
    _set(kw, name, x.to(torch.float64 if x.is_floating_point() else torch.int16))
    with pytest.raises(TypeError, match=rf"{fn}: `{re.escape(name)}` must have dtype"):
        _call(fn, kw)


@pytest.mark.parametrize("fn, name", [a for a in ARRAYS if a[0] in ("write_kv", "paged_attention") and a[1] in ("k", "q", "out")])
def test_float_tensor_dtype_must_match_the_cache(fn, name):
    kw = BINDINGS[fn]()
    kw[name] = kw[name].to(torch.bfloat16)
    with pytest.raises(TypeError, match=rf"`{name}` has dtype bfloat16 but the cache is float32"):
        _call(fn, kw)


@pytest.mark.parametrize("fn, name", ARRAYS)
def test_wrong_ndim_or_size_raises_value_error(fn, name):
    kw = BINDINGS[fn]()
    _set(kw, name, _get(kw, name)[None])  # one extra leading dimension
    with pytest.raises(ValueError, match=rf"`{re.escape(name)}` must be \d-D"):
        _call(fn, kw)
    kw = BINDINGS[fn]()
    x = _get(kw, name)
    _set(kw, name, torch.cat([x, x[:1]]))  # one row too many: disagrees with the arrays it must match
    with pytest.raises(ValueError, match=r"`[\w\[\]]+` must have shape .* got") as err:
        _call(fn, kw)
    if "[" in name:  # a layer's size error points at that layer (itself, or its output's hint), not a neighbour
        assert name in str(err.value)


@pytest.mark.parametrize("fn, name", ARRAYS)
def test_non_contiguous_input_raises_value_error(fn, name):
    kw = BINDINGS[fn]()
    x = _get(kw, name)
    _set(kw, name, torch.stack([x, x], dim=-1)[..., 0])  # same shape and values, last-dim stride 2
    assert not _get(kw, name).is_contiguous()
    with pytest.raises(ValueError, match=rf"`{re.escape(name)}` must be contiguous"):
        _call(fn, kw)


@pytest.mark.parametrize("fn, name", ARRAYS)
def test_a_tensor_on_another_device_raises(fn, name):
    kw = BINDINGS[fn]()
    _set(kw, name, FakeCudaTensor(_get(kw, name)))  # claims cuda:0 (DLPack kDLCUDA) while the rest is on the CPU
    n = re.escape(name)
    with pytest.raises(ValueError, match=rf"`{n}` is on a different device|device than `{n}`"):
        _call(fn, kw)


@pytest.mark.parametrize("fn", BINDINGS)
def test_all_cuda_claims_raise_cleanly_without_a_usable_gpu(fn):
    # Built without CUDA -> ValueError; built with CUDA but no GPU (or host memory) -> RuntimeError/ValueError.
    kw = BINDINGS[fn]()
    for name in _array_names(kw):
        _set(kw, name, FakeCudaTensor(_get(kw, name)))
    with pytest.raises((ValueError, RuntimeError), match=r"(?i)cuda"):
        _call(fn, kw)


@pytest.mark.parametrize("bad", [NB * BS, -2])
def test_write_kv_rejects_out_of_range_slots_without_writing(bad):
    kw = _write_kv()
    kw["slot_mapping"][2] = bad
    with pytest.raises(ValueError, match=rf"slot_mapping\[2\] = {bad} is outside \[-1, num_blocks \* block_size = 24\)"):
        ops.write_kv(**kw)
    assert kw["k_cache"].abs().sum() == 0 and kw["v_cache"].abs().sum() == 0  # validated before any write


@pytest.mark.parametrize("which, bad", [("src", NB), ("dst", -1)])
def test_copy_blocks_rejects_out_of_range_block_ids(which, bad):
    kw = _copy_blocks()
    kw[which][1] = bad
    before = kw["k_cache"].clone()
    with pytest.raises(ValueError, match=r"block id outside \[0, num_blocks = 6\)"):
        ops.copy_blocks(**kw)
    assert torch.equal(kw["k_cache"], before)


@pytest.mark.parametrize("field, index, bad, match", [
    ("block_tables", (1, 1), NB, r"block_tables\[1, 1\] = 6 is outside \[0, num_blocks = 6\)"),
    ("block_tables", (0, 0), -1, r"block_tables\[0, 0\] = -1"),
    ("context_lens", (1,), 9, r"context_lens\[1\] = 9 exceeds max_blocks_per_seq \* block_size = 8"),
    ("context_lens", (0,), 3, r"context_lens\[0\] = 3 is smaller than its query length 4"),
    ("query_start_loc", (2,), 4, r"query_start_loc\[-1\] = 4 must equal num_tokens = 5"),
    ("query_start_loc", (0,), 1, r"query_start_loc\[0\] must be 0"),
])
def test_paged_attention_rejects_bad_metadata_values(field, index, bad, match):
    kw = _paged_attention()
    kw[field][index] = bad
    with pytest.raises(ValueError, match=match):
        ops.paged_attention(**kw)


def test_paged_attention_rejects_head_counts_that_do_not_group():
    kw = _paged_attention()
    kw["q"] = torch.randn(T, 3, D)
    kw["out"] = torch.empty(T, 3, D)
    with pytest.raises(ValueError, match=r"num_q_heads \(3\) must be a multiple of num_kv_heads \(2\)"):
        ops.paged_attention(**kw)


@pytest.mark.parametrize("field, bad, match", [
    ("temperature", -0.5, r"temperature\[1\] = -0.5\d*; expected 0 \(greedy\) or a finite value >= 0.000001"),
    ("temperature", float("nan"), r"temperature\[1\]"),
    ("temperature", 1e-38, r"temperature\[1\] = 0.0\d*; .* must stay finite in float32"),  # logits / T -> inf
    ("top_k", -1, r"top_k\[1\] = -1; expected >= 0"),
    ("top_p", 0.0, r"top_p\[1\] = 0.0\d*; expected 0 < top_p <= 1"),
    ("top_p", 1.5, r"top_p\[1\]"),
    ("min_p", 1.5, r"min_p\[1\] = 1.5\d*; expected 0 <= min_p <= 1"),
])
def test_sample_rejects_out_of_range_parameters(field, bad, match):
    kw = _sample()
    kw[field][1] = bad
    with pytest.raises(ValueError, match=match):
        ops.sample(**kw)


def test_sample_rejects_an_empty_vocabulary():
    kw = _sample()
    kw["logits"] = torch.empty(3, 0)
    with pytest.raises(ValueError, match=r"empty vocabulary"):
        ops.sample(**kw)


def _overlapping(base, shape):
    """A view of `base`'s first elements with `shape` (memory shared with `base`)."""
    n = 1
    for d in shape:
        n *= d
    return base.view(-1)[:n].view(shape)


@pytest.mark.parametrize("fn, output, other", [
    ("paged_attention", "out", "q"), ("paged_attention", "out", "k_cache"), ("paged_attention", "out", "v_cache"),
    ("write_kv", "k_cache", "v_cache"), ("write_kv", "k_cache", "k"), ("write_kv", "v_cache", "v"),
    ("copy_blocks", "k_cache", "v_cache"),
    ("sample", "out_logprobs", "logits"), ("sample", "out_tokens", "seeds"),
    ("sample", "out_raw_logprobs", "out_logprobs"),
])
def test_an_output_sharing_memory_with_another_argument_is_refused(fn, output, other):
    # The kernels write outputs while still reading their inputs: aliasing gave silently wrong results.
    kw = BINDINGS[fn]()
    if fn == "write_kv" and other in ("k", "v"):  # the input as a view into the cache it is written to
        kw[other] = _overlapping(kw[output], tuple(kw[other].shape))
    else:
        kw[output] = _overlapping(kw[other], tuple(kw[output].shape)) if kw[other].dtype == kw[output].dtype \
            else kw[other].view(kw[output].dtype) if kw[other].numel() == kw[output].numel() else None
    assert kw[output] is not None
    names = sorted([f"`{output}`", f"`{other}`"])
    with pytest.raises(ValueError, match=rf"{fn}: ({re.escape(names[0])} overlaps {re.escape(names[1])}|"
                                         rf"{re.escape(names[1])} overlaps {re.escape(names[0])}) in memory"):
        _call(fn, kw)


def test_a_scale_beyond_float32_is_refused_not_turned_into_nan_output():
    kw = _paged_attention()
    kw["scale"] = 1e39  # finite as a double, inf as the kernels' float
    with pytest.raises(ValueError, match=r"`scale` must be finite in float32"):
        ops.paged_attention(**kw)


def test_overlap_is_measured_in_bytes_of_each_dtype():
    # out_logprobs (float32) over the second half of out_tokens' (int64) bytes: caught only with 8-byte widths.
    kw = _sample()
    r = kw["out_tokens"].numel()
    kw["out_logprobs"] = kw["out_tokens"].view(torch.float32)[r:2 * r]
    with pytest.raises(ValueError, match=r"overlaps .* in memory"):
        ops.sample(**kw)


@pytest.mark.parametrize("dtype, shown", [(torch.bool, "got bool "), (torch.complex64, "got complex64"),
                                          (getattr(torch, "float8_e4m3fn", None), "got an unsupported type")])
def test_the_dtype_error_names_the_dtype_given(dtype, shown):
    try:
        torch.utils.dlpack.to_dlpack(torch.zeros(1, dtype=dtype))
    except (TypeError, RuntimeError, BufferError):
        pytest.skip(f"this torch cannot export {dtype} through DLPack")
    kw = _linear()
    kw["x"] = torch.zeros(3, 8, dtype=dtype)
    with pytest.raises(TypeError, match=re.escape(shown)):
        ops.linear(**kw)
