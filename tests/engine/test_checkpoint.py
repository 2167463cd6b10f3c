"""Checkpoints: exact (bit-identical) resume, atomic writes, keep_last rotation, resume="auto"."""

from __future__ import annotations

import json

import pytest
import torch
import transformers as tf

from alignkit.engine import checkpoint as ckpt
from alignkit.engine import trainer as trainer_mod
from alignkit.engine.config import load_config
from alignkit.engine.trainer import train

from .helpers import base_overrides, preference_rows, write_jsonl


@pytest.fixture(scope="module")
def dropout_lm(tmp_path_factory, tiny_lm):
    """The tiny Llama with attention dropout on, so a resumed run must also restore the RNG state."""
    path = tmp_path_factory.mktemp("dropout_lm")
    model = tf.AutoModelForCausalLM.from_pretrained(tiny_lm.path)
    model.config.attention_dropout = 0.2
    model.save_pretrained(path)
    tiny_lm.tokenizer.save_pretrained(path)
    return path


def run_cfg(model_dir, out_dir, data, **extra):
    opts = {"train.max_steps": 6, "train.grad_accum": 2, "train.schedule": "cosine", "train.warmup_steps": 2,
            "train.weight_decay": 0.1, "output.save_every": 3, "output.keep_last": 5, "output.save_final": True,
            "output.tensorboard": False}
    opts.update(extra)
    return load_config(None, base_overrides(model_dir, out_dir, data, "dpo", **opts))


def test_resume_is_bit_identical_to_an_uninterrupted_run(tmp_path, dropout_lm, monkeypatch):
    data = write_jsonl(tmp_path / "p.jsonl", preference_rows(16))  # 2 steps per epoch: resume crosses epochs
    full = train(run_cfg(dropout_lm, tmp_path / "full", data))
    assert full.steps == 6

    real_next = trainer_mod._next_micro_batches
    calls = {"n": 0}

    def interrupted(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:  # the 5th optimizer step never happens: the run dies after checkpoint-3
            raise KeyboardInterrupt("simulated crash")
        return real_next(*args, **kwargs)

    monkeypatch.setattr(trainer_mod, "_next_micro_batches", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train(run_cfg(dropout_lm, tmp_path / "split", data))
    monkeypatch.setattr(trainer_mod, "_next_micro_batches", real_next)
    assert ckpt.find_latest_checkpoint(tmp_path / "split").name == "checkpoint-3"

    resumed = train(run_cfg(dropout_lm, tmp_path / "split", data, **{"output.resume": "auto"}))
    assert resumed.steps == 6
    a = tf.AutoModelForCausalLM.from_pretrained(full.final_dir).state_dict()
    b = tf.AutoModelForCausalLM.from_pretrained(resumed.final_dir).state_dict()
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    # And the run did move: the final weights differ from the starting ones.
    start = tf.AutoModelForCausalLM.from_pretrained(dropout_lm).state_dict()
    assert not torch.equal(start["lm_head.weight"], a["lm_head.weight"])


def test_crash_mid_write_keeps_the_previous_checkpoint_and_auto_resume_skips_the_partial(tmp_path, tiny_lm,
                                                                                         monkeypatch):
    data = write_jsonl(tmp_path / "p.jsonl", preference_rows(16))
    real_save = torch.save
    saves = {"n": 0}

    def failing_save(obj, f, *args, **kwargs):
        if str(f).endswith(ckpt.STATE_FILE):
            saves["n"] += 1
            if saves["n"] == 2:  # checkpoint-4: the model files are written, the state is not
                raise OSError("disk full (simulated)")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        train(run_cfg(tiny_lm.path, tmp_path / "out", data, **{"output.save_every": 2, "train.max_steps": 4}))
    monkeypatch.setattr(torch, "save", real_save)

    out = tmp_path / "out"
    assert (out / ".tmp-checkpoint-4" / "model.safetensors").is_file()  # the partial write exists...
    assert not (out / "checkpoint-4").exists()  # ...but never under a checkpoint name
    assert (out / "checkpoint-2" / ckpt.STATE_FILE).is_file()
    assert ckpt.find_latest_checkpoint(out) == out / "checkpoint-2"
    assert ckpt.load_trainer_state(out / "checkpoint-2")["step"] == 2

    resumed = train(run_cfg(tiny_lm.path, out, data, **{"output.save_every": 2, "train.max_steps": 4,
                                                         "output.resume": "auto"}))
    assert resumed.steps == 4
    assert ckpt.find_latest_checkpoint(out) == out / "checkpoint-4"
    # Steps 3-4 ran twice (before the crash and after resuming) but are logged once.
    steps = [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]
    assert not (out / ".tmp-checkpoint-4").exists()


def test_keep_last_rotation_and_overwrite(tmp_path, tiny_lm):
    model = tf.AutoModelForCausalLM.from_pretrained(tiny_lm.path)
    for step in (1, 2, 3):
        ckpt.save_checkpoint(tmp_path, f"checkpoint-{step}", model, None, {"step": step})
        ckpt.rotate_checkpoints(tmp_path, keep_last=2)
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path)] == [2, 3]
    ckpt.save_checkpoint(tmp_path, "checkpoint-3", model, None, {"step": 33})  # re-saving replaces atomically
    assert ckpt.load_trainer_state(tmp_path / "checkpoint-3")["step"] == 33
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-2", "checkpoint-3"]


def test_rotation_after_resuming_from_an_earlier_checkpoint_drops_the_abandoned_run(tmp_path, tiny_lm):
    # Resumed from checkpoint-100 while checkpoint-200 (an abandoned continuation) exists,
    # keep_last=1: saving step 150 must keep 150, not the stale 200.
    model = tf.AutoModelForCausalLM.from_pretrained(tiny_lm.path)
    for step in (100, 200, 150):
        ckpt.save_checkpoint(tmp_path, f"checkpoint-{step}", model, None, {"step": step})
    ckpt.rotate_checkpoints(tmp_path, keep_last=1, current_step=150)
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path)] == [150]
    assert ckpt.resolve_resume("auto", tmp_path).name == "checkpoint-150"


def test_resume_from_a_path_that_is_not_a_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="output.resume"):
        ckpt.resolve_resume(str(tmp_path), tmp_path)
    assert ckpt.resolve_resume("auto", tmp_path / "none") is None
