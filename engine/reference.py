"""Reference log-probs for offline objectives: computed ONCE before training, then the model is freed.

The reference model is loaded inside `cache_reference_logps`, run over every train and eval row,
and deleted before the function returns, so it is not held in memory during training. The
log-probs are stored on the rows (`ref_chosen_logps` / `ref_rejected_logps` for preference
data, `ref_logps` for sft data), reduced as the objective's `needs.logps` says, and the collator
turns them into batch tensors.
"""

from __future__ import annotations

import contextlib
import gc
from typing import Any, Callable

import torch

from alignkit.engine import models
from alignkit.engine.collate import collate, padded_length
from alignkit.engine.forward import reduce_logps
from alignkit.engine.logprobs import completion_logps


def release_memory() -> None:
    """Collect garbage and return cached accelerator memory to the device."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


@torch.no_grad()
def fill_reference_logps(ref: torch.nn.Module, examples: list[dict[str, Any]], fmt: str, reduction: str,
                         pad_id: int, batch_size: int, device: torch.device,
                         autocast: Callable[[], Any] = contextlib.nullcontext) -> None:
    """Store the reference log-probs of every row in `examples` on the row itself."""
    # Visit rows longest first so each batch holds similar lengths: less padding computed for nothing.
    by_length = sorted(examples, key=padded_length, reverse=True)
    for start in range(0, len(by_length), batch_size):
        rows = by_length[start: start + batch_size]
        batch = collate(rows, fmt, pad_id)
        ids, attn, cmask = (batch[k].to(device) for k in ("input_ids", "attention_mask", "completion_mask"))
        with autocast():
            lp = reduce_logps(completion_logps(ref, ids, attn, cmask), reduction).float().cpu().tolist()
        if fmt == "preference":
            b = len(rows)
            for row, c, r in zip(rows, lp[:b], lp[b:]):
                row["ref_chosen_logps"], row["ref_rejected_logps"] = c, r
        else:
            for row, v in zip(rows, lp):
                row["ref_logps"] = v


def cache_reference_logps(cfg: Any, needs: Any, splits: list[list[dict[str, Any]]], pad_id: int,
                          dtype: torch.dtype, device: torch.device,
                          autocast: Callable[[], Any] = contextlib.nullcontext) -> None:
    """Load the reference model, fill every split's rows with its log-probs, then free it."""
    if needs.data not in ("preference", "sft"):
        raise ValueError(f"reference caching is for offline data, not {needs.data!r}")
    ref = models.load_reference(cfg, dtype, device)
    try:
        for examples in splits:
            fill_reference_logps(ref, examples, needs.data, needs.logps, pad_id, cfg.train.eval_batch_size,
                                 device, autocast)
    finally:
        del ref
        release_memory()
