"""write_kv, paged_attention and copy_blocks agree with dense causal attention computed in plain torch."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

import alignkit._sampler as ops

from .simd_flavour import expected_isa

TESTS_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # holds the package `cpp`

# Kernels run on every device this build and machine offer (CUDA only with a GPU and a CUDA build).
DEVICES = ["cpu"] + (["cuda"] if ops.has_cuda and torch.cuda.is_available() else [])

TOL = {torch.float32: dict(atol=1e-5, rtol=1e-5), torch.bfloat16: dict(atol=2e-2, rtol=2e-2),
       torch.float16: dict(atol=2e-3, rtol=2e-3)}


def dense_reference(q, k_hist, v_hist, start, scale):
    """Causal softmax attention in fp32: query j (at position start + j) sees history keys 0..start + j."""
    hq, hk = q.shape[1], k_hist.shape[1]
    k = k_hist.float().repeat_interleave(hq // hk, dim=1)  # GQA: q head h reads kv head h // (hq // hk)
    v = v_hist.float().repeat_interleave(hq // hk, dim=1)
    scores = torch.einsum("qhd,khd->hqk", q.float(), k) * scale
    qpos = torch.arange(q.shape[0])[:, None] + start
    scores = scores.masked_fill(torch.arange(k.shape[0])[None, :] > qpos, float("-inf"))
    return torch.einsum("hqk,khd->qhd", scores.softmax(-1), v)


def run_step(seqs, *, dtype, hq, hk, d, block_size, num_blocks, seed, device="cpu"):
    """seqs: list of (cached_before, q_len). Returns (out, reference) after one write_kv + attention step."""
    g = torch.Generator().manual_seed(seed)
    dev = torch.device(device)
    stream = torch.cuda.current_stream(dev).cuda_stream if dev.type == "cuda" else 0
    max_blocks = max(-(-(c + n) // block_size) for c, n in seqs)
    perm = torch.randperm(num_blocks, generator=g)  # random, disjoint block tables
    tables = perm[: len(seqs) * max_blocks].view(len(seqs), max_blocks).to(torch.int32)
    kc = torch.randn(num_blocks, block_size, hk, d, generator=g).to(dtype).to(dev)  # garbage where nothing written
    vc = torch.randn(num_blocks, block_size, hk, d, generator=g).to(dtype).to(dev)
    tables_dev = tables.to(dev)
    hist_k, hist_v, q_parts, k_new, v_new, slots, qsl, ctx = [], [], [], [], [], [], [0], []

    def slot(s, p):
        return int(tables[s, p // block_size]) * block_size + p % block_size

    for s, (cached, n) in enumerate(seqs):
        hk_s = torch.randn(cached + n, hk, d, generator=g).to(dtype)
        hv_s = torch.randn(cached + n, hk, d, generator=g).to(dtype)
        hist_k.append(hk_s)
        hist_v.append(hv_s)
        if cached:  # an earlier step wrote the history
            ops.write_kv(kc, vc, hk_s[:cached].contiguous().to(dev), hv_s[:cached].contiguous().to(dev),
                         torch.tensor([slot(s, p) for p in range(cached)], dtype=torch.int64, device=dev), stream)
        q_parts.append(torch.randn(n, hq, d, generator=g).to(dtype))
        k_new.append(hk_s[cached:])
        v_new.append(hv_s[cached:])
        slots += [slot(s, p) for p in range(cached, cached + n)]
        qsl.append(qsl[-1] + n)
        ctx.append(cached + n)
    q = torch.cat(q_parts)
    ops.write_kv(kc, vc, torch.cat(k_new).to(dev), torch.cat(v_new).to(dev),
                 torch.tensor(slots, dtype=torch.int64, device=dev), stream)
    out = torch.full_like(q, float("nan")).to(dev)
    scale = d ** -0.5
    ops.paged_attention(out, q.to(dev), kc, vc, tables_dev, torch.tensor(ctx, dtype=torch.int32, device=dev),
                        torch.tensor(qsl, dtype=torch.int32, device=dev), scale, stream)
    out = out.cpu()
    ref = torch.cat([dense_reference(q_parts[s], hist_k[s], hist_v[s], c, scale) for s, (c, n) in enumerate(seqs)])
    return out, ref


# Mixed steps: full prefills (cached 0), prefill chunks (cached > 0, n > 1) and decodes (n = 1).
MIXES = [[(0, 7), (12, 1), (5, 4), (0, 1), (30, 1)], [(3, 1)], [(0, 33)], [(16, 1), (15, 1), (17, 2)]]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("hq, hk", [(4, 4), (8, 2), (4, 1)], ids=["mha", "gqa", "mqa"])
def test_paged_attention_matches_dense_causal_attention(dtype, hq, hk, device):
    for i, mix in enumerate(MIXES):
        out, ref = run_step(mix, dtype=dtype, hq=hq, hk=hk, d=16, block_size=4, num_blocks=64, seed=i, device=device)
        assert out.dtype == dtype
        torch.testing.assert_close(out.float(), ref.to(dtype).float(), **TOL[dtype])


def test_paged_attention_odd_head_dim_and_block_size():
    # head_dim not a multiple of the 8-wide inner loop; block size 5.
    out, ref = run_step([(9, 3), (0, 6), (22, 1)], dtype=torch.float32, hq=6, hk=3, d=37, block_size=5,
                        num_blocks=40, seed=7)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("d", [32, 64, 128])
@pytest.mark.parametrize("hq, hk, block_size", [(4, 4, 16), (6, 2, 16), (6, 2, 5), (8, 2, 8)],
                         ids=["g1-bs16", "g3-bs16", "g3-bs5", "g4-bs8"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_paged_attention_specialised_head_dims(d, hq, hk, block_size, dtype):
    # head_dim 32/64/128 take the compiled-in kernels: keys W at a time (full groups and block
    # tails), value rows shared by pairs of q heads (odd q heads per kv head leave one alone).
    mix = [(0, 19), (37, 1), (16, 1), (8, 5), (3, 1)]
    out, ref = run_step(mix, dtype=dtype, hq=hq, hk=hk, d=d, block_size=block_size, num_blocks=96, seed=d + hq)
    torch.testing.assert_close(out.float(), ref.to(dtype).float(), **TOL[dtype])


def test_default_kernels_use_the_widest_simd_the_cpu_has():
    cap = os.environ.get("ALIGNKIT_ISA", "avx512").lower()
    assert ops.attention_isa() == expected_isa(cap)


@pytest.mark.parametrize("isa", ["baseline", "avx2"])
def test_narrower_kernels_match_dense_attention(isa):
    # ALIGNKIT_ISA pins the 4-wide baseline kernels (CPUs without AVX2/FMA) or the 8-wide AVX2 ones
    # (CPUs without AVX-512); read once per process, so in a subprocess. Both head-dim paths, both key tails.
    code = ("import torch, sys; sys.path.insert(0, %r); from cpp.test_attention import run_step, ops\n"
            "from cpp.simd_flavour import expected_isa\n"
            "assert ops.attention_isa() == expected_isa(%r), ops.attention_isa()\n"
            "for d, bs in ((32, 16), (64, 5), (16, 4)):\n"
            "    out, ref = run_step([(0, 19), (37, 1), (8, 5)], dtype=torch.float32, hq=6, hk=2, d=d, "
            "block_size=bs, num_blocks=96, seed=d)\n"
            "    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)\n" % (TESTS_DIR, isa))
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "ALIGNKIT_ISA": isa},
                   cwd=os.path.dirname(__file__))


def test_write_kv_places_rows_at_slots_and_skips_minus_one():
    kc = torch.zeros(3, 2, 1, 4)
    vc = torch.zeros(3, 2, 1, 4)
    k = torch.arange(12.0).view(3, 1, 4)
    v = -k
    ops.write_kv(kc, vc, k, v, torch.tensor([5, -1, 0], dtype=torch.int64))
    # slot 5 = block 2, offset 1; slot 0 = block 0, offset 0; row 1 skipped.
    assert torch.equal(kc[2, 1, 0], torch.tensor([0.0, 1, 2, 3]))
    assert torch.equal(kc[0, 0, 0], torch.tensor([8.0, 9, 10, 11]))
    assert torch.equal(vc[2, 1, 0], -kc[2, 1, 0])
    assert kc.abs().sum() == 0 + (0 + 1 + 2 + 3) + (8 + 9 + 10 + 11)  # nothing else written


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_copy_blocks_copies_whole_blocks_in_both_caches(dtype, device):
    kc = torch.randn(5, 4, 2, 8).to(dtype).to(device)
    vc = torch.randn(5, 4, 2, 8).to(dtype).to(device)
    k0, v0 = kc.clone(), vc.clone()
    stream = torch.cuda.current_stream().cuda_stream if device == "cuda" else 0
    ops.copy_blocks(kc, vc, torch.tensor([1, 3], dtype=torch.int64, device=device),
                    torch.tensor([4, 0], dtype=torch.int64, device=device), stream)
    assert torch.equal(kc[4], k0[1]) and torch.equal(kc[0], k0[3])
    assert torch.equal(vc[4], v0[1]) and torch.equal(vc[0], v0[3])
    assert torch.equal(kc[1:4], k0[1:4]) and torch.equal(vc[1:4], v0[1:4])  # sources and others untouched


def test_forked_sequences_share_prefix_blocks_after_copy_on_write():
    # Two sequences share block 0 (full) and block 1 (partial, 2 of 4 tokens); the second gets a private
    # copy of block 1 (copy_blocks) and each then decodes its own token at position 6.
    bs, d = 4, 8
    kc = torch.zeros(6, bs, 1, d)
    vc = torch.zeros(6, bs, 1, d)
    prompt_k, prompt_v = torch.randn(6, 1, d), torch.randn(6, 1, d)
    ops.write_kv(kc, vc, prompt_k, prompt_v, torch.arange(6, dtype=torch.int64))  # blocks 0, 1
    ops.copy_blocks(kc, vc, torch.tensor([1], dtype=torch.int64), torch.tensor([3], dtype=torch.int64))
    new_k, new_v = torch.randn(2, 1, d), torch.randn(2, 1, d)
    ops.write_kv(kc, vc, new_k, new_v, torch.tensor([1 * bs + 2, 3 * bs + 2], dtype=torch.int64))
    q = torch.randn(2, 2, d)
    out = torch.empty_like(q)
    ops.paged_attention(out, q, kc, vc, torch.tensor([[0, 1], [0, 3]], dtype=torch.int32),
                        torch.tensor([7, 7], dtype=torch.int32), torch.tensor([0, 1, 2], dtype=torch.int32), 0.5)
    for s in range(2):
        hist_k = torch.cat([prompt_k, new_k[s:s + 1]])
        hist_v = torch.cat([prompt_v, new_v[s:s + 1]])
        ref = dense_reference(q[s:s + 1], hist_k, hist_v, 6, 0.5)
        torch.testing.assert_close(out[s:s + 1], ref, atol=1e-5, rtol=1e-5)


def test_thread_count_does_not_change_results():
    # ALIGNKIT_NUM_THREADS is read once per process: compare a 1-thread subprocess with this process.
    code = ("import torch, alignkit._sampler as ops, sys; sys.path.insert(0, %r); "
            "from cpp.test_attention import run_step; "
            "out, _ = run_step([(0, 9), (20, 1), (4, 3)], dtype=torch.float32, hq=8, hk=2, d=16, block_size=4, "
            "num_blocks=64, seed=3); assert ops.num_threads() == 1; torch.save(out, sys.argv[1])"
            % TESTS_DIR)
    path = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"ak_threads_{os.getpid()}.pt")
    env = {**os.environ, "ALIGNKIT_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-c", code, path], check=True, env=env, cwd=os.path.dirname(__file__))
    single = torch.load(path)
    os.remove(path)
    multi, _ = run_step([(0, 9), (20, 1), (4, 3)], dtype=torch.float32, hq=8, hk=2, d=16, block_size=4,
                        num_blocks=64, seed=3)
    assert torch.equal(single, multi)  # each work item is computed by one thread: bitwise identical


def _numpy_attention(_=None):
    """A decode step built with numpy only, big enough (~4M multiply-adds) to run in parallel."""
    import numpy as np

    rng = np.random.RandomState(0)
    kc = rng.randn(1024, 4, 2, 64).astype(np.float32)
    vc = rng.randn(1024, 4, 2, 64).astype(np.float32)
    q = rng.randn(64, 8, 64).astype(np.float32)
    out = np.empty_like(q)
    tables = rng.permutation(1024).reshape(64, 16).astype(np.int32)  # 64 sequences x 64 cached keys
    ops.paged_attention(out, q, kc, vc, tables, np.full(64, 64, np.int32), np.arange(65, dtype=np.int32), 0.125)
    return out


def test_kernels_work_in_a_forked_child_after_the_parent_used_the_threads():
    import multiprocessing

    torch.mm(torch.randn(512, 512), torch.randn(512, 512))  # torch's OpenMP team is up in the parent
    parent = _numpy_attention()  # and our kernels ran on threads there
    with multiprocessing.get_context("fork").Pool(1) as pool:  # the child inherits no threads
        # libgomp's team does not survive fork: a child that tried to use it would hang, not fail
        child = pool.map_async(_numpy_attention, [0], chunksize=1).get(timeout=120)[0]
    assert (child == parent).all()


@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc/self/maps; the OpenMP build is the Linux/GCC one")
def test_kernels_share_torchs_openmp_team_and_thread_count():
    # One OpenMP runtime in the process whichever is imported first, and the kernels' thread
    # count follows torch.set_num_threads (two pools on the same cores slowed rollouts ~1.3x).
    code = ("import sys\n"
            "first, second = sys.argv[1:3]\n"
            "__import__(first); __import__(second)\n"
            "import torch, alignkit._sampler as ops\n"
            "assert ops.uses_openmp\n"
            "libs = {l.split()[-1] for l in open('/proc/self/maps') if 'libgomp' in l}\n"
            "assert len(libs) == 1, libs\n"
            "torch.set_num_threads(1); assert ops.num_threads() == 1, ops.num_threads()\n"
            "torch.set_num_threads(3); assert ops.num_threads() == 3, ops.num_threads()\n")
    env = {k: v for k, v in os.environ.items() if k != "ALIGNKIT_NUM_THREADS"}
    for order in (["torch", "alignkit._sampler"], ["alignkit._sampler", "torch"]):
        subprocess.run([sys.executable, "-c", code, *order], check=True, env=env)


def shared_prompt_step(dtype, d, group_sizes, block_size=8, seed=0):
    """A step over groups of samples forked from one prompt: the prompt's full blocks are shared.

    Returns (tables with shared blocks, the same tables with every shared block copied to a
    private one, the caches, q, context_lens, query_start_loc). Samples decode one token, except
    the first of each group, which runs a 3-token chunk. Two more sequences share all their
    blocks with different lengths (a block's rows read by a later token are fewer than by the first).
    """
    g = torch.Generator().manual_seed(seed)
    hk, hq = 2, 4
    kc = torch.randn(1024, block_size, hk, d, generator=g).to(dtype)
    vc = torch.randn(1024, block_size, hk, d, generator=g).to(dtype)
    free = iter(range(1024))
    shared_rows, private_rows, ctx, qlens = [], [], [], []

    def add(shared, own, context, qlen):
        copies = [next(free) for _ in shared]
        for src, dst in zip(shared, copies):
            kc[dst], vc[dst] = kc[src], vc[src]
        shared_rows.append(shared + own)
        private_rows.append(copies + own)
        ctx.append(context)
        qlens.append(qlen)

    for gi, n in enumerate(group_sizes):
        prompt_blocks = [next(free) for _ in range(3 + gi % 2)]  # 24 or 32 prompt tokens, all full blocks
        for j in range(n):
            own = [next(free) for _ in range(1 + (j % 3))]  # each sample's own generated tokens
            add(prompt_blocks, own, (len(prompt_blocks) + len(own)) * block_size - j % block_size, 3 if j == 0 else 1)
    common = [next(free) for _ in range(3)]
    add(common, [], 3 * block_size - 2, 1)
    add(common, [], 2 * block_size + 2, 1)
    width = max(len(r) for r in shared_rows)
    pad = lambda rows: torch.tensor([r + [0] * (width - len(r)) for r in rows], dtype=torch.int32)  # noqa: E731
    qsl = torch.tensor([0] + torch.tensor(qlens).cumsum(0).tolist(), dtype=torch.int32)
    q = torch.randn(int(qsl[-1]), hq, d, generator=g).to(dtype)
    return pad(shared_rows), pad(private_rows), kc, vc, q, torch.tensor(ctx, dtype=torch.int32), qsl


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("d", [16, 64])  # 64: enough work that the items run on the threads in parallel
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("group_sizes", [[5, 1, 8], [24]], ids=["groups", "one-big-group"])
def test_shared_prompt_blocks_give_bitwise_the_results_of_private_copies(dtype, d, threads, group_sizes):
    # The kernel runs the tokens of samples that share their first block together, reading each
    # shared block once; a token's result must not depend on that grouping (nor on how large
    # groups are split to keep threads busy: 24 samples of one prompt on 1 or 2 threads).
    shared, private, kc, vc, q, ctx, qsl = shared_prompt_step(dtype, d, group_sizes)
    outs = []
    saved = torch.get_num_threads()
    try:
        torch.set_num_threads(threads)
        for tables in (shared, private):
            out = torch.full_like(q, float("nan"))
            ops.paged_attention(out, q, kc, vc, tables, ctx, qsl, d ** -0.5)
            outs.append(out)
    finally:
        torch.set_num_threads(saved)
    assert torch.equal(outs[0], outs[1])
    # And both are causal attention over each sequence's history, gathered through its table.
    bs = kc.shape[1]
    for s in range(ctx.shape[0]):
        c, q0, q1 = int(ctx[s]), int(qsl[s]), int(qsl[s + 1])
        pos = torch.arange(c)
        blocks = shared[s, pos // bs].long()
        ref = dense_reference(q[q0:q1], kc[blocks, pos % bs], vc[blocks, pos % bs], c - (q1 - q0), d ** -0.5)
        torch.testing.assert_close(outs[0][q0:q1].float(), ref.to(dtype).float(), **TOL[dtype])
