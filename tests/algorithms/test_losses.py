"""Closed-form loss values of every built-in objective on hand-built tensors.

Expected numbers are written out with math.log / math.exp on the literal inputs; nothing here
calls the code under test to produce an expected value.
"""

from __future__ import annotations

import math

import pytest
import torch

from alignkit.algorithms import ModelOutputs
from alignkit.algorithms.dpo import DPO, IPO
from alignkit.algorithms.kto import KTO
from alignkit.algorithms.orpo import ORPO
from alignkit.algorithms.reward_model import RewardModel
from alignkit.algorithms.sft import SFT
from alignkit.algorithms.simpo import SimPO


def t(*xs: float) -> torch.Tensor:
    return torch.tensor(xs, dtype=torch.float64)


def softplus(x: float) -> float:
    """-log sigma(-x) = log(1 + e^x)."""
    return math.log1p(math.exp(x))


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


# A shared DPO-family batch of two pairs:
#   policy chosen  [-1.0, -2.0]   reference chosen  [-1.5, -2.0]  -> chosen log-ratios   [ 0.5,  0.0]
#   policy rejected[-3.0, -1.5]   reference rejected[-2.0, -1.0]  -> rejected log-ratios [-1.0, -0.5]
#   h = chosen - rejected = [1.5, 0.5]
PAIRS = dict(
    chosen_logps=t(-1.0, -2.0),
    rejected_logps=t(-3.0, -1.5),
    ref_chosen_logps=t(-1.5, -2.0),
    ref_rejected_logps=t(-2.0, -1.0),
)


def test_dpo_sigmoid_loss_matches_closed_form():
    loss, m = DPO(DPO.Config(beta=0.5)).loss({}, ModelOutputs(dict(PAIRS)))
    # beta h = [0.75, 0.25]; -log sigma(z) = log(1 + e^-z)
    expected = (softplus(-0.75) + softplus(-0.25)) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-12)
    # rewards = beta * log-ratio: chosen [0.25, 0], rejected [-0.5, -0.25]
    assert m["rewards/chosen"].item() == pytest.approx(0.125)
    assert m["rewards/rejected"].item() == pytest.approx(-0.375)
    assert m["rewards/accuracy"].item() == 1.0
    assert m["rewards/margin"].item() == pytest.approx(0.5)
    assert all(not v.requires_grad for v in m.values())


def test_cdpo_label_smoothing_matches_closed_form():
    loss, _ = DPO(DPO.Config(beta=0.5, label_smoothing=0.2)).loss({}, ModelOutputs(dict(PAIRS)))
    # (1 - eps) * -log sigma(z) + eps * -log sigma(-z), z = [0.75, 0.25], eps = 0.2
    per = [0.8 * softplus(-z) + 0.2 * softplus(z) for z in (0.75, 0.25)]
    assert loss.item() == pytest.approx(sum(per) / 2, rel=1e-12)


def test_robust_dpo_matches_closed_form():
    loss, _ = DPO(DPO.Config(beta=0.5, label_smoothing=0.2, loss_type="robust")).loss({}, ModelOutputs(dict(PAIRS)))
    # [(1 - eps) * -log sigma(z) - eps * -log sigma(-z)] / (1 - 2 eps)
    per = [(0.8 * softplus(-z) - 0.2 * softplus(z)) / 0.6 for z in (0.75, 0.25)]
    assert loss.item() == pytest.approx(sum(per) / 2, rel=1e-12)


def test_robust_dpo_without_noise_equals_plain_dpo():
    plain, _ = DPO(DPO.Config(beta=0.3)).loss({}, ModelOutputs(dict(PAIRS)))
    robust, _ = DPO(DPO.Config(beta=0.3, loss_type="robust")).loss({}, ModelOutputs(dict(PAIRS)))
    assert robust.item() == pytest.approx(plain.item(), rel=1e-12)


def test_dpo_config_rejects_bad_options():
    with pytest.raises(ValueError, match="label_smoothing"):
        DPO.Config(label_smoothing=0.5)
    with pytest.raises(ValueError, match="loss_type"):
        DPO.Config(loss_type="hinge")


def test_ipo_matches_closed_form():
    loss, _ = IPO(IPO.Config(tau=0.25)).loss({}, ModelOutputs(dict(PAIRS)))
    # target 1/(2 tau) = 2; h = [1.5, 0.5] -> ((1.5-2)^2 + (0.5-2)^2) / 2 = (0.25 + 2.25) / 2
    assert loss.item() == pytest.approx(1.25, rel=1e-12)


def test_simpo_matches_closed_form():
    out = ModelOutputs({"chosen_logps": t(-0.5, -1.0), "rejected_logps": t(-1.0, -0.8)})
    loss, m = SimPO(SimPO.Config(beta=2.0, gamma=1.0)).loss({}, out)
    # z = 2*(-0.5+1.0) - 1 = 0 ; 2*(-1.0+0.8) - 1 = -1.4 ; loss = mean(log(1+e^-z))
    expected = (softplus(0.0) + softplus(1.4)) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-12)
    # rewards = beta * mean logp: chosen [-1, -2] rejected [-2, -1.6]
    assert m["rewards/chosen"].item() == pytest.approx(-1.5)
    assert m["rewards/rejected"].item() == pytest.approx(-1.8)
    assert m["rewards/accuracy"].item() == pytest.approx(0.5)


def test_simpo_sft_term_adds_chosen_nll():
    out = ModelOutputs({"chosen_logps": t(-0.5, -1.0), "rejected_logps": t(-1.0, -0.8)})
    loss, m = SimPO(SimPO.Config(beta=2.0, gamma=1.0, sft_weight=0.5)).loss({}, out)
    # + 0.5 * mean(0.5, 1.0)
    expected = (softplus(0.0) + softplus(1.4)) / 2 + 0.5 * 0.75
    assert loss.item() == pytest.approx(expected, rel=1e-12)
    assert m["nll"].item() == pytest.approx(0.75)


def test_orpo_matches_closed_form():
    out = ModelOutputs({"chosen_logps": t(-0.5), "rejected_logps": t(-2.0), "chosen_nll_mean": t(0.5)})
    loss, m = ORPO(ORPO.Config(lam=0.1)).loss({}, out)
    # log odds(p) = log p - log(1 - p) with log p the mean token log-prob
    lo_c = -0.5 - math.log(1 - math.exp(-0.5))
    lo_r = -2.0 - math.log(1 - math.exp(-2.0))
    expected = 0.5 + 0.1 * softplus(-(lo_c - lo_r))
    assert loss.item() == pytest.approx(expected, rel=1e-12)
    assert m["log_odds_ratio"].item() == pytest.approx(lo_c - lo_r, rel=1e-12)


def test_orpo_is_finite_for_extreme_log_probs():
    # -1e-9 (almost certain completion, 1 - p underflows near 0), 0 exactly, and -80 (p ~ 1e-35).
    c = torch.tensor([-1e-9, 0.0, -80.0], dtype=torch.float32, requires_grad=True)
    r = torch.tensor([-80.0, -1e-9, -1e-12], dtype=torch.float32, requires_grad=True)
    out = ModelOutputs({"chosen_logps": c, "rejected_logps": r, "chosen_nll_mean": -c})
    loss, _ = ORPO().loss({}, out)
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(c.grad).all() and torch.isfinite(r.grad).all()


def test_reward_model_bradley_terry_with_margin_and_centering():
    out = ModelOutputs({"chosen_rewards": t(2.0, 0.5), "rejected_rewards": t(1.0, 1.0)})
    loss, m = RewardModel(RewardModel.Config(margin=0.5, center_coef=0.01)).loss({}, out)
    # d = rc - rr - margin = [0.5, -1.0]; BT = mean(log(1+e^-d)); centering = mean((rc+rr)^2) = mean(9, 2.25)
    expected = (softplus(-0.5) + softplus(1.0)) / 2 + 0.01 * (9.0 + 2.25) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-12)
    assert m["rewards/accuracy"].item() == pytest.approx(0.5)
    assert m["center_penalty"].item() == pytest.approx(5.625)


def test_reward_model_plain_is_bradley_terry():
    out = ModelOutputs({"chosen_rewards": t(0.0, 3.0), "rejected_rewards": t(1.0, 1.0)})
    loss, _ = RewardModel().loss({}, out)
    # -log sigma(-1) and -log sigma(2)
    assert loss.item() == pytest.approx((softplus(1.0) + softplus(-2.0)) / 2, rel=1e-12)


def test_kto_with_reference_point_clamped_to_zero():
    loss, m = KTO(KTO.Config(beta=0.5)).loss({}, ModelOutputs(dict(PAIRS)))
    # log-ratios: chosen [0.5, 0], rejected [-1, -0.5]; mean = -0.25 -> z0 = max(0, -0.25) = 0
    # desirable 1 - sigma(0.5*(r - 0)); undesirable 1 - sigma(0.5*(0 - r))
    terms = [1 - sigmoid(0.25), 1 - sigmoid(0.0), 1 - sigmoid(0.5), 1 - sigmoid(0.25)]
    assert loss.item() == pytest.approx(sum(terms) / 4, rel=1e-12)
    assert m["kl"].item() == 0.0


def test_kto_with_positive_reference_point_and_weights():
    out = ModelOutputs(
        {
            "chosen_logps": t(-1.0, -2.0),
            "ref_chosen_logps": t(-3.0, -3.0),  # chosen log-ratios [2, 1]
            "rejected_logps": t(-1.5, -2.5),
            "ref_rejected_logps": t(-2.0, -2.0),  # rejected log-ratios [0.5, -0.5]
        }
    )
    loss, m = KTO(KTO.Config(beta=0.5, desirable_weight=2.0, undesirable_weight=1.5)).loss({}, out)
    # z0 = (2 + 1 + 0.5 - 0.5) / 4 = 0.75
    # desirable: 2 * (1 - sigma(0.5 * (r - 0.75))) for r in (2, 1)
    # undesirable: 1.5 * (1 - sigma(0.5 * (0.75 - r))) for r in (0.5, -0.5)
    terms = [
        2.0 * (1 - sigmoid(0.5 * 1.25)),
        2.0 * (1 - sigmoid(0.5 * 0.25)),
        1.5 * (1 - sigmoid(0.5 * 0.25)),
        1.5 * (1 - sigmoid(0.5 * 1.25)),
    ]
    assert loss.item() == pytest.approx(sum(terms) / 4, rel=1e-12)
    assert m["kl"].item() == pytest.approx(0.75)


def test_sft_token_and_sequence_reductions():
    out = ModelOutputs({"logps": t(-3.0, -1.0), "lengths": t(2.0, 1.0)})
    token, _ = SFT().loss({}, out)
    seq, _ = SFT(SFT.Config(reduction="sequence")).loss({}, out)
    # token mean: (3 + 1) / (2 + 1); sequence mean: mean(3/2, 1/1)
    assert token.item() == pytest.approx(4.0 / 3.0, rel=1e-12)
    assert seq.item() == pytest.approx(1.25, rel=1e-12)
