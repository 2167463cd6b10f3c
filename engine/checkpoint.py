"""Atomic checkpoints: HF model + tokenizer + trainer state, written to a temp dir then renamed.

Layout: `<output.dir>/checkpoint-<step>/` holds the `save_pretrained` model (safetensors), the
tokenizer, `trainer_state.pt` (optimizer, scheduler, RNG states, data position, step) and
`config.yaml`. A checkpoint is written under `.tmp-checkpoint-<step>/` and only renamed to its
final name (`os.replace`, atomic on one filesystem) once every file is on disk, so a crash
mid-write leaves the previous checkpoints intact and never a partial `checkpoint-<step>`.
"""

from __future__ import annotations

import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

STATE_FILE = "trainer_state.pt"
_CKPT_RE = re.compile(r"^checkpoint-(\d+)$")


def rng_state() -> dict[str, Any]:
    """The Python, NumPy and torch (CPU and CUDA) RNG states."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what `rng_state` captured."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(output_dir: str | Path, name: str, model: torch.nn.Module, tokenizer: Any,
                    trainer_state: dict[str, Any] | None, config_yaml: str | None = None) -> Path:
    """Write `<output_dir>/<name>/` atomically and return its path."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    tmp = output_dir / f".tmp-{name}"
    if tmp.exists():  # left over from a crash: never reused
        shutil.rmtree(tmp)
    tmp.mkdir()
    model.save_pretrained(tmp, safe_serialization=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(tmp)
    if config_yaml is not None:
        (tmp / "config.yaml").write_text(config_yaml)
    if trainer_state is not None:
        torch.save(trainer_state, tmp / STATE_FILE)
    _fsync_tree(tmp)  # contents durable before the rename makes them visible
    final = output_dir / name
    old = None
    if final.exists():  # os.replace cannot overwrite a non-empty directory: move the old one aside first
        old = output_dir / f".old-{name}"
        if old.exists():
            shutil.rmtree(old)
        os.replace(final, old)
    os.replace(tmp, final)
    _fsync_dir(output_dir)  # the rename itself survives a power loss
    if old is not None:
        shutil.rmtree(old)
    return final


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(root: Path) -> None:
    """fsync every file under `root`, then the directories, so a renamed checkpoint is never truncated."""
    for dirpath, _, filenames in os.walk(root):
        for fname in filenames:
            fd = os.open(os.path.join(dirpath, fname), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(Path(dirpath))


def list_checkpoints(output_dir: str | Path) -> list[tuple[int, Path]]:
    """Complete `checkpoint-<step>` dirs under `output_dir`, oldest first."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return []
    found = []
    for p in output_dir.iterdir():
        m = _CKPT_RE.match(p.name)
        if m and p.is_dir() and (p / STATE_FILE).is_file():
            found.append((int(m.group(1)), p))
    return sorted(found)


def find_latest_checkpoint(output_dir: str | Path) -> Path | None:
    """The newest complete checkpoint, or None."""
    ckpts = list_checkpoints(output_dir)
    return ckpts[-1][1] if ckpts else None


def rotate_checkpoints(output_dir: str | Path, keep_last: int, current_step: int | None = None) -> list[Path]:
    """Delete all but the newest `keep_last` checkpoints (keep_last <= 0 keeps all); returns the deleted.

    With `current_step`, checkpoints from beyond it are stale — left by a run that was resumed
    from an earlier checkpoint — and are deleted first, so the one just written is never rotated
    out in their favour and `resume=auto` cannot jump to the abandoned run.
    """
    ckpts = list_checkpoints(output_dir)
    doomed = []
    if current_step is not None:
        doomed = [p for step, p in ckpts if step > current_step]
        ckpts = [(step, p) for step, p in ckpts if step <= current_step]
    if keep_last > 0 and len(ckpts) > keep_last:
        doomed += [p for _, p in ckpts[:-keep_last]]
    for p in doomed:
        shutil.rmtree(p)
    return doomed


def resolve_resume(resume: str | None, output_dir: str | Path) -> Path | None:
    """`output.resume`: None => no resume; "auto" => latest complete checkpoint (or None); else a path."""
    if resume is None:
        return None
    if resume == "auto":
        return find_latest_checkpoint(output_dir)
    path = Path(resume)
    if not (path / STATE_FILE).is_file():
        raise FileNotFoundError(f"output.resume={resume!r} is not a complete checkpoint dir (no {STATE_FILE})")
    return path


def load_trainer_state(path: str | Path) -> dict[str, Any]:
    """Read `trainer_state.pt` from a checkpoint dir (written by this module, so unpickling is trusted)."""
    return torch.load(Path(path) / STATE_FILE, map_location="cpu", weights_only=False)
