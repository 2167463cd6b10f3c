"""Sample or greedily decode completions for the built-in task: the one place that picks the generator."""

from __future__ import annotations

from typing import Sequence

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

# alignkit's own sampler (C++ scheduler and kernels). False falls back to `model.generate`. Measured
# on the task (2048 prompts x 8 samples, one thread): 9.8 s vs 37.8 s, the same greedy accuracy.
USE_ALIGNKIT_SAMPLER = True


def _sample_with_sampler(model: PreTrainedModel, prompts: list[list[int]], n: int, temperature: float,
                         max_new_tokens: int, eos_id: int, seed: int) -> list[list[list[int]]]:
    """alignkit's own sampler (KV blocks shared across the n samples of a prompt)."""
    from alignkit.engine.sampler import Sampler, SamplingParams

    params = SamplingParams(n=n, temperature=temperature, max_new_tokens=max_new_tokens,
                            stop_token_ids=[eos_id], seed=seed)
    groups = Sampler(model).generate(prompts, params)
    return [[list(s.token_ids) for s in g.samples] for g in groups]


def _sample_with_hf_generate(model: PreTrainedModel, prompts: list[list[int]], n: int, temperature: float,
                             max_new_tokens: int, eos_id: int, seed: int, pad_id: int) -> list[list[list[int]]]:
    """Fallback: batched `model.generate` on left-padded prompts."""
    torch.manual_seed(seed)
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[pad_id] * (width - len(p)) + p for p in prompts])
    attn = (torch.arange(width)[None, :] >= torch.tensor([width - len(p) for p in prompts])[:, None]).long()
    greedy = temperature == 0
    out = model.generate(input_ids=ids, attention_mask=attn, do_sample=not greedy,
                         temperature=None if greedy else temperature, top_k=None if greedy else 0,
                         top_p=None, num_return_sequences=n, max_new_tokens=max_new_tokens,
                         eos_token_id=eos_id, pad_token_id=pad_id)[:, width:].tolist()
    rows = []
    for row in out:
        # Keep the stop token like the sampler does; drop the padding after it.
        rows.append(row[:row.index(eos_id) + 1] if eos_id in row else row)
    return [rows[i * n:(i + 1) * n] for i in range(len(prompts))]


@torch.no_grad()
def generate(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str], *, n: int = 1,
             temperature: float = 0.0, max_new_tokens: int = 8, seed: int = 0) -> list[list[str]]:
    """`n` completions per prompt as text (stop token removed); temperature 0 = greedy decoding."""
    was_training = model.training
    model.eval()
    ids = [tokenizer.encode(p) for p in prompts]
    eos = tokenizer.eos_token_id
    if USE_ALIGNKIT_SAMPLER:
        groups = _sample_with_sampler(model, ids, n, temperature, max_new_tokens, eos, seed)
    else:
        groups = _sample_with_hf_generate(model, ids, n, temperature, max_new_tokens, eos, seed,
                                          tokenizer.pad_token_id)
    model.train(was_training)
    return [[tokenizer.decode([t for t in c if t != eos], skip_special_tokens=True) for c in g] for g in groups]
