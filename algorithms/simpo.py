"""SimPO: reference-free preference optimisation with length-normalised rewards and a margin."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .base import ModelOutputs, Needs, Objective
from .common import preference_metrics
from .registry import register


@register("simpo")
class SimPO(Objective):
    """Simple Preference Optimization (Meng, Xia & Chen 2024, arXiv:2405.14734).

      L = -log sigma( beta/|y_w| log pi(y_w|x) - beta/|y_l| log pi(y_l|x) - gamma )

    The (1/|y|) log pi terms are the mean token log-probs (`Needs.logps="mean"`); no reference
    model is loaded. With `sft_weight` > 0 the loss adds sft_weight * (mean token NLL of y_w),
    the SFT regulariser of CPO-SimPO; -log pi(y_w|x)/|y_w| is that NLL, so nothing extra is needed.
    """

    @dataclass
    class Config:
        """beta: reward scale; gamma: target reward margin; sft_weight: weight of the chosen-NLL term."""

        beta: float = 2.0
        gamma: float = 1.0
        sft_weight: float = 0.0

        def __post_init__(self) -> None:
            if self.beta <= 0:
                raise ValueError(f"simpo beta={self.beta}: expected > 0")

    needs = Needs(data="preference", reference=False, logps="mean")

    def loss(self, batch: dict[str, torch.Tensor], out: ModelOutputs) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Mean over pairs of -log sigma(beta (mean logp_w - mean logp_l) - gamma) (+ SFT term)."""
        chosen = self.cfg.beta * out.chosen_logps
        rejected = self.cfg.beta * out.rejected_logps
        loss = -F.logsigmoid(chosen - rejected - self.cfg.gamma).mean()
        metrics = preference_metrics(chosen, rejected)
        if self.cfg.sft_weight:
            nll = -out.chosen_logps.mean()
            loss = loss + self.cfg.sft_weight * nll
            metrics["nll"] = nll.detach()
        return loss, metrics
