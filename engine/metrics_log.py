"""Metrics sinks: `metrics.jsonl`, TensorBoard, W&B (optional) and a tqdm progress bar.

Every sink is written by rank 0 only; other ranks get a logger whose methods do nothing.
One JSONL line per call: {"step": int, "split": "train" | "eval", <metric>: float, ...}. A resumed
run first drops the lines the interrupted run wrote after its checkpoint's step.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

log = logging.getLogger("alignkit.train")


class MetricsLogger:
    """Writes scalar metrics to every enabled sink and drives the progress bar."""

    def __init__(self, output_dir: str | Path, total_steps: int, *, enabled: bool = True, tensorboard: bool = True,
                 wandb: bool = False, progress: bool = True, config: dict[str, Any] | None = None,
                 initial_step: int = 0) -> None:
        self.enabled = enabled
        self._tb = self._wandb = self._bar = self._jsonl = None
        if not enabled:
            return
        out = Path(output_dir)
        out.mkdir(parents=True, exist_ok=True)
        path = out / "metrics.jsonl"
        if initial_step > 0 and path.is_file():
            # Resuming: drop lines logged after the checkpoint by the interrupted run (they are redone).
            kept = [ln for ln in path.read_text(encoding="utf-8").splitlines()
                    if ln.strip() and json.loads(ln).get("step", 0) <= initial_step]
            path.write_text("".join(ln + "\n" for ln in kept), encoding="utf-8")
        self._jsonl = path.open("a", encoding="utf-8")
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(log_dir=str(out / "tensorboard"))
        if wandb:
            try:
                import wandb as wb
            except ImportError:
                log.warning("output.wandb=true but wandb is not installed (pip install wandb); skipping W&B")
            else:
                self._wandb = wb.init(project="alignkit", dir=str(out), config=config, resume="allow")
        if progress:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total_steps, initial=initial_step, desc="train", dynamic_ncols=True)

    def log(self, step: int, split: str, metrics: dict[str, float]) -> None:
        """Record one set of scalars for `split` at optimizer step `step`."""
        if not self.enabled:
            return
        clean = {k: float(v) for k, v in metrics.items()}
        self._jsonl.write(json.dumps({"step": step, "split": split, **clean}) + "\n")
        self._jsonl.flush()
        if self._tb is not None:
            for k, v in clean.items():
                self._tb.add_scalar(f"{split}/{k}", v, step)
        if self._wandb is not None:
            self._wandb.log({f"{split}/{k}": v for k, v in clean.items()}, step=step)
        if self._bar is not None:
            shown = {k: f"{v:.4g}" for k, v in clean.items() if k in ("loss", "lr") or split == "eval"}
            self._bar.set_postfix({(f"eval_{k}" if split == "eval" else k): v for k, v in shown.items()},
                                  refresh=False)

    def advance(self, n: int = 1) -> None:
        """Move the progress bar by `n` optimizer steps."""
        if self._bar is not None:
            self._bar.update(n)

    def close(self) -> None:
        """Flush and close every sink."""
        if self._bar is not None:
            self._bar.close()
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()
        if self._jsonl is not None:
            self._jsonl.close()
        self._tb = self._wandb = self._bar = self._jsonl = None
