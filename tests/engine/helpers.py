"""Helpers for the engine tests: JSONL writing, toy datasets and a base config."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any


def write_jsonl(path: Path, rows: list) -> Path:
    """Write rows (dicts, or raw strings for malformed lines) one per line."""
    with open(path, "w", encoding="utf-8") as fh:
        for row in rows:
            fh.write((row if isinstance(row, str) else json.dumps(row)) + "\n")
    return path


def sft_rows(n: int, seed: int = 0) -> list[dict[str, str]]:
    """A learnable SFT task: the completion repeats the prompt's animal, then 'sat on the mat'."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        animal = rng.choice(["cat", "dog"])
        rows.append({"prompt": f"what is the {animal} ?", "completion": f"the {animal} sat on the mat ."})
    return rows


def preference_rows(n: int, seed: int = 0) -> list[dict[str, str]]:
    """A learnable preference task: 'yes good' answers are chosen over 'no bad' ones."""
    rng = random.Random(seed)
    letters = "abcdefgh"
    rows = []
    for _ in range(n):
        q = " ".join(rng.choice(letters) for _ in range(3))
        rows.append({"prompt": f"question {q} ?", "chosen": f"yes good {q}", "rejected": f"no bad {q}"})
    return rows


def base_overrides(model_dir: Path, out_dir: Path, train: Path, algo: str, **extra: Any) -> list[str]:
    """Dotted overrides for a quiet, fast CPU run."""
    items = {"algo.name": algo, "model.path": str(model_dir), "data.train": str(train), "data.max_length": 32,
             "data.max_prompt_length": 16, "train.batch_size": 4, "train.lr": 1e-2, "train.schedule": "constant",
             "train.max_grad_norm": 1.0, "output.dir": str(out_dir), "output.progress": False,
             "output.log_every": 1, "output.save_final": False}
    items.update(extra)
    return [f"{k}={v}" for k, v in items.items()]
