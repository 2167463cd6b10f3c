"""DPO and IPO: offline preference optimisation against a frozen reference policy."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from .base import ModelOutputs, Needs, Objective
from .common import log_ratio, preference_metrics
from .registry import register


@register("dpo")
class DPO(Objective):
    """Direct Preference Optimization (Rafailov et al. 2023, arXiv:2305.18290), with cDPO and robust DPO.

    With h = [log pi(y_w|x) - log pi_ref(y_w|x)] - [log pi(y_l|x) - log pi_ref(y_l|x)]
    (summed token log-probs), the per-pair loss is

      sigmoid (eq. 7):  L = -log sigma(beta h)
      conservative DPO (Mitchell 2023, "A note on DPO with noisy preferences"), label_smoothing = eps:
                        L = -(1 - eps) log sigma(beta h) - eps log sigma(-beta h)
      loss_type="robust" (Chowdhury et al. 2024, "Provably Robust DPO", arXiv:2403.00409):
                        L = [-(1 - eps) log sigma(beta h) + eps log sigma(-beta h)] / (1 - 2 eps)

    cDPO is the expected loss under labels flipped with probability eps; robust DPO is its
    unbiased de-noised counterpart (its expectation under flips equals the clean loss).
    Implicit rewards: r = beta (log pi - log pi_ref).
    """

    @dataclass
    class Config:
        """beta: KL strength; label_smoothing: assumed label-flip rate eps; loss_type: 'sigmoid' or 'robust'."""

        beta: float = 0.1
        label_smoothing: float = 0.0
        loss_type: Literal["sigmoid", "robust"] = "sigmoid"

        def __post_init__(self) -> None:
            if self.loss_type not in ("sigmoid", "robust"):
                raise ValueError(f"dpo loss_type={self.loss_type!r}: expected 'sigmoid' or 'robust'")
            if not 0.0 <= self.label_smoothing < 0.5:
                raise ValueError(f"dpo label_smoothing={self.label_smoothing}: expected 0 <= eps < 0.5")
            if self.beta <= 0:
                raise ValueError(f"dpo beta={self.beta}: expected > 0")

    needs = Needs(data="preference", reference=True, logps="sum")

    def loss(self, batch: dict[str, torch.Tensor], out: ModelOutputs) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Mean over pairs of the (smoothed / robust) DPO loss."""
        beta, eps = self.cfg.beta, self.cfg.label_smoothing
        chosen = log_ratio(out.chosen_logps, out.ref_chosen_logps)
        rejected = log_ratio(out.rejected_logps, out.ref_rejected_logps)
        z = beta * (chosen - rejected)
        if self.cfg.loss_type == "sigmoid":
            losses = -(1.0 - eps) * F.logsigmoid(z) - eps * F.logsigmoid(-z)
        else:
            losses = (-(1.0 - eps) * F.logsigmoid(z) + eps * F.logsigmoid(-z)) / (1.0 - 2.0 * eps)
        return losses.mean(), preference_metrics(beta * chosen, beta * rejected)


@register("ipo")
class IPO(Objective):
    """Identity Preference Optimisation (Azar et al. 2023, "A General Theoretical Paradigm...", arXiv:2310.12036).

    Eq. 17: L = ( h - 1/(2 tau) )^2 with
      h = [log pi(y_w|x) - log pi_ref(y_w|x)] - [log pi(y_l|x) - log pi_ref(y_l|x)].

    Reduction: log-probs here are *mean* token log-probs (`Needs.logps="mean"`), not sums. The
    squared loss regresses h onto a fixed target 1/(2 tau); with summed log-probs the same
    target would mean a tiny per-token change for long answers and a large one for short
    answers, so tau would have to be retuned per dataset length. The IPO authors recommended
    averaging for this reason, and it is what TRL's `loss_type="ipo"` does, so tau values carry
    over from published recipes. The loss is minimised exactly at h = 1/(2 tau).
    """

    @dataclass
    class Config:
        """tau: regularisation strength; the target log-ratio margin is 1/(2 tau)."""

        tau: float = 0.1

        def __post_init__(self) -> None:
            if self.tau <= 0:
                raise ValueError(f"ipo tau={self.tau}: expected > 0")

    needs = Needs(data="preference", reference=True, logps="mean")

    def loss(self, batch: dict[str, torch.Tensor], out: ModelOutputs) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Mean over pairs of (h - 1/(2 tau))^2."""
        chosen = log_ratio(out.chosen_logps, out.ref_chosen_logps)
        rejected = log_ratio(out.rejected_logps, out.ref_rejected_logps)
        h = chosen - rejected
        losses = (h - 1.0 / (2.0 * self.cfg.tau)) ** 2
        # Reported rewards use tau in the role DPO's beta plays.
        return losses.mean(), preference_metrics(self.cfg.tau * chosen, self.cfg.tau * rejected)
