"""Gradient directions and optima the papers predict, checked with autograd."""

from __future__ import annotations

import math

import pytest
import torch

from alignkit.algorithms import ModelOutputs
from alignkit.algorithms.dpo import DPO, IPO
from alignkit.algorithms.kto import KTO
from alignkit.algorithms.orpo import ORPO
from alignkit.algorithms.reward_model import RewardModel
from alignkit.algorithms.simpo import SimPO


def leaf(*xs: float) -> torch.Tensor:
    return torch.tensor(xs, dtype=torch.float64, requires_grad=True)


@pytest.mark.parametrize("loss_type,eps", [("sigmoid", 0.0), ("sigmoid", 0.1), ("robust", 0.1)])
def test_dpo_gradient_raises_chosen_and_lowers_rejected(loss_type, eps):
    c, r = leaf(-2.0, -1.0, -4.0), leaf(-2.5, -1.0, -3.0)
    out = ModelOutputs(
        {"chosen_logps": c, "rejected_logps": r, "ref_chosen_logps": c.detach(), "ref_rejected_logps": r.detach()}
    )
    loss, _ = DPO(DPO.Config(beta=0.1, label_smoothing=eps, loss_type=loss_type)).loss({}, out)
    loss.backward()
    # Gradient descent moves along -grad: chosen up (grad < 0), rejected down (grad > 0).
    assert (c.grad < 0).all() and (r.grad > 0).all()
    # At pi = pi_ref (h = 0) the plain DPO gradient per pair is -beta * sigma(0) / B = -0.05 / 3;
    # d/dz of cDPO is -(1 - eps) sigma(-z) + eps sigma(z) -> (1 - 2 eps) * -0.5 at z = 0;
    # robust DPO's is [-(1 - eps) sigma(-z) - eps sigma(z)] / (1 - 2 eps) -> -0.5 / (1 - 2 eps).
    scale = {"sigmoid": 1.0 - 2.0 * eps, "robust": 1.0 / (1.0 - 2.0 * eps)}[loss_type]
    assert c.grad[0].item() == pytest.approx(-0.1 * 0.5 / 3 * scale, rel=1e-9)


def test_ipo_minimum_is_at_margin_one_over_two_tau():
    tau = 0.2  # target margin 1/(2 tau) = 2.5
    hs = torch.linspace(0.0, 5.0, 501, dtype=torch.float64)
    zeros = torch.zeros_like(hs)
    out = ModelOutputs({"chosen_logps": hs, "rejected_logps": zeros, "ref_chosen_logps": zeros, "ref_rejected_logps": zeros})
    # Per-pair losses via B = 1 batches, so the argmin is over h.
    losses = torch.stack(
        [IPO(IPO.Config(tau=tau)).loss({}, ModelOutputs({k: v[i : i + 1] for k, v in out.values.items()}))[0] for i in range(0, 501, 5)]
    )
    best_h = hs[::5][losses.argmin()].item()
    assert best_h == pytest.approx(2.5, abs=1e-9)
    c = leaf(2.5)
    z = torch.zeros(1, dtype=torch.float64)
    loss, _ = IPO(IPO.Config(tau=tau)).loss({}, ModelOutputs({"chosen_logps": c, "rejected_logps": z, "ref_chosen_logps": z, "ref_rejected_logps": z}))
    loss.backward()
    assert loss.item() == pytest.approx(0.0, abs=1e-12) and c.grad.item() == pytest.approx(0.0, abs=1e-12)


def test_ipo_pushes_margin_down_when_above_target():
    c, r = leaf(0.0), leaf(-10.0)  # h = 10 > 1/(2 * 0.1) = 5
    z = torch.zeros(1, dtype=torch.float64)
    loss, _ = IPO().loss({}, ModelOutputs({"chosen_logps": c, "rejected_logps": r, "ref_chosen_logps": z, "ref_rejected_logps": z}))
    loss.backward()
    # d/dc (h - 5)^2 = 2 (10 - 5) = 10: descent lowers the chosen log-prob (unlike DPO, IPO does not overfit).
    assert c.grad.item() == pytest.approx(10.0) and r.grad.item() == pytest.approx(-10.0)


def test_simpo_gamma_acts_as_a_shift_of_the_chosen_reward():
    c, r = torch.tensor([-0.7, -1.2, -0.3]), torch.tensor([-0.9, -0.8, -1.5])
    beta, gamma = 2.5, 1.4
    with_gamma, _ = SimPO(SimPO.Config(beta=beta, gamma=gamma)).loss({}, ModelOutputs({"chosen_logps": c, "rejected_logps": r}))
    # gamma subtracts from the margin: same as gamma = 0 with chosen mean log-probs lowered by gamma / beta.
    shifted, _ = SimPO(SimPO.Config(beta=beta, gamma=0.0)).loss(
        {}, ModelOutputs({"chosen_logps": c - gamma / beta, "rejected_logps": r})
    )
    assert with_gamma.item() == pytest.approx(shifted.item(), rel=1e-6)
    without, _ = SimPO(SimPO.Config(beta=beta, gamma=0.0)).loss({}, ModelOutputs({"chosen_logps": c, "rejected_logps": r}))
    assert with_gamma.item() > without.item()


def test_simpo_gradient_raises_chosen_and_lowers_rejected():
    c, r = leaf(-1.0, -0.5), leaf(-1.0, -2.0)
    loss, _ = SimPO().loss({}, ModelOutputs({"chosen_logps": c, "rejected_logps": r}))
    loss.backward()
    assert (c.grad < 0).all() and (r.grad > 0).all()


def test_orpo_gradient_raises_chosen_and_lowers_rejected():
    c, r = leaf(-1.0, -0.2), leaf(-1.0, -3.0)
    loss, _ = ORPO(ORPO.Config(lam=1.0)).loss({}, ModelOutputs({"chosen_logps": c, "rejected_logps": r, "chosen_nll_mean": -c}))
    loss.backward()
    assert (c.grad < 0).all() and (r.grad > 0).all()


def test_kto_reference_point_is_not_backpropagated():
    c, r = leaf(-1.0, -2.0), leaf(-1.5, -2.5)
    ref_c, ref_r = torch.tensor([-3.0, -3.0], dtype=torch.float64), torch.tensor([-2.0, -2.0], dtype=torch.float64)
    beta = 0.5
    loss, _ = KTO(KTO.Config(beta=beta)).loss(
        {}, ModelOutputs({"chosen_logps": c, "rejected_logps": r, "ref_chosen_logps": ref_c, "ref_rejected_logps": ref_r})
    )
    loss.backward()
    # z0 = 0.75 (see test_losses). With z0 detached, d/dr_c [1 - sigma(beta (r_c - z0))] / 4
    # = -beta sigma(u)(1 - sigma(u)) / 4 with u = beta (r_c - z0).
    for i, rc in enumerate((2.0, 1.0)):
        u = beta * (rc - 0.75)
        s = 1 / (1 + math.exp(-u))
        assert c.grad[i].item() == pytest.approx(-beta * s * (1 - s) / 4, rel=1e-9)
    assert (r.grad > 0).all()


def test_reward_model_gradient_separates_scores():
    rc, rr = leaf(0.3, -0.1), leaf(0.2, 0.4)
    loss, _ = RewardModel().loss({}, ModelOutputs({"chosen_rewards": rc, "rejected_rewards": rr}))
    loss.backward()
    assert (rc.grad < 0).all() and (rr.grad > 0).all()


def test_reward_centering_pulls_the_mean_score_to_zero():
    # Equal chosen/rejected scores far from 0: the Bradley-Terry term alone has equal and opposite
    # gradients (the sum rc + rr does not move); centering adds 2 c (rc + rr) / B to both.
    rc, rr = leaf(5.0), leaf(5.0)
    loss, _ = RewardModel(RewardModel.Config(center_coef=0.1)).loss({}, ModelOutputs({"chosen_rewards": rc, "rejected_rewards": rr}))
    loss.backward()
    # BT part: -/+ sigma(-0) = -/+0.5 ; centering: 2 * 0.1 * 10 = 2
    assert rc.grad.item() == pytest.approx(-0.5 + 2.0) and rr.grad.item() == pytest.approx(0.5 + 2.0)
