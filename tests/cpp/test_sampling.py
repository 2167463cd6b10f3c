"""The sampling kernel draws from the exact filtered distributions and reports the trainer's log-probs."""

from __future__ import annotations

import pytest
import torch
from scipy import stats

import alignkit._sampler as ops


# Kernels run on every device this build and machine offer (CUDA only with a GPU and a CUDA build).
DEVICES = ["cpu"] + (["cuda"] if ops.has_cuda and torch.cuda.is_available() else [])


def sample(logits, temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, seeds=0, sample_ids=0, positions=None,
           device="cpu"):
    """Calls ops.sample with per-row parameters broadcast from scalars; returns CPU (tokens, logprobs, raw)."""
    r = logits.shape[0]

    def col(x, dtype):
        t = torch.as_tensor(x, dtype=dtype)
        return (t.expand(r) if t.ndim == 0 else t).contiguous().to(device)

    positions = torch.arange(r) if positions is None else positions
    out = (torch.empty(r, dtype=torch.int64, device=device), torch.empty(r, device=device),
           torch.empty(r, device=device))
    stream = torch.cuda.current_stream().cuda_stream if device == "cuda" else 0
    ops.sample(logits.contiguous().to(device), col(temperature, torch.float32), col(top_k, torch.int32),
               col(top_p, torch.float32), col(min_p, torch.float32), col(seeds, torch.int64),
               col(sample_ids, torch.int64), col(positions, torch.int64), *out, stream)
    return tuple(o.cpu() for o in out)


def filtered(logits_row, temperature, top_k=0, top_p=1.0, min_p=0.0):
    """The target distribution, computed independently: min-p, then top-k, then top-p, renormalised."""
    p = torch.softmax(logits_row.double() / temperature, -1)
    keep = torch.ones_like(p, dtype=torch.bool)
    if min_p > 0:
        keep &= p >= min_p * p.max()
    if top_k > 0:
        kth = torch.sort(torch.where(keep, p, torch.zeros_like(p)), descending=True).values[top_k - 1]
        keep &= p >= kth
    if top_p < 1:
        q = torch.where(keep, p, torch.zeros_like(p))
        q = q / q.sum()
        order = torch.sort(q, descending=True).indices
        before = torch.cumsum(q[order], 0) - q[order]  # mass strictly more probable (no ties here)
        keep_sorted = before < top_p
        keep2 = torch.zeros_like(keep)
        keep2[order] = keep_sorted
        keep &= keep2
    q = torch.where(keep, p, torch.zeros_like(p))
    return q / q.sum()


N = 40_000
ROW = torch.randn(1, 24, generator=torch.Generator().manual_seed(5)) * 1.5


@pytest.mark.parametrize("params", [
    dict(temperature=1.0), dict(temperature=0.6), dict(temperature=1.7),
    dict(temperature=1.0, top_k=5), dict(temperature=0.8, top_p=0.7), dict(temperature=1.2, min_p=0.1),
    dict(temperature=0.9, min_p=0.02, top_k=10, top_p=0.8),
], ids=lambda p: ",".join(f"{k}={v}" for k, v in p.items()))
@pytest.mark.parametrize("device", DEVICES)
def test_draws_follow_the_exact_filtered_distribution(params, device):
    target = filtered(ROW[0], **params)
    tokens, _, _ = sample(ROW.expand(N, -1), seeds=11, positions=torch.arange(N), device=device, **params)
    counts = torch.bincount(tokens, minlength=ROW.shape[1]).double()
    support = target > 0
    assert counts[~support].sum() == 0, "drew a token the filters remove"
    # Chi-square goodness of fit on the support; with a fixed seed this is deterministic, and a correct
    # sampler passes at p > 1e-4 (a 1e-4 false-alarm rate per seed, checked once when written).
    exp = target[support] * N
    chi2, pval = stats.chisquare(counts[support], exp)
    assert pval > 1e-4, (chi2, pval)
    tv = 0.5 * (counts / N - target).abs().sum()
    assert tv < 0.02


def test_top_p_with_a_wide_nucleus_keeps_exactly_the_right_tokens():
    # ~2000 near-uniform tokens: a nucleus of well over a thousand tokens, cut between close levels.
    g = torch.Generator().manual_seed(2)
    row = torch.randn(1, 2000, generator=g) * 0.3
    target = filtered(row[0], 1.0, top_p=0.9)
    tokens, _, _ = sample(row.expand(8000, -1), top_p=0.9, seeds=3)
    support = target > 0
    assert 1000 < int(support.sum()) < 2000
    assert bool(support[tokens].all())
    # The rarest kept tokens are drawn too (nucleus boundary right): coverage of the support is broad.
    assert torch.unique(tokens).numel() > 0.9 * int(support.sum())


@pytest.mark.parametrize("device", DEVICES)
def test_greedy_is_argmax_with_lowest_index_on_ties_and_reports_t1_logprobs(device):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(64, 1000, generator=g)
    logits[3, [10, 500]] = 100.0  # tie: lowest index wins
    tokens, lp, raw = sample(logits, temperature=0.0, top_k=7, top_p=0.5, device=device)
    expect = logits.argmax(-1)
    assert expect[3] == 10 and torch.equal(tokens, expect)
    ref = torch.log_softmax(logits, -1).gather(1, expect[:, None])[:, 0]
    torch.testing.assert_close(lp, ref, atol=1e-5, rtol=0)
    torch.testing.assert_close(raw, ref, atol=1e-5, rtol=0)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("params", [dict(), dict(top_k=20, top_p=0.9, min_p=0.01)])
def test_logprobs_are_full_softmax_at_temperature_and_raw_at_t1(params, device):
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(256, 3000, generator=g) * 3
    temp = torch.rand(256, generator=g) * 1.5 + 0.3
    tokens, lp, raw = sample(logits, temperature=temp, seeds=9, device=device, **params)
    ref_t = torch.log_softmax(logits / temp[:, None], -1).gather(1, tokens[:, None])[:, 0]
    ref_1 = torch.log_softmax(logits, -1).gather(1, tokens[:, None])[:, 0]
    torch.testing.assert_close(lp, ref_t, atol=1e-5, rtol=0)
    torch.testing.assert_close(raw, ref_1, atol=1e-5, rtol=0)


def test_same_seed_sample_id_position_gives_same_token_whatever_the_batch():
    g = torch.Generator().manual_seed(4)
    logits = torch.randn(40, 500, generator=g)
    seeds = torch.randint(0, 2**62, (40,), generator=g)
    sids = torch.randint(0, 8, (40,), generator=g)
    pos = torch.randint(0, 4096, (40,), generator=g)
    temp = torch.full((40,), 0.9)
    topk = torch.tensor([0, 50] * 20, dtype=torch.int32)
    full, lp_full, _ = sample(logits, temperature=temp, top_k=topk, seeds=seeds, sample_ids=sids, positions=pos)
    perm = torch.randperm(40, generator=g)
    shuffled, lp_shuf, _ = sample(logits[perm], temperature=temp[perm], top_k=topk[perm], seeds=seeds[perm],
                                  sample_ids=sids[perm], positions=pos[perm])
    assert torch.equal(shuffled, full[perm]) and torch.equal(lp_shuf, lp_full[perm])
    for i in (0, 7, 31):  # alone, in a batch of one
        alone, _, _ = sample(logits[i:i + 1], temperature=temp[i:i + 1], top_k=topk[i:i + 1], seeds=seeds[i:i + 1],
                             sample_ids=sids[i:i + 1], positions=pos[i:i + 1])
        assert alone[0] == full[i]


def test_sample_id_seed_and_position_each_change_the_draw():
    logits = torch.zeros(1, 1000).expand(200, -1)  # uniform: tokens are a direct read of the uniform
    base, _, _ = sample(logits, seeds=1, sample_ids=0, positions=torch.full((200,), 5))
    assert torch.unique(base).numel() == 1  # same key -> same token
    for kw in (dict(seeds=torch.arange(200)), dict(sample_ids=torch.arange(200))):
        t, _, _ = sample(logits, positions=torch.full((200,), 5), **{"seeds": 1, "sample_ids": 0, **kw})
        assert torch.unique(t).numel() > 150  # 200 draws from 1000 tokens: ~181 distinct expected
    t, _, _ = sample(logits, seeds=1, sample_ids=0, positions=torch.arange(200))
    assert torch.unique(t).numel() > 150


@pytest.mark.parametrize("device", DEVICES)
def test_every_device_draws_the_cpu_tokens_for_the_same_keys(device):
    # Same rules and same counter-based uniform everywhere: a rollout does not depend on the device
    # (up to ties in float rounding at a filter or CDF boundary, which these random logits avoid).
    g = torch.Generator().manual_seed(8)
    logits = torch.randn(128, 5000, generator=g) * 2
    params = dict(temperature=0.8, top_k=torch.tensor([0, 40] * 64, dtype=torch.int32), top_p=0.95, min_p=0.01,
                  seeds=torch.randint(0, 2**62, (128,), generator=g), sample_ids=torch.arange(128) % 4)
    cpu = sample(logits, **params)
    dev = sample(logits, device=device, **params)
    assert torch.equal(dev[0], cpu[0])
    torch.testing.assert_close(dev[1], cpu[1], atol=1e-5, rtol=0)


def test_minus_inf_logits_are_never_drawn_and_log_probs_stay_finite():
    # Masked-out tokens (-inf), including the last id, which is where a draw that never passed
    # its target used to land. Temperature only (the chunk-sum path) and with a filter.
    g = torch.Generator().manual_seed(3)
    rows = 20_000
    logits = torch.randn(rows, 1030, generator=g) * 4  # not a multiple of 8 or of the 512-value chunk
    masked = torch.rand(rows, 1030, generator=g) < 0.5
    masked[:, -1] = True
    logits[masked] = float("-inf")
    for params in (dict(temperature=1.0), dict(temperature=0.7, top_p=0.95)):
        tokens, lps, raw = sample(logits, seeds=torch.arange(rows), **params)
        assert not masked.gather(1, tokens[:, None]).any()
        assert torch.isfinite(lps).all() and torch.isfinite(raw).all()


def test_a_nan_logit_is_never_drawn_but_makes_the_row_report_nan_log_probs():
    logits = torch.randn(4, 64, generator=torch.Generator().manual_seed(4))
    logits[1, 10] = float("nan")
    tokens, lps, raw = sample(logits, seeds=torch.arange(4))
    assert tokens[1] != 10
    assert torch.isnan(lps[1]) and torch.isnan(raw[1])
    assert torch.isfinite(lps[[0, 2, 3]]).all() and torch.isfinite(raw[[0, 2, 3]]).all()
