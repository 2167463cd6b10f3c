"""KTO: prospect-theoretic alignment from desirable / undesirable completions."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .base import ModelOutputs, Needs, Objective
from .common import log_ratio, preference_metrics
from .registry import register


@register("kto")
class KTO(Objective):
    """Kahneman-Tversky Optimization (Ethayarajh et al. 2024, arXiv:2402.01306), on paired data.

      r(x, y) = log pi(y|x) - log pi_ref(y|x)                      (summed token log-probs)
      z0      = KL(pi(y'|x) || pi_ref(y'|x))                       reference point, not back-propagated
      v(x, y) = lambda_D sigma(beta (r - z0))   if y is desirable  (here: the chosen completion)
                lambda_U sigma(beta (z0 - r))   if y is undesirable (here: the rejected completion)
      L       = E[ lambda_y - v(x, y) ]         averaged over the 2B completions of the batch

    Deviation from the paper, stated plainly: the paper estimates z0 from *mismatched* pairs
    (x_i, y_j), i != j, i.e. completions scored under a prompt they were not written for. The
    engine supplies only matched completions, so z0 here is
      z0 = max(0, mean over all chosen and rejected rows of r(x, y)), detached,
    the batch mean of the policy/reference log-ratio on the data's own completions. It is a
    biased stand-in for the KL term (those completions come from the data, not the policy); it
    shares the paper's role (a detached, non-negative, batch-level reference point), is 0 at
    the start of training (pi = pi_ref) just as the paper's estimate is, and costs no extra forward.
    The paper recommends lambda_D n_D / (lambda_U n_U) in [1, 4/3]; paired data has n_D = n_U.
    """

    @dataclass
    class Config:
        """beta: reward scale; desirable_weight: lambda_D; undesirable_weight: lambda_U."""

        beta: float = 0.1
        desirable_weight: float = 1.0
        undesirable_weight: float = 1.0

        def __post_init__(self) -> None:
            if self.beta <= 0:
                raise ValueError(f"kto beta={self.beta}: expected > 0")

    needs = Needs(data="preference", reference=True, logps="sum")

    def loss(self, batch: dict[str, torch.Tensor], out: ModelOutputs) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Mean over the batch's desirable and undesirable completions of lambda_y - v(x, y)."""
        beta, lam_d, lam_u = self.cfg.beta, self.cfg.desirable_weight, self.cfg.undesirable_weight
        chosen = log_ratio(out.chosen_logps, out.ref_chosen_logps)
        rejected = log_ratio(out.rejected_logps, out.ref_rejected_logps)
        z0 = torch.cat([chosen, rejected]).mean().clamp(min=0).detach()
        desirable = lam_d * (1.0 - torch.sigmoid(beta * (chosen - z0)))
        undesirable = lam_u * (1.0 - torch.sigmoid(beta * (z0 - rejected)))
        loss = torch.cat([desirable, undesirable]).mean()
        metrics = preference_metrics(beta * chosen, beta * rejected)
        metrics["kl"] = z0
        return loss, metrics
