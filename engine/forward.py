"""The training forward: from a collated batch to the `ModelOutputs` an objective declared.

Only what `needs` asks for is computed (see `alignkit.algorithms.base` for every quantity):

    preference + causal_lm:  chosen_logps, rejected_logps (reduced per needs.logps),
                             chosen_lengths, rejected_lengths, ref_* (cached, from the batch),
                             chosen_nll_mean (needs.chosen_nll),
                             chosen_token_logps, rejected_token_logps, chosen_mask, rejected_mask
                             (needs.token_logps)
    preference + reward:     chosen_rewards, rejected_rewards (the trained reward model's scores)
    sft:                     logps, lengths, token_logps, mask (+ ref_logps when cached)

Chosen and rejected completions go through the model in ONE forward ([2B, L] batch).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from alignkit.engine.logprobs import CompletionLogps, completion_logps, unwrap


def reduce_logps(lp: CompletionLogps, reduction: str) -> torch.Tensor:
    """The per-row log-prob the objective asked for: "sum" or "mean" over completion tokens."""
    return lp.logps_sum if reduction == "sum" else lp.logps_mean


def sequence_scores(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """[N] scalar scores of a one-output classifier, read at each row's last real token."""
    base = unwrap(model)
    trunk = getattr(base, getattr(base, "base_model_prefix", ""), None)
    score = getattr(base, "score", None)
    # Read the score where transformers' *ForSequenceClassification reads it — the rightmost
    # non-pad token — so the saved reward model scores at the position it was trained at. (When
    # pad == eos, the default for tokenizers without a pad token, that is the token before the EOS.)
    real = attention_mask.bool()
    pad_id = getattr(base.config, "pad_token_id", None)
    if pad_id is not None:
        real = real & (input_ids != pad_id)
    positions = torch.arange(input_ids.shape[1], device=input_ids.device)
    last = (positions * real).argmax(-1)
    rows = torch.arange(input_ids.shape[0], device=input_ids.device)
    if isinstance(trunk, nn.Module) and isinstance(score, nn.Module):
        hidden = trunk(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)[0]
        return score(hidden[rows, last]).squeeze(-1).float()
    # No separable head: the classifier pools itself (it finds the last non-pad token).
    return model(input_ids=input_ids, attention_mask=attention_mask).logits.squeeze(-1).float()


def compute_outputs(model: nn.Module, needs: Any, batch: dict[str, torch.Tensor]) -> Any:
    """Run the policy on `batch` and return the `ModelOutputs` that `needs` declares."""
    from alignkit.algorithms.base import ModelOutputs

    if needs.rollouts is not None or needs.data == "prompt":
        raise NotImplementedError("online objectives land with the online-RL issue")
    values: dict[str, torch.Tensor] = {}
    ids, attn = batch["input_ids"], batch["attention_mask"]
    if needs.data == "preference":
        b = ids.shape[0] // 2
        if needs.model == "reward":
            scores = sequence_scores(model, ids, attn)
            values.update(chosen_rewards=scores[:b], rejected_rewards=scores[b:])
        else:
            lp = completion_logps(model, ids, attn, batch["completion_mask"])
            reduced = reduce_logps(lp, needs.logps)
            values.update(chosen_logps=reduced[:b], rejected_logps=reduced[b:],
                          chosen_lengths=lp.lengths[:b], rejected_lengths=lp.lengths[b:])
            if needs.chosen_nll:
                values["chosen_nll_mean"] = -lp.logps_mean[:b]
            if needs.token_logps:
                values.update(chosen_token_logps=lp.token_logps[:b], rejected_token_logps=lp.token_logps[b:],
                              chosen_mask=lp.mask[:b], rejected_mask=lp.mask[b:])
    elif needs.data == "sft":
        if needs.model == "reward":
            raise ValueError("a reward-model objective trains on preference data, not sft rows")
        lp = completion_logps(model, ids, attn, batch["completion_mask"])
        values.update(logps=reduce_logps(lp, needs.logps), lengths=lp.lengths, token_logps=lp.token_logps, mask=lp.mask)
    for key in ("ref_chosen_logps", "ref_rejected_logps", "ref_logps"):
        if key in batch:
            values[key] = batch[key]
    return ModelOutputs(values)
