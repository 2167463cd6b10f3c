"""A hand-rolled step planner for adapter tests (no scheduler): fixed blocks per sequence."""

from __future__ import annotations

import torch

from alignkit.engine.sampler.attention import PagedAttention
from alignkit.engine.sampler.kv_cache import KVCache


def plan_step(cache: KVCache, ops, feeds: list[tuple[int, list[int], int]], max_blocks: int):
    """Build (input_ids, positions, PagedAttention) for feeds of (seq_id, new_tokens, tokens_already_cached).

    Sequence s owns blocks [s * max_blocks, (s + 1) * max_blocks); the last token of every feed is sampled.
    """
    bs = cache.block_size
    ids, pos, slots, tables, ctx, qsl, keep = [], [], [], [], [], [0], []
    for seq, toks, start in feeds:
        for j, t in enumerate(toks):
            p = start + j
            ids.append(t)
            pos.append(p)
            slots.append((seq * max_blocks + p // bs) * bs + p % bs)
        tables.append([seq * max_blocks + b for b in range(max_blocks)])
        ctx.append(start + len(toks))
        qsl.append(qsl[-1] + len(toks))
        keep.append(qsl[-1] - 1)
    attn = PagedAttention(
        cache=cache, slot_mapping=torch.tensor(slots, dtype=torch.int64),
        block_tables=torch.tensor(tables, dtype=torch.int32), context_lens=torch.tensor(ctx, dtype=torch.int32),
        query_start_loc=torch.tensor(qsl, dtype=torch.int32), logits_indices=torch.tensor(keep, dtype=torch.int64),
        ops=ops)
    return torch.tensor(ids, dtype=torch.int64), torch.tensor(pos, dtype=torch.int64), attn
