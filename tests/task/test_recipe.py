"""The built-in task recipe: option parsing, and a tiny budget end to end through the real engine."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from alignkit.engine.task.recipe import TaskConfig, main, parse_overrides

REPO = Path(__file__).resolve().parents[2]


def test_overrides_set_nested_fields_and_unknown_keys_are_rejected():
    cfg = parse_overrides(["task.sft_max_steps=7", "task.model.layers=1", "task.dpo_beta=0.25"])
    assert (cfg.sft_max_steps, cfg.model.layers, cfg.dpo_beta) == (7, 1, 0.25)
    assert cfg.rounds == TaskConfig().rounds
    with pytest.raises(ValueError, match="sft_max_stpes"):
        parse_overrides(["task.sft_max_stpes=7"])
    with pytest.raises(ValueError, match="task.<option>"):
        parse_overrides(["train.lr=1"])
    with pytest.raises(ValueError, match="task.threads"):
        parse_overrides(["task.threads=0"])


def test_main_reports_a_bad_option_with_exit_code_2(capsys):
    assert main(["task.no_such_option=1"]) == 2
    assert "no_such_option" in capsys.readouterr().err


def test_tiny_budget_runs_sft_and_dpo_and_prints_one_summary_line(tmp_path, capsys):
    # One-digit problems and a 1-layer model: SFT learns the format in a few dozen steps, so
    # sampling finds correct and incorrect answers and the DPO round really runs.
    code = main([f"task.out_dir={tmp_path}", "task.digits=1", "task.n_train=70", "task.n_eval=20",
                 "task.model.hidden_size=32", "task.model.layers=1", "task.model.intermediate_size=64",
                 "task.sft_min_steps=40", "task.sft_max_steps=40", "task.n_dev=10", "task.sft_batch_size=32", "task.rounds=1", "task.prompts_per_round=40",
                 "task.group_size=8", "task.dpo_steps=2", "task.dpo_batch_size=8"])
    assert code == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1  # stdout is only the JSON line; the table goes to stderr
    summary = json.loads(out[0])["summary"]
    assert 0.0 <= summary["accuracy_before"] <= 1.0 and 0.0 <= summary["accuracy_after"] <= 1.0
    assert summary["seconds"] > 0 and summary["sft_steps"] == 40
    assert summary["rounds"][0]["pairs"] > 0
    # The preference stage trained through the engine from the SFT checkpoint.
    assert (tmp_path / "dpo-0" / "final" / "model.safetensors").exists()
    assert summary["final_model"] == str(tmp_path / "dpo-0" / "final")
    rows = [json.loads(line) for line in (tmp_path / "pairs-0.jsonl").read_text().splitlines()]
    assert len(rows) == summary["rounds"][0]["pairs"]


@pytest.mark.slow
def test_default_run_gains_at_least_ten_points_within_five_minutes(tmp_path):
    env = dict(os.environ)
    proc = subprocess.run([sys.executable, str(REPO / "tools" / "train")], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])["summary"]
    assert summary["accuracy_after"] - summary["accuracy_before"] >= 0.10, summary
    assert summary["seconds"] <= 300, summary
