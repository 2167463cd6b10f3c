"""The small protocol a non-HF model implements to be driven by the `Sampler`."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch

from .attention import PagedAttention


@runtime_checkable
class Runner(Protocol):
    """A causal LM the sampler can drive through the paged KV cache.

    Attributes describe the K/V the cache must hold; `forward` runs one packed step.
    `max_context` is the longest prompt + completion the model supports (None = unbounded).

    In `forward`, `input_ids`/`positions` are int64 [T] (all scheduled sequences packed
    back to back); each attention layer i calls `attn.attend(i, q, k, v, scale)` with
    q [T, heads, head_dim] and k, v [T, kv_heads, head_dim] (positions already applied,
    e.g. rotary). Return float logits [R, vocab] for the rows `attn.logits_indices`.
    """

    num_layers: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    dtype: torch.dtype
    device: torch.device
    max_context: int | None

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor,
                attn: PagedAttention) -> torch.Tensor:
        """Run one packed step and return logits for the rows `attn.logits_indices`."""
        ...


def check_runner(obj: object) -> None:
    """Raise a TypeError naming what is missing if `obj` does not implement `Runner`."""
    missing = [a for a in ("num_layers", "num_kv_heads", "head_dim", "vocab_size", "dtype", "device",
                           "max_context", "forward") if not hasattr(obj, a)]
    if missing:
        raise TypeError(
            f"Sampler(model=...): {type(obj).__name__} is neither a transformers PreTrainedModel with a "
            f"causal LM head nor an alignkit Runner (missing: {', '.join(missing)}). Pass an HF "
            "*ForCausalLM model, or implement alignkit.engine.sampler.Runner.")
