"""Supervised fine-tuning: negative log-likelihood of the completion tokens."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from .base import ModelOutputs, Needs, Objective
from .registry import register


@register("sft")
class SFT(Objective):
    """Maximum likelihood on completions: L = -(1/N) sum_t log pi(y_t | x, y_<t) over completion tokens."""

    @dataclass
    class Config:
        """`reduction="token"`: mean over every completion token in the batch (long answers weigh more);
        `"sequence"`: mean token NLL per sequence, then mean over sequences (each example weighs the same)."""

        reduction: Literal["token", "sequence"] = "token"

    # Summed log-probs and token counts are enough for both reductions; no [B, T] tensors needed.
    needs = Needs(data="sft", logps="sum")

    def loss(self, batch: dict[str, torch.Tensor], out: ModelOutputs) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Token-mean (or sequence-mean) NLL of the completion tokens."""
        logps_sum, lengths = out.logps, out.lengths.to(out.logps.dtype)
        if self.cfg.reduction == "token":
            # The engine's step-wide token count, so accumulation and ranks do not change the mean.
            normalizer = batch.get("token_normalizer", lengths.sum().clamp_min(1.0))
            loss = -logps_sum.sum() / normalizer
        elif self.cfg.reduction == "sequence":
            loss = -(logps_sum / lengths.clamp_min(1.0)).mean()
        else:
            raise ValueError(f"sft reduction={self.cfg.reduction!r}: expected 'token' or 'sequence'")
        nll = -logps_sum.detach().sum() / lengths.sum().clamp_min(1.0)
        return loss, {"nll": nll, "tokens": lengths.sum().detach()}
