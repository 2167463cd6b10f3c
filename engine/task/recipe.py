"""The built-in task recipe (`tools/train` with no arguments): SFT warm-up, then verifier-labelled DPO.

What it does, all on the CPU in a few minutes, through the same engine a user's recipe uses:

1. draws disjoint train / held-out problems of reversed-digit addition (`arithmetic.py`), trains
   a sentencepiece tokenizer on the train corpus and initialises a tiny Llama (`<run>/base`);
2. SFT warm-up (`algo.name=sft`), stopped on purpose mid-way through learning the carries: it
   runs in resumed chunks until exact match on a dev split (apart from the eval set) reaches
   `task.sft_target` (30%), so the model starts the preference stage mediocre;
3. greedy held-out exact match: "before";
4. samples `task.group_size` completions per training prompt from the current model, labels them
   with the verifier and writes (prompt, correct, incorrect) pairs (`pairs.py`);
5. DPO (`algo.name=dpo`) on those pairs, reference = the model the pairs were sampled from;
   steps 4-5 repeat for `task.rounds` rounds (iterative DPO: fresh pairs from the newest model);
6. greedy held-out exact match again: "after". A table goes to stderr; stdout gets ONE JSON line
   `{"summary": {"accuracy_before", "accuracy_after", "seconds", ...}}` for scripts.

Options are `task.<field>=value` overrides of `TaskConfig` (unknown keys are rejected).
"""

from __future__ import annotations

import dataclasses
import json
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from . import rollouts
from .arithmetic import Problem, corpus, is_correct, split_problems
from .pairs import build_pairs
from .tiny_model import TinyModelConfig, build_tiny_model
from .tokenizer import build_tokenizer


@dataclass
class TaskConfig:
    """Options of the built-in task (`task.<name>=value`)."""

    seed: int = 0
    out_dir: str = ""  # "" => runs/task/<UTC timestamp>
    digits: int = 2
    n_train: int = 5000
    n_eval: int = 500
    model: TinyModelConfig = field(default_factory=TinyModelConfig)
    n_dev: int = 200  # held out too, apart from the eval set: decides when the warm-up stops
    # SFT warm-up: stopped on purpose while the model is mediocre. How many steps that takes
    # swings by hundreds with the seed and data order (a tiny model learns carries abruptly:
    # 21% at step 500 in one run, 77% in another), so the warm-up runs in chunks of
    # `sft_check_every` steps (resumed from its checkpoint: the same trajectory as one run) and
    # stops at the first check where dev exact match >= `sft_target`, or at `sft_max_steps`.
    sft_target: float = 0.3
    sft_min_steps: int = 250
    sft_check_every: int = 50
    sft_max_steps: int = 1000
    sft_lr: float = 1e-3
    sft_batch_size: int = 64
    # Preference stage: `rounds` x (sample -> pairs -> DPO from the newest model).
    rounds: int = 2
    prompts_per_round: int = 2048
    group_size: int = 8
    temperature: float = 1.0
    pairs_per_prompt: int = 4
    dpo_steps: int = 100
    dpo_lr: float = 1e-4
    # beta 0.1 (with lr 1e-4 or 2e-4) pushed rejected answers down so hard that accuracy fell
    # (21% -> 11%); 0.5 saturates the margin sooner and gained +24 points in one round (measured).
    dpo_beta: float = 0.5
    dpo_batch_size: int = 64
    max_new_tokens: int = 5  # longest answer is digits + 1 characters, plus the stop token
    progress: bool = False  # the engine's per-step progress bars
    # One intra-op thread: the model is so small that a second thread gains little on an idle
    # machine, while on a busy one two spinning OpenMP threads ran SFT 10x slower (measured).
    threads: int = 1


def parse_overrides(overrides: list[str]) -> TaskConfig:
    """`task.key=value` strings -> TaskConfig; raises ValueError naming a bad key or value."""
    schema = OmegaConf.structured(TaskConfig)
    user = []
    for item in overrides:
        if not item.startswith("task.") or "=" not in item:
            raise ValueError(f"built-in task option {item!r}: expected task.<option>=<value> "
                             f"(options: {', '.join(f.name for f in _fields(TaskConfig))})")
        user.append(item[len("task."):])
    try:
        merged = OmegaConf.merge(schema, OmegaConf.from_dotlist(user))
    except OmegaConfBaseException as exc:
        raise ValueError(f"built-in task: {str(exc).splitlines()[0]} "
                         f"(options: {', '.join(f.name for f in _fields(TaskConfig))}; "
                         f"model options: {', '.join(f.name for f in _fields(TinyModelConfig))})") from None
    cfg: TaskConfig = OmegaConf.to_object(merged)
    for name in ("threads", "sft_min_steps", "sft_check_every", "sft_max_steps", "group_size", "prompts_per_round", "dpo_batch_size", "sft_batch_size",
                 "n_eval"):
        if getattr(cfg, name) < 1:
            raise ValueError(f"task.{name}={getattr(cfg, name)}: must be >= 1")
    if cfg.rounds < 0 or cfg.dpo_steps < 1:
        raise ValueError(f"task.rounds={cfg.rounds}, task.dpo_steps={cfg.dpo_steps}: need rounds >= 0, dpo_steps >= 1")
    if cfg.prompts_per_round > cfg.n_train:
        raise ValueError(f"task.prompts_per_round={cfg.prompts_per_round} exceeds task.n_train={cfg.n_train}")
    return cfg


def _fields(cls: type) -> list[Any]:
    return list(dataclasses.fields(cls))


def _seconds_since_process_start() -> float:
    """Wall time since this process started (interpreter + imports count toward the budget)."""
    try:
        import psutil

        return max(0.0, time.time() - psutil.Process().create_time())
    except ImportError:  # psutil is optional: count from here instead
        return 0.0


def _write_jsonl(path: Path, rows: list[dict[str, str]]) -> Path:
    with path.open("w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    return path


def _engine_train(algo: list[str], model: Path, data: Path, out: Path, steps: int, lr: float, batch: int,
                  seed: int, progress: bool, extra: tuple[str, ...] = ()) -> Path:
    """One engine run (the same `load_config` + `train` path as `tools/train recipe.yaml`); returns final/."""
    from alignkit.engine.config import load_config
    from alignkit.engine.trainer import train

    cfg = load_config(None, algo + [
        f"model.path={model}", f"data.train={data}", "data.max_length=32", "data.max_prompt_length=16",
        f"train.batch_size={batch}", f"train.lr={lr}", f"train.max_steps={steps}", "train.schedule=constant",
        f"train.seed={seed}", f"output.dir={out}", "output.tensorboard=false", f"output.progress={progress}",
        "output.log_every=50", *extra,
    ])
    result = train(cfg)
    if result.final_dir is None:
        raise RuntimeError(f"engine run in {out} saved no final model (output.save_final is off?)")
    return result.final_dir


def _load(path: Path) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(path), AutoTokenizer.from_pretrained(path)


def accuracy(model: Any, tokenizer: Any, problems: list[Problem], max_new_tokens: int) -> float:
    """Greedy held-out exact match in [0, 1]."""
    outs = rollouts.generate(model, tokenizer, [p.prompt for p in problems], n=1, temperature=0.0,
                             max_new_tokens=max_new_tokens)
    return sum(is_correct(p.prompt, o[0]) for p, o in zip(problems, outs)) / len(problems)


def run(cfg: TaskConfig) -> dict[str, Any]:
    """Run the whole pipeline; returns the summary dict (also what the JSON line holds)."""
    import torch

    torch.set_num_threads(cfg.threads)
    if not cfg.progress:  # transformers' per-save/per-load bars would bury the report
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    t0 = time.perf_counter()
    stages: dict[str, float] = {"startup": round(_seconds_since_process_start(), 2)}

    def lap(name: str, since: float) -> float:
        now = time.perf_counter()
        stages[name] = round(stages.get(name, 0.0) + now - since, 2)
        return now

    run_dir = Path(cfg.out_dir or f"runs/task/{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}")
    run_dir.mkdir(parents=True, exist_ok=True)
    train_set, held_out = split_problems(cfg.digits, cfg.n_train, cfg.n_eval + cfg.n_dev, cfg.seed)
    eval_set, dev_set = held_out[:cfg.n_eval], held_out[cfg.n_eval:]
    tokenizer = build_tokenizer(corpus(train_set), run_dir / "base")
    build_tiny_model(cfg.model, tokenizer, run_dir / "base", seed=cfg.seed)
    sft_data = _write_jsonl(run_dir / "sft.jsonl", [{"prompt": p.prompt, "completion": p.answer} for p in train_set])
    t = lap("setup", t0)

    sft_steps, dev_acc = 0, 0.0
    while sft_steps < cfg.sft_max_steps and (sft_steps == 0 or dev_acc < cfg.sft_target):
        sft_steps = min(cfg.sft_max_steps, cfg.sft_min_steps if sft_steps == 0 else sft_steps + cfg.sft_check_every)
        policy = _engine_train(["algo.name=sft"], run_dir / "base", sft_data, run_dir / "sft", sft_steps,
                               cfg.sft_lr, cfg.sft_batch_size, cfg.seed, cfg.progress,
                               ("output.resume=auto", f"output.save_every={sft_steps}", "output.keep_last=1"))
        model, tokenizer = _load(policy)
        dev_acc = accuracy(model, tokenizer, dev_set, cfg.max_new_tokens) if dev_set else 1.0
    t = lap("sft", t)
    before = accuracy(model, tokenizer, eval_set, cfg.max_new_tokens)
    t = lap("eval", t)

    rng = random.Random(cfg.seed + 1)
    history = []
    for r in range(cfg.rounds):
        prompts = [p.prompt for p in rng.sample(train_set, cfg.prompts_per_round)]
        samples = rollouts.generate(model, tokenizer, prompts, n=cfg.group_size, temperature=cfg.temperature,
                                    max_new_tokens=cfg.max_new_tokens, seed=cfg.seed * 1000 + r)
        pairs = build_pairs(prompts, samples, is_correct, cfg.pairs_per_prompt)
        sample_acc = sum(is_correct(p, c) for p, g in zip(prompts, samples) for c in g) / (len(prompts) * cfg.group_size)
        t = lap("sample", t)
        if not pairs:
            history.append({"round": r, "pairs": 0, "sample_accuracy": sample_acc})
            continue
        data = _write_jsonl(run_dir / f"pairs-{r}.jsonl", pairs)
        policy = _engine_train(["algo.name=dpo", f"algo.beta={cfg.dpo_beta}"], policy, data, run_dir / f"dpo-{r}",
                               cfg.dpo_steps, cfg.dpo_lr, cfg.dpo_batch_size, cfg.seed + r, cfg.progress)
        model, tokenizer = _load(policy)
        t = lap("dpo", t)
        history.append({"round": r, "pairs": len(pairs), "sample_accuracy": round(sample_acc, 4)})
    after = accuracy(model, tokenizer, eval_set, cfg.max_new_tokens)
    lap("eval", t)
    total = stages["startup"] + time.perf_counter() - t0
    return {"accuracy_before": before, "accuracy_after": after, "seconds": round(total, 1),
            "sft_steps": sft_steps, "stages": stages, "rounds": history, "run_dir": str(run_dir), "final_model": str(policy)}


def print_report(summary: dict[str, Any]) -> None:
    """The human-readable table (stderr)."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title="alignkit built-in task: reversed-digit addition, held-out exact match (greedy)")
    table.add_column("stage")
    table.add_column("accuracy", justify="right")
    table.add_row(f"after SFT warm-up ({summary['sft_steps']} steps)", f"{summary['accuracy_before']:.1%}")
    table.add_row(f"after DPO ({len(summary['rounds'])} rounds)", f"{summary['accuracy_after']:.1%}")
    table.add_row("gain", f"{100 * (summary['accuracy_after'] - summary['accuracy_before']):+.1f} points")
    console = Console(stderr=True)
    console.print(table)
    console.print("time (s): " + ", ".join(f"{k} {v}" for k, v in summary["stages"].items())
                  + f"; total {summary['seconds']}")
    console.print("preference rounds: " + "; ".join(
        f"{h['pairs']} pairs (sampled accuracy {h['sample_accuracy']:.1%})" for h in summary["rounds"]))
    console.print(f"final model: {summary['final_model']}")


def main(overrides: list[str]) -> int:
    """Entry point of `tools/train [task.<option>=value ...]`; returns the exit code."""
    try:
        cfg = parse_overrides(list(overrides))
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    summary = run(cfg)
    print_report(summary)
    print(json.dumps({"summary": summary}), flush=True)
    return 0
