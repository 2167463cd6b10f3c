"""Pure-torch reference for the alignkit._sampler kernels (same signatures, slow, obviously correct).

Used as a stand-in `ops` for the sampler's attention plumbing and as the reference the
kernels are compared against in tests.
"""

from __future__ import annotations

import torch


def write_kv(k_cache, v_cache, k, v, slot_mapping, stream=0):
    """Store k/v rows at their slots (slot -1 = skip)."""
    nb, bs = k_cache.shape[:2]
    keep = slot_mapping >= 0
    slots = slot_mapping[keep]
    k_cache.view(nb * bs, *k_cache.shape[2:])[slots] = k[keep]
    v_cache.view(nb * bs, *v_cache.shape[2:])[slots] = v[keep]


def paged_attention(out, q, k_cache, v_cache, block_tables, context_lens, query_start_loc, scale, stream=0):
    """Causal attention of each sequence's queries over its cached keys/values (fp32 softmax)."""
    bs = k_cache.shape[1]
    n_heads, n_kv = q.shape[1], k_cache.shape[2]
    for s in range(context_lens.shape[0]):
        q0, q1 = int(query_start_loc[s]), int(query_start_loc[s + 1])
        ctx, qlen = int(context_lens[s]), q1 - q0
        if qlen == 0:
            continue
        blocks = block_tables[s, : -(-ctx // bs)].long()
        k = k_cache[blocks].reshape(-1, n_kv, k_cache.shape[3])[:ctx].float()
        v = v_cache[blocks].reshape(-1, n_kv, v_cache.shape[3])[:ctx].float()
        k = k.repeat_interleave(n_heads // n_kv, dim=1)
        v = v.repeat_interleave(n_heads // n_kv, dim=1)
        scores = torch.einsum("qhd,khd->hqk", q[q0:q1].float(), k) * scale
        qpos = torch.arange(ctx - qlen, ctx).unsqueeze(1)
        kpos = torch.arange(ctx).unsqueeze(0)
        scores = scores.masked_fill(kpos > qpos, float("-inf"))
        out[q0:q1] = torch.einsum("hqk,khd->qhd", scores.softmax(-1), v).to(out.dtype)


def copy_blocks(k_cache, v_cache, src, dst, stream=0):
    """Copy whole blocks src[i] -> dst[i]."""
    k_cache[dst] = k_cache[src]
    v_cache[dst] = v_cache[src]


def filtered_probs(logits_row: torch.Tensor, temperature: float, top_k: int, top_p: float,
                   min_p: float) -> torch.Tensor:
    """Sampling distribution after temperature, min-p, top-k, top-p (renormalised)."""
    p = torch.softmax(logits_row.double() / temperature, -1)
    keep = torch.ones_like(p, dtype=torch.bool)
    if min_p > 0:
        keep &= p >= min_p * p.max()
    if top_k > 0:
        kth = torch.topk(p, min(top_k, p.numel())).values[-1]
        keep &= p >= kth
    if top_p < 1:
        masked = torch.where(keep, p, torch.zeros_like(p))
        order = torch.argsort(masked, descending=True, stable=True)
        csum = torch.cumsum(masked[order], 0) / masked.sum()
        n_keep = int((csum < top_p).sum()) + 1
        top = torch.zeros_like(keep)
        top[order[:n_keep]] = True
        keep &= top
    p = torch.where(keep, p, torch.zeros_like(p))
    return p / p.sum()


def sample(logits, temperature, top_k, top_p, min_p, seeds, sample_ids, positions,
           out_tokens, out_logprobs, out_raw_logprobs, stream=0):
    """Greedy or seeded draw per row; log-probs at the sampling temperature and at T=1."""
    for r in range(logits.shape[0]):
        row, t = logits[r], float(temperature[r])
        raw = torch.log_softmax(row.double(), -1)
        if t == 0:
            tok = int(torch.argmax(row))
            lp = raw
        else:
            p = filtered_probs(row, t, int(top_k[r]), float(top_p[r]), float(min_p[r]))
            g = torch.Generator().manual_seed(hash((int(seeds[r]), int(sample_ids[r]), int(positions[r]))) % 2**62)
            tok = int(torch.multinomial(p.float(), 1, generator=g))
            lp = torch.log_softmax(row.double() / t, -1)
        out_tokens[r] = tok
        out_logprobs[r] = float(lp[tok])
        out_raw_logprobs[r] = float(raw[tok])
