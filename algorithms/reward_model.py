"""Reward model training: a Bradley-Terry pairwise loss on scalar scores."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .base import ModelOutputs, Needs, Objective
from .common import preference_metrics, reward_centering_penalty
from .registry import register


@register("reward_model")
class RewardModel(Objective):
    """Bradley-Terry reward model (Bradley & Terry 1952; Ouyang et al. 2022, eq. 1), with two options.

      L = -log sigma(r(x, y_w) - r(x, y_l) - m) + c * (r(x, y_w) + r(x, y_l))^2

    m: a fixed margin (Touvron et al. 2023 use per-pair margins; 0 = plain Bradley-Terry).
    c: reward-centering coefficient (Eisenstein et al. 2023, "Helping or Herding?", arXiv:2312.09244):
       the Bradley-Terry loss only sees differences, so the squared sum pins the mean score near 0.
    Trains a model with a scalar head (`Needs.model="reward"`); no reference model.
    """

    @dataclass
    class Config:
        """margin: fixed margin m; center_coef: weight c of the reward-centering term."""

        margin: float = 0.0
        center_coef: float = 0.0

    needs = Needs(data="preference", model="reward")

    def loss(self, batch: dict[str, torch.Tensor], out: ModelOutputs) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Mean over pairs of the Bradley-Terry loss (+ centering term)."""
        rc, rr = out.chosen_rewards, out.rejected_rewards
        loss = -F.logsigmoid(rc - rr - self.cfg.margin).mean()
        metrics = preference_metrics(rc, rr)
        if self.cfg.center_coef:
            center = reward_centering_penalty(rc, rr).mean()
            loss = loss + self.cfg.center_coef * center
            metrics["center_penalty"] = center.detach()
        return loss, metrics
