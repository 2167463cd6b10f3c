"""Shared objective math: masked reductions, log-ratios, KL estimators, advantage normalisation.

Objectives import these; nothing here knows about models or batches.
"""

from __future__ import annotations

from typing import Literal

import torch

KLEstimator = Literal["k1", "k2", "k3"]


def masked_sum(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Sum of `x` where `mask` is 1 (over `dim`, or over everything)."""
    x = x * mask.to(x.dtype)
    return x.sum() if dim is None else x.sum(dim)


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of `x` where `mask` is 1; an all-zero mask gives 0, not NaN."""
    m = mask.to(x.dtype)
    # clamp_min keeps an empty row at 0/1 = 0 instead of 0/0.
    return masked_sum(x, m, dim) / (m.sum() if dim is None else m.sum(dim)).clamp_min(1.0)


def masked_var(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Population variance of `x` over the masked entries."""
    mean = masked_mean(x, mask)
    return masked_mean((x - mean) ** 2, mask)


def log_ratio(logps: torch.Tensor, ref_logps: torch.Tensor) -> torch.Tensor:
    """log pi(y|x) - log pi_ref(y|x): the implicit reward of DPO-family objectives, divided by beta."""
    return logps - ref_logps


def log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(x)) for x < 0, accurate at both ends (Maechler 2012: log(-expm1(x)) near 0, log1p(-exp(x)) below)."""
    cut = -0.6931471805599453  # -log 2
    # Each branch sees only its own range, so the branch torch.where discards cannot produce
    # inf/NaN gradients (0 * inf) near x = 0.
    near_zero = torch.log(-torch.expm1(x.clamp(min=cut)))
    far = torch.log1p(-torch.exp(x.clamp(max=cut)))
    return torch.where(x > cut, near_zero, far)


def kl_penalty(logps: torch.Tensor, ref_logps: torch.Tensor, estimator: KLEstimator = "k3") -> torch.Tensor:
    """Per-sample estimate of KL(pi || pi_ref) from samples of pi (Schulman 2020, "Approximating KL divergence").

    With r = log pi_ref(y) - log pi(y) and y ~ pi:
      k1 = -r                  unbiased, high variance, can be negative
      k2 = r^2 / 2             biased, low variance, >= 0
      k3 = (exp(r) - 1) - r    unbiased, low variance, >= 0
    """
    r = ref_logps - logps
    if estimator == "k1":
        return -r
    if estimator == "k2":
        return 0.5 * r * r
    if estimator == "k3":
        return torch.expm1(r) - r
    raise ValueError(f"KL estimator {estimator!r}: expected 'k1', 'k2' or 'k3'")


def group_normalize(
    rewards: torch.Tensor, group_ids: torch.Tensor, scale: bool = True, eps: float = 1e-4
) -> torch.Tensor:
    """Group-relative advantages (GRPO): reward minus its group's mean, divided by the group's std if `scale`.

    The std is the unbiased sample std within the group (as in Shao et al. 2024); a group whose
    rewards are all equal gets advantage 0.
    """
    if rewards.dim() != 1 or group_ids.shape != rewards.shape:
        raise ValueError(f"rewards {tuple(rewards.shape)} and group_ids {tuple(group_ids.shape)}: expected two [B] tensors")
    _, inverse, counts = torch.unique(group_ids, return_inverse=True, return_counts=True)
    n = counts.to(rewards.dtype)
    sums = torch.zeros_like(n).index_add_(0, inverse, rewards)
    mean = (sums / n)[inverse]
    centered = rewards - mean
    if not scale:
        return centered
    sq = torch.zeros_like(n).index_add_(0, inverse, centered * centered)
    std = torch.sqrt(sq / (n - 1).clamp_min(1.0))[inverse]
    return centered / (std + eps)


def center_rewards(rewards: torch.Tensor) -> torch.Tensor:
    """Subtract the batch mean (a baseline that leaves the expected policy gradient unchanged)."""
    return rewards - rewards.mean()


def reward_centering_penalty(chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor) -> torch.Tensor:
    """Eisenstein et al. 2023 auxiliary term (r_c + r_r)^2, per pair: pins the reward model's mean near 0."""
    return (chosen_rewards + rejected_rewards) ** 2


def preference_metrics(chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor) -> dict[str, torch.Tensor]:
    """Standard detached metrics of a pairwise objective: mean rewards, accuracy and margin."""
    c, r = chosen_rewards.detach(), rejected_rewards.detach()
    return {
        "rewards/chosen": c.mean(),
        "rewards/rejected": r.mean(),
        "rewards/accuracy": (c > r).float().mean(),
        "rewards/margin": (c - r).mean(),
    }
