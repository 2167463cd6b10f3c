"""Reference log-probs are computed once before training; the reference model is gone during training."""

from __future__ import annotations

import json
import math
import weakref

import pytest

from alignkit.engine import models
from alignkit.engine import trainer as trainer_mod
from alignkit.engine.config import load_config
from alignkit.engine.trainer import train

from .helpers import base_overrides, preference_rows, sft_rows, write_jsonl


def test_reference_is_released_before_the_first_training_forward(tmp_path, tiny_lm, monkeypatch):
    data = write_jsonl(tmp_path / "p.jsonl", preference_rows(8))
    refs = []
    real_load, real_forward = models.load_reference, trainer_mod.compute_outputs

    def tracked_load(*args, **kwargs):
        model = real_load(*args, **kwargs)
        refs.append(weakref.ref(model))
        return model

    forwards = {"n": 0}

    def checked_forward(*args, **kwargs):
        forwards["n"] += 1
        assert refs and all(r() is None for r in refs), "reference model still alive during training"
        return real_forward(*args, **kwargs)

    monkeypatch.setattr(models, "load_reference", tracked_load)
    monkeypatch.setattr(trainer_mod, "compute_outputs", checked_forward)
    cfg = load_config(None, base_overrides(tiny_lm.path, tmp_path / "out", data, "dpo",
                                           **{"train.max_steps": 2, "output.tensorboard": False}))
    result = train(cfg)
    assert len(refs) == 1 and forwards["n"] == 2
    # Policy == reference at step 1, so the cached reference log-probs make the DPO loss exactly
    # -log sigmoid(0) = log 2 (a stale or wrong cache would shift it).
    first = json.loads((result.output_dir / "metrics.jsonl").read_text().splitlines()[0])
    assert first["step"] == 1 and first["loss"] == pytest.approx(math.log(2), abs=1e-6)


def test_objectives_without_a_reference_never_load_one(tmp_path, tiny_lm, monkeypatch):
    data = write_jsonl(tmp_path / "s.jsonl", sft_rows(8))

    def forbidden(*args, **kwargs):
        raise AssertionError("sft declared no reference model")

    monkeypatch.setattr(models, "load_reference", forbidden)
    cfg = load_config(None, base_overrides(tiny_lm.path, tmp_path / "out", data, "sft",
                                           **{"train.max_steps": 1, "output.tensorboard": False}))
    assert train(cfg).steps == 1


def test_sft_format_objectives_get_cached_ref_logps(tmp_path, tiny_lm):
    plugin = tmp_path / "kl_sft.py"
    plugin.write_text(
        "from alignkit.algorithms import Objective, Needs\n"
        "class KLSFT(Objective):\n"
        "    needs = Needs(data='sft', reference=True, logps='mean')\n"
        "    def loss(self, batch, out):\n"
        "        gap = (out.logps - out.ref_logps).abs().max()\n"
        "        return -out.logps.mean(), {'ref_gap': gap.detach()}\n")
    data = write_jsonl(tmp_path / "s.jsonl", sft_rows(8))
    cfg = load_config(None, base_overrides(tiny_lm.path, tmp_path / "out", data, f"{plugin}:KLSFT", **{
        "train.max_steps": 3, "output.tensorboard": False}))
    lines = [json.loads(x) for x in (train(cfg).output_dir / "metrics.jsonl").read_text().splitlines()]
    assert lines[0]["ref_gap"] < 1e-5  # step 1: policy == reference, same mean log-probs
    assert lines[-1]["ref_gap"] > 1e-3  # the policy moved away; the cached values did not


def test_length_sorted_batches_give_each_row_its_own_values(tiny_lm):
    import copy

    import torch
    import transformers as tf

    from alignkit.engine.reference import fill_reference_logps

    ref = tf.AutoModelForCausalLM.from_pretrained(tiny_lm.path).eval()
    rows = [{"prompt_ids": [2] + [30] * (i % 3 + 1), "chosen_ids": [22] * (5 - i % 4) + [3],
             "rejected_ids": [23] * (i % 5 + 1) + [3]} for i in range(9)]
    batched, single = copy.deepcopy(rows), copy.deepcopy(rows)
    fill_reference_logps(ref, batched, "preference", "sum", 0, batch_size=4, device=torch.device("cpu"))
    fill_reference_logps(ref, single, "preference", "sum", 0, batch_size=1, device=torch.device("cpu"))
    assert [r["prompt_ids"] for r in batched] == [r["prompt_ids"] for r in rows]  # list order untouched
    for b, s in zip(batched, single):
        assert b["ref_chosen_logps"] == pytest.approx(s["ref_chosen_logps"], abs=1e-5)
        assert b["ref_rejected_logps"] == pytest.approx(s["ref_rejected_logps"], abs=1e-5)
