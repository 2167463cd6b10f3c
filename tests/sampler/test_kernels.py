"""CapsuleKernels: the extension's kernels called with DLPack capsules give the same results and errors."""

from __future__ import annotations

import pytest
import torch

import alignkit._sampler as ext
from alignkit.engine.sampler.kernels import CapsuleKernels, default_kernels


def test_same_result_as_direct_call():
    g = torch.Generator().manual_seed(0)
    kc, vc = torch.randn(8, 4, 2, 16, generator=g), torch.randn(8, 4, 2, 16, generator=g)
    k, v, q = torch.randn(3, 2, 16, generator=g), torch.randn(3, 2, 16, generator=g), torch.randn(3, 4, 16, generator=g)
    slots = torch.tensor([0, 1, 5], dtype=torch.int64)
    tables = torch.tensor([[0, 1], [1, 2]], dtype=torch.int32)
    ctx, qsl = torch.tensor([2, 5], dtype=torch.int32), torch.tensor([0, 2, 3], dtype=torch.int32)
    outs = []
    for ops in (ext, CapsuleKernels(ext)):
        kc2, vc2, out = kc.clone(), vc.clone(), torch.empty_like(q)
        ops.write_kv(kc2, vc2, k, v, slots, 0)
        ops.paged_attention(out, q, kc2, vc2, tables, ctx, qsl, 0.25, 0)
        outs.append((kc2, vc2, out))
    for a, b in zip(*outs):
        assert torch.equal(a, b)


def test_parameters_and_non_tensor_arguments_pass():
    w = torch.nn.Parameter(torch.randn(5, 8))  # requires grad: exported through a detached view
    x, out = torch.randn(2, 8), torch.empty(2, 5)
    default_kernels().linear(out, x, w, None)
    torch.testing.assert_close(out, x @ w.detach().T, rtol=1e-5, atol=1e-5)
    out2 = torch.empty(2, 5)
    default_kernels().linear(out=out2, x=x, weight=w)  # keyword arguments are converted too
    assert torch.equal(out2, out)
    assert default_kernels().Scheduler is ext.Scheduler  # classes pass through unwrapped


def test_errors_are_the_extensions():
    x, w = torch.randn(2, 8, dtype=torch.float64), torch.randn(5, 8)
    with pytest.raises(TypeError, match="`x` must have dtype float32"):
        default_kernels().linear(torch.empty(2, 5), x, w, None)
    with pytest.raises(ValueError, match="contiguous"):
        default_kernels().linear(torch.empty(2, 5), torch.randn(8, 2).T, w, None)
