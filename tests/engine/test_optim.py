"""Optimizer groups, LR schedules (values by hand) and gradient clipping."""

from __future__ import annotations

import math

import pytest
import torch
import transformers as tf

from alignkit.engine.optim import build_optimizer, build_scheduler, clip_gradients, lr_lambda


def test_no_weight_decay_on_biases_and_norm_weights():
    model = tf.GPT2LMHeadModel(tf.GPT2Config(vocab_size=20, n_embd=8, n_layer=1, n_head=2, n_positions=16))
    opt = build_optimizer(model, lr=1e-3, weight_decay=0.1)
    decay_ids = {id(p) for g in opt.param_groups if g["weight_decay"] == 0.1 for p in g["params"]}
    for name, p in model.named_parameters():
        is_vector = name.endswith(".bias") or ".ln_" in name or name.startswith("transformer.ln_f")
        assert (id(p) not in decay_ids) == is_vector, name


@pytest.mark.parametrize("schedule,step,expected", [
    ("cosine", 0, 0.5), ("cosine", 1, 1.0), ("cosine", 2, 1.0),
    ("cosine", 6, 0.5),  # progress (6 - 2) / (10 - 2) = 0.5 -> 0.5 (1 + cos(pi / 2))
    ("cosine", 10, 0.0), ("linear", 6, 0.5), ("linear", 8, 0.25), ("constant", 9, 1.0),
])
def test_warmup_then_schedule(schedule, step, expected):
    assert lr_lambda(schedule, warmup_steps=2, total_steps=10)(step) == pytest.approx(expected, abs=1e-12)


def test_warmup_ratio_and_scheduler_drive_the_optimizer_lr():
    p = torch.nn.Parameter(torch.zeros(2))
    opt = torch.optim.AdamW([p], lr=0.1)
    sched = build_scheduler(opt, "cosine", warmup_steps=0, warmup_ratio=0.25, total_steps=8)  # 2 warmup steps
    lrs = []
    for _ in range(4):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs == pytest.approx([0.05, 0.1, 0.1, 0.1 * 0.5 * (1 + math.cos(math.pi / 6))])


def test_clipping_scales_to_max_norm_and_reports_the_norm_before():
    a, b = torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))
    a.grad, b.grad = torch.tensor([3.0]), torch.tensor([4.0])
    assert clip_gradients([a, b], max_norm=1.0) == pytest.approx(5.0)
    assert a.grad.item() == pytest.approx(0.6) and b.grad.item() == pytest.approx(0.8)
    a.grad, b.grad = torch.tensor([3.0]), torch.tensor([4.0])
    assert clip_gradients([a, b], max_norm=0.0) == pytest.approx(5.0) and a.grad.item() == 3.0
