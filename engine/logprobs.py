"""Per-token log-probabilities of completion tokens, without materialising full-vocabulary logits.

    out = completion_logps(model, input_ids, attention_mask, completion_mask)
    out.logps_sum [N], out.logps_mean [N], out.lengths [N], out.token_logps [N, T], out.mask [N, T]

How: run the model's trunk (`get_decoder()`), keep only the hidden states that predict a
completion token (position t predicts token t+1), and apply the LM head to those alone, in
chunks of rows. Each chunk computes `log_softmax(logits)[label]` in float32; with gradients
on and more than one chunk, each chunk is checkpointed so that at most one chunk's [rows, vocab]
logits exist at a time, in the forward and in the backward. Prompt and padding positions never
reach the LM head, and no [N, L, vocab] log_softmax copy is kept.

Models whose logits are not simply `head(trunk(x))` (logit soft-capping, logit scaling) or that
have no separable trunk use the full forward instead (same results, more memory).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

# Config attributes that mean the CausalLM forward transforms the head's output.
_POST_HEAD_ATTRS = ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_multiplier_scale")
# Float32 logits elements per chunk (~128 MiB): bounds the peak of the head computation.
CHUNK_ELEMENTS = 1 << 25


@dataclass
class CompletionLogps:
    """Completion log-probs of N sequences; T = longest completion in the batch."""

    token_logps: torch.Tensor  # [N, T] log p(token), 0 at padding
    mask: torch.Tensor  # [N, T] 1.0 on completion tokens
    lengths: torch.Tensor  # [N] completion token counts (float)

    @property
    def logps_sum(self) -> torch.Tensor:
        """[N] summed over completion tokens."""
        return self.token_logps.sum(-1)

    @property
    def logps_mean(self) -> torch.Tensor:
        """[N] summed over completion tokens / number of completion tokens."""
        return self.logps_sum / self.lengths.clamp(min=1.0)


def unwrap(model: nn.Module) -> nn.Module:
    """The underlying HF model of a DDP/compiled wrapper."""
    while hasattr(model, "module") and isinstance(model.module, nn.Module):
        model = model.module
    return getattr(model, "_orig_mod", model)


def split_trunk_head(model: nn.Module) -> tuple[nn.Module, nn.Module] | None:
    """(trunk, lm_head) when logits == lm_head(trunk(x).last_hidden_state); None otherwise."""
    model = unwrap(model)
    config = getattr(model, "config", None)
    if config is None or any(getattr(config, a, None) not in (None, 1, 1.0) for a in _POST_HEAD_ATTRS):
        return None
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    trunk = None
    if hasattr(model, "get_decoder"):
        try:
            trunk = model.get_decoder()
        except (AttributeError, NotImplementedError):
            trunk = None
    if trunk is None:
        trunk = getattr(model, getattr(model, "base_model_prefix", ""), None)
    if head is None or trunk is None or trunk is model or not isinstance(head, nn.Module):
        return None
    return trunk, head


def _chunk_token_logps(head: nn.Module, hidden: torch.Tensor, labels: torch.Tensor,
                       temperature: float) -> torch.Tensor:
    logits = head(hidden).float()
    if temperature != 1.0:
        logits = logits / temperature
    # log_softmax + gather beats logit - logsumexp(logit) on CPU (one fused pass, cheaper backward: 91 vs
    # 145 ms fwd+bwd for [1024, 8192]); the [rows, vocab] result lives only as long as its chunk.
    return torch.log_softmax(logits, dim=-1).gather(-1, labels.unsqueeze(-1)).squeeze(-1)


def head_token_logps(head: nn.Module, hidden: torch.Tensor, labels: torch.Tensor, vocab_size: int,
                     temperature: float = 1.0, chunk_elements: int = CHUNK_ELEMENTS) -> torch.Tensor:
    """log p(labels[k] | hidden[k]) for K selected positions ([K, H], [K] -> [K]), chunked over K."""
    k = hidden.shape[0]
    if k == 0:
        return hidden.new_zeros(0, dtype=torch.float32)
    rows = max(1, chunk_elements // max(vocab_size, 1))
    if rows >= k:  # one chunk: nothing to gain from recomputation
        return _chunk_token_logps(head, hidden, labels, temperature)
    recompute = torch.is_grad_enabled() and (hidden.requires_grad or any(p.requires_grad for p in head.parameters()))
    parts = []
    for s in range(0, k, rows):
        h, y = hidden[s: s + rows], labels[s: s + rows]
        if recompute:
            parts.append(checkpoint(_chunk_token_logps, head, h, y, temperature, use_reentrant=False))
        else:
            parts.append(_chunk_token_logps(head, h, y, temperature))
    return torch.cat(parts)


def _to_padded(values: torch.Tensor, label_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Scatter K per-token values (row-major over label_mask) into right-padded [N, T]."""
    lengths = label_mask.sum(-1)
    width = int(lengths.max().item()) if lengths.numel() else 0
    rows = label_mask.nonzero(as_tuple=True)[0]
    cols = (label_mask.long().cumsum(-1) - 1)[label_mask]
    n = label_mask.shape[0]
    out = values.new_zeros(n, width).index_put((rows, cols), values)
    mask = torch.zeros(n, width, dtype=torch.float32, device=values.device).index_put(
        (rows, cols), torch.ones_like(values, dtype=torch.float32))
    return out, mask, lengths.float()


def completion_logps(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                     completion_mask: torch.Tensor, temperature: float = 1.0,
                     chunk_elements: int = CHUNK_ELEMENTS) -> CompletionLogps:
    """Log-probs of the completion tokens of each row (see the module docstring)."""
    # Position t predicts token t+1: the completion token at t+1 selects hidden state t.
    label_mask = completion_mask[:, 1:].bool() & attention_mask[:, 1:].bool()
    labels = input_ids[:, 1:][label_mask]
    parts = split_trunk_head(model)
    base = unwrap(model)
    vocab = base.get_output_embeddings().weight.shape[0] if parts else base.config.vocab_size
    if parts is not None:
        trunk, head = parts
        hidden = trunk(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)[0]
        tok = head_token_logps(head, hidden[:, :-1][label_mask], labels, vocab, temperature, chunk_elements)
    else:
        logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits
        tok = head_token_logps(nn.Identity(), logits[:, :-1][label_mask], labels, vocab, temperature, chunk_elements)
    token_logps, mask, lengths = _to_padded(tok, label_mask)
    return CompletionLogps(token_logps, mask, lengths)

