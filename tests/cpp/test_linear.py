"""alignkit._sampler.linear: x @ w.T (+ b) on the CPU, equal to torch's, and batch-invariant bitwise."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

import alignkit._sampler as ext

from .fake_dlpack import FakeCudaTensor
from .simd_flavour import expected_isa


def call(x, w, b=None):
    out = torch.empty(x.shape[0], w.shape[0])
    ext.linear(out, x, w, b)
    return out


# M covers full input-row tiles (3 rows; 4 with AVX-512) and every shorter tail, N full weight-row
# tiles (4) and 1..3-row tails, K full 8- and 16-lane vectors and tails; the large N is split into
# several thread work items.
@pytest.mark.parametrize("m", [1, 2, 3, 4, 5, 17, 64, 600])
@pytest.mark.parametrize("n,k", [(1, 8), (7, 13), (66, 256), (130, 37), (1030, 64)])
@pytest.mark.parametrize("bias", [False, True])
def test_matches_torch(m, n, k, bias):
    g = torch.Generator().manual_seed(m * 1000 + n + k)
    x, w = torch.randn(m, k, generator=g), torch.randn(n, k, generator=g)
    b = torch.randn(n, generator=g) if bias else None
    torch.testing.assert_close(call(x, w, b), F.linear(x, w, b), rtol=1e-5, atol=1e-5 * k ** 0.5)


def test_rows_are_batch_invariant():
    """A row's output is bitwise the same alone, among other rows, at any place and thread count."""
    g = torch.Generator().manual_seed(1)
    w, b = torch.randn(203, 131, generator=g), torch.randn(203, generator=g)
    xs = torch.randn(1100, 131, generator=g)  # many row chunks (36 rows each at K=131)
    alone = torch.cat([call(xs[i:i + 1], w, b) for i in range(1100)])
    assert torch.equal(call(xs, w, b), alone)
    perm = torch.randperm(1100, generator=g)
    assert torch.equal(call(xs[perm], w, b), alone[perm])
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert torch.equal(call(xs, w, b), alone)
    finally:
        torch.set_num_threads(threads)


def test_empty_and_zero_sized():
    w = torch.randn(5, 8)
    assert call(torch.randn(0, 8), w).shape == (0, 5)
    out = call(torch.randn(3, 0), torch.randn(5, 0))
    assert torch.equal(out, torch.zeros(3, 5))


@pytest.mark.parametrize("isa", ["baseline", "avx2"])
def test_narrower_kernels_match_torch_and_stay_batch_invariant(isa):
    """The 4-wide (no AVX2) and 8-wide (AVX2, no AVX-512) kernels, asked for by ALIGNKIT_ISA in a fresh process."""
    code = (
        "import torch, torch.nn.functional as F, alignkit._sampler as ext\n"
        f"assert ext.attention_isa() == {expected_isa(isa)!r}, ext.attention_isa()\n"
        "g = torch.Generator().manual_seed(3)\n"
        "def call(x, w, b):\n"
        "    out = torch.empty(x.shape[0], w.shape[0]); ext.linear(out, x, w, b); return out\n"
        # several 12-row chunks with a 3-row weight tail, and a 1-row input tail
        "for m, n, k in [(1, 5, 9), (5, 66, 256), (7, 130, 37), (17, 9, 40), (40, 7, 2100), (31, 11, 600)]:\n"
        "    x, w, b = torch.randn(m, k, generator=g), torch.randn(n, k, generator=g), torch.randn(n, generator=g)\n"
        "    out = call(x, w, b)\n"
        "    torch.testing.assert_close(out, F.linear(x, w, b), rtol=1e-5, atol=1e-4)\n"
        "    assert torch.equal(torch.cat([call(x[i:i + 1], w, b) for i in range(m)]), out)\n"
        "    w2 = torch.randn(n + 3, k, generator=g)\n"  # and as one layer of a group, bitwise
        "    outs = [torch.empty(m, n), torch.empty(m, n + 3)]; ext.linear_group(outs, x, [w, w2], [b, None])\n"
        "    assert torch.equal(outs[0], out) and torch.equal(outs[1], call(x, w2, None))\n"
    )
    env = {**os.environ, "ALIGNKIT_ISA": isa}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("env,message", [
    ({"ALIGNKIT_ISA": "sse9"}, "ALIGNKIT_ISA='sse9' is not one of baseline, avx2, avx512"),
    ({"ALIGNKIT_NO_AVX2": "1"}, "ALIGNKIT_NO_AVX2 is no longer read: set ALIGNKIT_ISA=baseline instead"),
])
def test_bad_isa_settings_are_clear_errors(env, message):
    code = ("import torch, alignkit._sampler as ext\n"
            "try:\n    ext.attention_isa()\nexcept ValueError as e:\n    print(e)\n")
    clean = {k: v for k, v in os.environ.items() if k not in ("ALIGNKIT_ISA", "ALIGNKIT_NO_AVX2")}
    done = subprocess.run([sys.executable, "-c", code], env={**clean, **env}, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0 and message in done.stdout, done.stdout + done.stderr


def test_isa_setting_ignores_case():
    code = "import torch, alignkit._sampler as ext\nprint(ext.attention_isa())\n"
    done = subprocess.run([sys.executable, "-c", code], env={**os.environ, "ALIGNKIT_ISA": "BaseLine"},
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "baseline", done.stderr


@pytest.mark.parametrize("case,exc,match", [
    ("dtype", TypeError, "`x` must have dtype float32"),
    ("weight_shape", ValueError, "`weight` must have shape"),
    ("out_shape", ValueError, "`out` must have shape"),
    ("bias_shape", ValueError, "`bias` must have shape"),
    ("strided", ValueError, "`weight` must be contiguous"),
    ("ndim", ValueError, "`x` must be 2-D"),
    ("overlap", ValueError, "`out` overlaps `x`"),
])
def test_bad_input_raises(case, exc, match):
    x, w, out, b = torch.randn(3, 8), torch.randn(5, 8), torch.empty(3, 5), torch.randn(5)
    if case == "dtype":
        x = x.double()
    elif case == "weight_shape":
        w = torch.randn(5, 9)
    elif case == "out_shape":
        out = torch.empty(5, 3)
    elif case == "bias_shape":
        b = torch.randn(4)
    elif case == "strided":
        w = torch.randn(8, 5).T
    elif case == "ndim":
        x = x[None]
    elif case == "overlap":
        flat = torch.randn(40)  # out shares the last 8 floats of x
        x, out = flat[:24].view(3, 8), flat[16:31].view(3, 5)
    with pytest.raises(exc, match=match):
        ext.linear(out, x, w, b)


# linear_group: several layers on the same input in one call (compiled steps' q/k/v, gate/up).
@pytest.mark.parametrize("m", [1, 5, 56, 600])
@pytest.mark.parametrize("ns,k", [((256, 128, 128), 256), ((704, 704), 256), ((7, 1, 130, 66), 37), ((0, 9), 40)])
def test_group_outputs_equal_separate_calls_bitwise(m, ns, k):
    """Each layer's output is bitwise its own `linear` call's, with or without a bias, whatever its neighbours."""
    g = torch.Generator().manual_seed(m + k + len(ns))
    x = torch.randn(m, k, generator=g)
    ws = [torch.randn(n, k, generator=g) for n in ns]
    bs = [torch.randn(n, generator=g) if i % 2 else None for i, n in enumerate(ns)]
    outs = [torch.empty(m, n) for n in ns]
    ext.linear_group(outs, x, ws, bs)
    for out, w, b in zip(outs, ws, bs):
        assert torch.equal(out, call(x, w, b))
        torch.testing.assert_close(out, F.linear(x, w, b), rtol=1e-5, atol=1e-5 * k ** 0.5)


def test_group_rows_are_batch_invariant():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(40, 64, generator=g)
    ws = [torch.randn(n, 64, generator=g) for n in (48, 16, 16)]
    outs = [torch.empty(40, w.shape[0]) for w in ws]
    ext.linear_group(outs, x, ws, [None] * 3)
    for i in (0, 17, 39):
        row = [torch.empty(1, w.shape[0]) for w in ws]
        ext.linear_group(row, x[i:i + 1], ws, [None] * 3)
        assert all(torch.equal(r[0], o[i]) for r, o in zip(row, outs))


@pytest.mark.parametrize("case,exc,match", [
    ("lengths", ValueError, "outs, weights and biases must have the same length"),
    ("dtype", TypeError, "`weights\\[1\\]` must have dtype float32"),
    ("weight_shape", ValueError, "`weights\\[1\\]` must have shape"),
    ("out_shape", ValueError, "`outs\\[0\\]` must have shape"),
    ("bias_shape", ValueError, "`biases\\[1\\]` must have shape"),
    ("outs_overlap", ValueError, "`outs\\[0\\]` overlaps `outs\\[1\\]`"),
    ("out_overlaps_weight", ValueError, "`outs\\[0\\]` overlaps `weights\\[1\\]`"),
    ("strided", ValueError, "`weights\\[1\\]` must be contiguous"),
    ("device", ValueError, "`weights\\[1\\]` is on a different device|device than `weights\\[1\\]`"),
])
def test_group_bad_input_raises(case, exc, match):
    x, ws = torch.randn(3, 8), [torch.randn(5, 8), torch.randn(4, 8)]
    outs, bs = [torch.empty(3, 5), torch.empty(3, 4)], [None, torch.randn(4)]
    if case == "lengths":
        bs = [None]
    elif case == "dtype":
        ws[1] = ws[1].double()
    elif case == "weight_shape":
        ws[1] = torch.randn(4, 9)
    elif case == "out_shape":
        outs[0] = torch.empty(3, 4)
    elif case == "bias_shape":
        bs[1] = torch.randn(5)
    elif case == "outs_overlap":
        flat = torch.empty(40)
        outs = [flat[:15].view(3, 5), flat[10:22].view(3, 4)]
    elif case == "out_overlaps_weight":
        flat = torch.randn(64)
        ws[1], outs[0] = flat[:32].view(4, 8), flat[20:35].view(3, 5)
    elif case == "strided":
        ws[1] = torch.randn(8, 4).T
    elif case == "device":
        ws[1] = FakeCudaTensor(ws[1])  # claims cuda:0 while the rest is on the CPU
    with pytest.raises(exc, match=match):
        ext.linear_group(outs, x, ws, bs)


# linear_kn: the weight stored [in, out] (transformers' Conv1D, GPT-2).
def call_kn(x, w, b=None):
    out = torch.empty(x.shape[0], w.shape[1])
    ext.linear_kn(out, x, w, b)
    return out


# M covers full 6-row tiles and every shorter tail; N full 64/16-column tiles (AVX-512), single
# vectors and scalar columns; K includes 0 and 1.
@pytest.mark.parametrize("m", [1, 5, 6, 13, 64])
@pytest.mark.parametrize("k,n", [(8, 1), (13, 7), (256, 66), (37, 130), (64, 1030), (1, 17), (0, 9), (40, 93)])
@pytest.mark.parametrize("bias", [False, True])
def test_kn_matches_torch(m, k, n, bias):
    g = torch.Generator().manual_seed(m * 1000 + n + k)
    x, w = torch.randn(m, k, generator=g), torch.randn(k, n, generator=g)
    b = torch.randn(n, generator=g) if bias else None
    want = torch.addmm(b, x, w) if bias else x @ w
    torch.testing.assert_close(call_kn(x, w, b), want, rtol=1e-5, atol=1e-5 * max(k, 1) ** 0.5)


def test_kn_rows_are_batch_invariant():
    """A row's output is bitwise the same alone, among other rows, at any place and thread count."""
    g = torch.Generator().manual_seed(2)
    w, b = torch.randn(131, 203, generator=g), torch.randn(203, generator=g)
    xs = torch.randn(301, 131, generator=g)
    alone = torch.cat([call_kn(xs[i:i + 1], w, b) for i in range(301)])
    assert torch.equal(call_kn(xs, w, b), alone)
    perm = torch.randperm(301, generator=g)
    assert torch.equal(call_kn(xs[perm], w, b), alone[perm])
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert torch.equal(call_kn(xs, w, b), alone)
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("isa", ["baseline", "avx2"])
def test_kn_narrower_kernels_match_torch_and_stay_batch_invariant(isa):
    code = (
        "import torch, alignkit._sampler as ext\n"
        "g = torch.Generator().manual_seed(4)\n"
        "def call(x, w, b):\n"
        "    out = torch.empty(x.shape[0], w.shape[1]); ext.linear_kn(out, x, w, b); return out\n"
        "for m, k, n in [(1, 9, 5), (7, 256, 66), (13, 37, 130), (6, 40, 17), (5, 40, 93)]:\n"
        "    x, w, b = torch.randn(m, k, generator=g), torch.randn(k, n, generator=g), torch.randn(n, generator=g)\n"
        "    out = call(x, w, b)\n"
        "    torch.testing.assert_close(out, torch.addmm(b, x, w), rtol=1e-5, atol=1e-4)\n"
        "    assert torch.equal(torch.cat([call(x[i:i + 1], w, b) for i in range(m)]), out)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], env={**os.environ, "ALIGNKIT_ISA": isa},
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("case,exc,match", [
    ("dtype", TypeError, "`weight` must have dtype float32"),
    ("weight_shape", ValueError, r"`weight` must have shape .*\[in_features, out_features\]"),
    ("out_shape", ValueError, "`out` must have shape"),
    ("bias_shape", ValueError, "`bias` must have shape"),
    ("overlap", ValueError, "linear_kn: `out` overlaps `weight`"),
])
def test_kn_bad_input_raises(case, exc, match):
    x, w, out, b = torch.randn(3, 8), torch.randn(8, 5), torch.empty(3, 5), torch.randn(5)
    if case == "dtype":
        w = w.double()
    elif case == "weight_shape":
        w = torch.randn(5, 8)
    elif case == "out_shape":
        out = torch.empty(5, 3)
    elif case == "bias_shape":
        b = torch.randn(4)
    elif case == "overlap":
        flat = torch.randn(60)  # out shares floats with the weight
        w, out = flat[:40].view(8, 5), flat[30:45].view(3, 5)
    with pytest.raises(exc, match=match):
        ext.linear_kn(out, x, w, b)


def test_kn_fused_flavours_agree_bitwise(tmp_path):
    """AVX2 and AVX-512 both fuse each multiply-add of the chain, so linear_kn gives the same bits on both."""
    code = (
        "import sys, torch, alignkit._sampler as ext\n"
        "g = torch.Generator().manual_seed(5)\n"
        # N = 93: 64-column tiles, a single 16-lane vector (8-lane on AVX2) and scalar columns
        "x, w, b = torch.randn(29, 300, generator=g), torch.randn(300, 93, generator=g), torch.randn(93, generator=g)\n"
        "out = torch.empty(29, 93); ext.linear_kn(out, x, w, b)\n"
        "torch.save((ext.attention_isa(), out), sys.argv[1])\n"
    )
    results = []
    for isa in ("avx2", "avx512"):
        path = str(tmp_path / f"{isa}.pt")
        done = subprocess.run([sys.executable, "-c", code, path], env={**os.environ, "ALIGNKIT_ISA": isa},
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        results.append(torch.load(path))
    (isa_a, out_a), (isa_b, out_b) = results
    if "baseline" in (isa_a, isa_b) or isa_a == isa_b:
        pytest.skip(f"this CPU runs {isa_a} and {isa_b}: not two FMA flavours to compare")
    assert torch.equal(out_a, out_b), (isa_a, isa_b)
