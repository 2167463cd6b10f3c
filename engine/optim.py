"""AdamW (no weight decay on biases and norm weights), warmup + cosine/linear/constant, clipping."""

from __future__ import annotations

import math
from typing import Iterable

import torch
from torch import nn


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two AdamW groups: matrices decay; biases, norm weights and other 1-D parameters do not."""
    decay, no_decay = [], []
    for _, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (decay if p.ndim >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def build_optimizer(model: nn.Module, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """AdamW over the trainable parameters of `model`."""
    groups = param_groups(model, weight_decay)
    if not groups:
        raise ValueError("the model has no trainable parameters")
    # torch picks the implementation (multi-tensor on CUDA, per-tensor on CPU); both are deterministic, so a
    # resumed run on the same hardware matches an uninterrupted one bit for bit (tests/engine/test_checkpoint.py).
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.999), eps=1e-8)


def lr_lambda(schedule: str, warmup_steps: int, total_steps: int):
    """The multiplier of the base learning rate at each optimizer step (for LambdaLR)."""
    if schedule not in ("cosine", "linear", "constant"):
        raise ValueError(f"train.schedule={schedule!r}: expected cosine, linear or constant")
    total = max(total_steps, 1)

    def fn(step: int) -> float:
        if warmup_steps > 0 and step < warmup_steps:
            return (step + 1) / warmup_steps
        if schedule == "constant":
            return 1.0
        progress = min(1.0, (step - warmup_steps) / max(1, total - warmup_steps))
        if schedule == "linear":
            return 1.0 - progress
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return fn


def build_scheduler(optimizer: torch.optim.Optimizer, schedule: str, warmup_steps: int, warmup_ratio: float,
                    total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Warmup (steps, or a ratio of the total) then the named decay."""
    warmup = warmup_steps if warmup_steps > 0 else int(round(warmup_ratio * total_steps))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(schedule, warmup, total_steps))


def clip_gradients(params: Iterable[nn.Parameter], max_norm: float) -> float:
    """Clip the global gradient norm to `max_norm` (<= 0: no clipping); returns the norm before clipping."""
    params = [p for p in params if p.grad is not None]
    if not params:
        return 0.0
    if max_norm > 0:
        return float(torch.nn.utils.clip_grad_norm_(params, max_norm))
    return float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in params])))
