"""Shared objective math: masked reductions, log1mexp, KL estimators, group advantages."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from alignkit.algorithms.common import (
    center_rewards,
    group_normalize,
    kl_penalty,
    log1mexp,
    masked_mean,
    masked_sum,
    masked_var,
)


def test_masked_mean_ignores_padding_and_empty_rows_give_zero():
    x = torch.tensor([[1.0, 2.0, 100.0], [5.0, 7.0, 9.0]])
    m = torch.tensor([[1, 1, 0], [0, 0, 0]])
    assert masked_mean(x, m, dim=1).tolist() == [1.5, 0.0]
    assert masked_mean(x, m).item() == 1.5
    assert masked_sum(x, m).item() == 3.0
    # variance of {1, 2} = 0.25
    assert masked_var(x, m).item() == pytest.approx(0.25)


@pytest.mark.parametrize("x", [-1e-8, -1e-3, -0.5, -0.7, -1.0, -5.0, -30.0])
def test_log1mexp_matches_direct_formula(x):
    # log(1 - e^x) in float64 math, with expm1 for tiny |x| where 1 - e^x would round
    expected = math.log(-math.expm1(x))
    assert log1mexp(torch.tensor(x, dtype=torch.float64)).item() == pytest.approx(expected, rel=1e-12)


def test_log1mexp_gradient_is_finite_near_zero():
    x = torch.tensor([-1e-7, -1e-30, -50.0], requires_grad=True)
    log1mexp(x).sum().backward()
    assert torch.isfinite(x.grad).all()


def test_kl_estimators_closed_form():
    logp, ref = torch.tensor([-1.0]), torch.tensor([-1.5])
    r = -0.5  # log pi_ref - log pi
    assert kl_penalty(logp, ref, "k1").item() == pytest.approx(0.5)
    assert kl_penalty(logp, ref, "k2").item() == pytest.approx(0.5 * r * r)
    assert kl_penalty(logp, ref, "k3").item() == pytest.approx(math.exp(r) - 1 - r)
    with pytest.raises(ValueError, match="k4"):
        kl_penalty(logp, ref, "k4")  # type: ignore[arg-type]


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(-20, 0), min_size=1, max_size=8), st.lists(st.floats(-20, 0), min_size=1, max_size=8))
def test_k2_k3_are_nonnegative(a, b):
    n = min(len(a), len(b))
    lp, rf = torch.tensor(a[:n], dtype=torch.float64), torch.tensor(b[:n], dtype=torch.float64)
    assert (kl_penalty(lp, rf, "k2") >= 0).all() and (kl_penalty(lp, rf, "k3") >= -1e-12).all()


def test_k1_and_k3_are_unbiased_for_a_known_kl():
    # pi = Bernoulli(0.7), pi_ref = Bernoulli(0.4): KL = 0.7 log(0.7/0.4) + 0.3 log(0.3/0.6)
    kl = 0.7 * math.log(0.7 / 0.4) + 0.3 * math.log(0.3 / 0.6)
    # exact expectation under pi: weight each outcome by its probability
    lp = torch.tensor([math.log(0.7), math.log(0.3)], dtype=torch.float64)
    rf = torch.tensor([math.log(0.4), math.log(0.6)], dtype=torch.float64)
    w = torch.tensor([0.7, 0.3], dtype=torch.float64)
    for est in ("k1", "k3"):
        assert (w * kl_penalty(lp, rf, est)).sum().item() == pytest.approx(kl, rel=1e-12)


def test_group_normalize_by_hand():
    rewards = torch.tensor([1.0, 2.0, 3.0, 5.0, 5.0, 0.0, 4.0])
    groups = torch.tensor([7, 7, 7, 2, 2, 9, 9])
    adv = group_normalize(rewards, groups, eps=0.0 + 1e-12)
    # group 7: mean 2, unbiased std sqrt((1+0+1)/2) = 1 -> [-1, 0, 1]
    # group 2: all equal -> 0 ; group 9: mean 2, std sqrt((4+4)/1) = 2.828.. -> [-0.707.., 0.707..]
    s = math.sqrt(8.0)
    expected = [-1.0, 0.0, 1.0, 0.0, 0.0, -2.0 / s, 2.0 / s]
    assert adv.tolist() == pytest.approx(expected, abs=1e-6)
    centered = group_normalize(rewards, groups, scale=False)
    assert centered.tolist() == pytest.approx([-1.0, 0.0, 1.0, 0.0, 0.0, -2.0, 2.0])


def test_group_normalize_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="group_ids"):
        group_normalize(torch.zeros(4), torch.zeros(3))


def test_center_rewards_has_zero_mean():
    assert center_rewards(torch.tensor([1.0, 2.0, 6.0])).tolist() == [-2.0, -1.0, 3.0]
