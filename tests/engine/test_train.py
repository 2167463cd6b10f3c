"""End-to-end `train(cfg)` on tiny models: losses fall, metrics and TensorBoard are written, CLI works."""

from __future__ import annotations

import json

import pytest
import torch
import transformers as tf

from alignkit.engine.cli import main
from alignkit.engine.config import load_config
from alignkit.engine.trainer import train

from .helpers import base_overrides, preference_rows, sft_rows, write_jsonl


def read_metrics(out_dir):
    return [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]


def test_sft_loss_decreases_and_outputs_are_written(tmp_path, tiny_lm):
    data = write_jsonl(tmp_path / "s.jsonl", sft_rows(64))
    cfg = load_config(None, base_overrides(tiny_lm.path, tmp_path / "out", data, "sft", **{
        "train.max_steps": 25, "train.batch_size": 8, "data.eval_fraction": 0.125, "train.eval_every": 25,
        "output.save_final": True}))
    result = train(cfg)
    train_lines = [m for m in read_metrics(result.output_dir) if m["split"] == "train"]
    assert [m["step"] for m in train_lines] == list(range(1, 26))
    first, last = train_lines[0]["loss"], train_lines[-1]["loss"]
    # Random init: loss ~ ln(66 tokens) = 4.2; the task is nearly deterministic once learnt.
    assert first > 3.5 and last < 0.5 * first
    assert result.eval_metrics["loss"] < 0.5 * first
    assert list((result.output_dir / "tensorboard").glob("events.out.tfevents.*"))
    assert (result.output_dir / "config.yaml").read_text().count("name: sft") == 1
    reloaded = tf.AutoModelForCausalLM.from_pretrained(result.final_dir)  # a plain HF directory
    assert reloaded.config.num_hidden_layers == 2
    assert (result.final_dir / "tokenizer.json").is_file()


def test_dpo_raises_train_reward_accuracy(tmp_path, tiny_lm):
    data = write_jsonl(tmp_path / "p.jsonl", preference_rows(32))
    cfg = load_config(None, base_overrides(tiny_lm.path, tmp_path / "out", data, "dpo", **{
        "train.max_steps": 16, "train.batch_size": 8, "data.eval": str(data), "algo.beta": 0.5}))
    result = train(cfg)
    lines = read_metrics(result.output_dir)
    # At step 1 policy == reference: every implicit reward is 0, so accuracy (chosen > rejected) is 0.
    assert lines[0]["split"] == "train" and lines[0]["rewards/accuracy"] == 0.0
    evals = [m for m in lines if m["split"] == "eval"]
    assert len(evals) == 1 and evals[0]["step"] == 16
    assert result.eval_metrics["rewards/accuracy"] >= 0.9
    assert result.eval_metrics["loss"] < 0.5  # from log 2 = 0.693


def test_reward_model_learns_to_rank_the_chosen_answer(tmp_path, tiny_lm):
    data = write_jsonl(tmp_path / "p.jsonl", preference_rows(32))
    cfg = load_config(None, base_overrides(tiny_lm.path, tmp_path / "out", data, "reward_model", **{
        "train.max_steps": 12, "train.batch_size": 8, "data.eval": str(data), "output.tensorboard": False}))
    result = train(cfg)
    assert result.eval_metrics["rewards/accuracy"] >= 0.9
    assert result.eval_metrics["loss"] < 0.5


def test_online_objectives_are_not_implemented_yet(tmp_path, tiny_lm):
    plugin = tmp_path / "online.py"
    plugin.write_text("from alignkit.algorithms import Objective, Needs, Rollouts\n"
                      "class Online(Objective):\n"
                      "    needs = Needs(data='prompt', rollouts=Rollouts(group_size=4))\n")
    data = write_jsonl(tmp_path / "q.jsonl", [{"prompt": "hi"}])
    cfg = load_config(None, base_overrides(tiny_lm.path, tmp_path / "out", data, f"{plugin}:Online"))
    with pytest.raises(NotImplementedError, match="online-RL issue"):
        train(cfg)


def test_missing_model_path_names_the_key(tmp_path):
    data = write_jsonl(tmp_path / "s.jsonl", sft_rows(4))
    cfg = load_config(None, base_overrides(tmp_path / "no_model", tmp_path / "out", data, "sft"))
    with pytest.raises(FileNotFoundError, match="no_model.*model.path"):
        train(cfg)


def test_cli_trains_from_a_yaml_recipe_with_overrides(tmp_path, tiny_lm, capsys):
    data = write_jsonl(tmp_path / "s.jsonl", sft_rows(16))
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"algo: sft\nmodel:\n  path: {tiny_lm.path}\ndata:\n  train: {data}\n  max_length: 32\n"
                      f"  max_prompt_length: 16\noutput:\n  dir: {tmp_path / 'out'}\n  progress: false\n"
                      "  tensorboard: false\n")
    assert main([str(recipe), "train.max_steps=2", "train.lr=1e-3"]) == 0
    assert "done: 2 steps" in capsys.readouterr().out
    assert (tmp_path / "out" / "final" / "model.safetensors").is_file()
    assert main([str(recipe), "train.lrr=1"]) == 2
    assert "valid keys in 'train'" in capsys.readouterr().err


def test_cli_help_lists_sections_and_every_algorithm(capsys):
    from alignkit.algorithms import list_objectives

    assert main(["--help"]) == 0
    text = capsys.readouterr().out
    assert "train.lr = 1e-05" in text and "data.on_error = 'fail'" in text
    for name in list_objectives():
        assert f"  {name}:" in text
    assert "algo.beta = 0.1" in text  # DPO's default


def _offline_objectives():
    from alignkit.algorithms import list_objectives

    return sorted(n for n, cls in list_objectives().items() if cls.needs.rollouts is None)


@pytest.mark.parametrize("name", _offline_objectives())
def test_every_offline_objective_trains_through_the_engine(tmp_path, tiny_lm, name):
    from alignkit.algorithms import get_objective

    fmt = get_objective(name).needs.data
    data = write_jsonl(tmp_path / "d.jsonl", sft_rows(8) if fmt == "sft" else preference_rows(8))
    cfg = load_config(None, base_overrides(tiny_lm.path, tmp_path / "out", data, name, **{
        "train.max_steps": 2, "data.eval": str(data), "output.tensorboard": False}))
    result = train(cfg)
    assert result.steps == 2
    assert all(v == v and abs(v) < 1e6 for v in result.eval_metrics.values())  # finite, not NaN
    assert "loss" in result.eval_metrics and "grad_norm" in result.train_metrics


def test_bf16_autocast_and_bf16_weights_train_on_cpu(tmp_path, tiny_lm):
    data = write_jsonl(tmp_path / "s.jsonl", sft_rows(8))
    cfg = load_config(None, base_overrides(tiny_lm.path, tmp_path / "out", data, "sft", **{
        "train.max_steps": 2, "train.mixed_precision": "bf16", "model.dtype": "bfloat16",
        "output.tensorboard": False, "output.save_final": True}))
    result = train(cfg)
    assert 3.0 < result.train_metrics["loss"] < 6.0  # ~ln(66) at random init, finite in bf16
    assert tf.AutoModelForCausalLM.from_pretrained(result.final_dir).dtype == torch.bfloat16


def test_cli_without_arguments_runs_the_builtin_task(monkeypatch):
    import sys
    import types

    calls = []
    fake = types.ModuleType("alignkit.engine.task.recipe")
    fake.main = lambda overrides: calls.append(list(overrides)) or 0
    monkeypatch.setitem(sys.modules, "alignkit.engine.task.recipe", fake)
    assert main([]) == 0 and main(["task.steps=3", "train.lr=1e-3"]) == 0
    assert calls == [[], ["task.steps=3", "train.lr=1e-3"]]


def test_tools_train_is_an_executable_launcher():
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[2] / "tools" / "train"
    assert script.read_text().startswith("#!/usr/bin/env python3")
    proc = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "algo.name=<name>" in proc.stdout and "  dpo:" in proc.stdout


def _uneven_sft_rows() -> list[dict[str, str]]:
    # Completions of very different lengths: a per-micro-batch token mean would weigh the short
    # one's tokens as much as all of the long one's.
    return [{"prompt": "what is the cat ?", "completion": "the cat sat on the mat . the cat sat on the mat ."},
            {"prompt": "what is the dog ?", "completion": "dog"}]


def test_sft_token_mean_is_the_same_with_gradient_accumulation(tmp_path, tiny_lm):
    data = write_jsonl(tmp_path / "u.jsonl", _uneven_sft_rows())
    norms = []
    for batch_size, accum in ((2, 1), (1, 2)):
        out = tmp_path / f"out-{batch_size}-{accum}"
        cfg = load_config(None, base_overrides(tiny_lm.path, out, data, "sft", **{
            "train.max_steps": 1, "train.batch_size": batch_size, "train.grad_accum": accum,
            "data.shuffle": False, "data.max_length": 48}))
        train(cfg)
        norms.append(read_metrics(out)[0]["grad_norm"])
    assert norms[0] == pytest.approx(norms[1], rel=1e-4), norms


def test_sft_eval_loss_does_not_depend_on_the_eval_batch_size(tmp_path, tiny_lm):
    data = write_jsonl(tmp_path / "u.jsonl", _uneven_sft_rows())
    losses = []
    for eval_batch in (1, 2):
        cfg = load_config(None, base_overrides(tiny_lm.path, tmp_path / f"e{eval_batch}", data, "sft", **{
            "train.max_steps": 1, "train.lr": 1e-9, "data.eval": str(data), "train.eval_batch_size": eval_batch,
            "data.max_length": 48}))
        losses.append(train(cfg).eval_metrics["loss"])
    assert losses[0] == pytest.approx(losses[1], rel=1e-5), losses
