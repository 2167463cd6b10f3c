"""ORPO: SFT plus an odds-ratio preference penalty, with no reference model."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .base import ModelOutputs, Needs, Objective
from .common import log1mexp, preference_metrics
from .registry import register

# Mean log-probs are < 0; at exactly 0 the odds are infinite. Clamp just below so a fully
# memorised completion gives a large finite log-odds, not inf/NaN gradients.
_MAX_MEAN_LOGP = -1e-6


@register("orpo")
class ORPO(Objective):
    """Odds Ratio Preference Optimization (Hong, Lee & Thorne 2024, arXiv:2403.07691).

      odds(y|x) = P(y|x) / (1 - P(y|x)),   P(y|x) = exp( (1/|y|) sum_t log pi(y_t|x, y_<t) )
      L_OR = -log sigma( log odds(y_w|x) - log odds(y_l|x) )
      L    = L_SFT + lambda * L_OR,   L_SFT = mean token NLL of y_w

    log odds = logP - log(1 - exp(logP)), with log(1 - exp(.)) computed stably (`common.log1mexp`).
    """

    @dataclass
    class Config:
        """lam: weight of the odds-ratio term (the paper's lambda)."""

        lam: float = 0.1

    needs = Needs(data="preference", reference=False, logps="mean", chosen_nll=True)

    def loss(self, batch: dict[str, torch.Tensor], out: ModelOutputs) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Mean over pairs of NLL(y_w) + lambda * -log sigma(log odds ratio)."""
        pc = out.chosen_logps.clamp(max=_MAX_MEAN_LOGP)
        pr = out.rejected_logps.clamp(max=_MAX_MEAN_LOGP)
        log_odds = (pc - log1mexp(pc)) - (pr - log1mexp(pr))
        or_loss = -F.logsigmoid(log_odds).mean()
        nll = out.chosen_nll_mean.mean()
        loss = nll + self.cfg.lam * or_loss
        metrics = preference_metrics(self.cfg.lam * out.chosen_logps, self.cfg.lam * out.rejected_logps)
        metrics.update({"nll": nll.detach(), "or_loss": or_loss.detach(), "log_odds_ratio": log_odds.detach().mean()})
        return loss, metrics
