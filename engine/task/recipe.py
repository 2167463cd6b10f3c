"""The built-in task recipe (`tools/train` with no arguments): SFT warm-up, then verifier-labelled DPO.

What it does, all on the CPU in a few minutes, through the same engine a user's recipe uses:

1. draws disjoint train / held-out problems of reversed-digit addition (`arithmetic.py`), trains
   a sentencepiece tokenizer on the train corpus and initialises a tiny Llama (`<run>/base`);
2. SFT warm-up (`algo.name=sft`) on demonstrations from a careless teacher that drops the carries
   with probability `task.teacher_carry_error` on problems that carry: the model learns the right
   and the slipped answer and greedily writes the slip, so it ends mediocre (held-out exact match
   near the ~30% of problems without a carry);
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
from .arithmetic import Problem, corpus, is_correct, split_problems, teacher_answer
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
    # SFT warm-up on a careless teacher's demonstrations (mediocre on purpose, see arithmetic.py).
    teacher_carry_error: float = 0.6
    sft_steps: int = 800
    sft_lr: float = 1e-3
    sft_batch_size: int = 64
    # Preference stage: `rounds` x (sample -> pairs -> DPO from the newest model).
    rounds: int = 3
    prompts_per_round: int = 1024
    group_size: int = 8
    temperature: float = 1.0
    pairs_per_prompt: int = 2
    dpo_steps: int = 60
    dpo_lr: float = 1e-4
    dpo_beta: float = 0.1
    dpo_batch_size: int = 32
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
    for name in ("threads", "sft_steps", "group_size", "prompts_per_round", "dpo_batch_size", "sft_batch_size",
                 "n_eval"):
        if getattr(cfg, name) < 1:
            raise ValueError(f"task.{name}={getattr(cfg, name)}: must be >= 1")
    if cfg.rounds < 0 or cfg.dpo_steps < 1:
        raise ValueError(f"task.rounds={cfg.rounds}, task.dpo_steps={cfg.dpo_steps}: need rounds >= 0, dpo_steps >= 1")
    if not 0.0 <= cfg.teacher_carry_error <= 1.0:
        raise ValueError(f"task.teacher_carry_error={cfg.teacher_carry_error}: expected a probability in [0, 1]")
    if cfg.prompts_per_round > cfg.n_train:
        raise ValueError(f"task.prompts_per_round={cfg.prompts_per_round} exceeds task.n_train={cfg.n_train}")
    return cfg


def _fields(cls: type) -> list[Any]:
    import dataclasses

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
                  seed: int, progress: bool) -> Path:
    """One engine run (the same `load_config` + `train` path as `tools/train recipe.yaml`); returns final/."""
    from alignkit.engine.config import load_config
    from alignkit.engine.trainer import train

    cfg = load_config(None, algo + [
        f"model.path={model}", f"data.train={data}", "data.max_length=32", "data.max_prompt_length=16",
        f"train.batch_size={batch}", f"train.lr={lr}", f"train.max_steps={steps}", "train.schedule=constant",
        f"train.seed={seed}", f"output.dir={out}", "output.tensorboard=false", f"output.progress={progress}",
        "output.log_every=50",
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
    t0 = time.perf_counter()
    stages: dict[str, float] = {"startup": round(_seconds_since_process_start(), 2)}

    def lap(name: str, since: float) -> float:
        now = time.perf_counter()
        stages[name] = round(stages.get(name, 0.0) + now - since, 2)
        return now

    run_dir = Path(cfg.out_dir or f"runs/task/{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}")
    run_dir.mkdir(parents=True, exist_ok=True)
    train_set, eval_set = split_problems(cfg.digits, cfg.n_train, cfg.n_eval, cfg.seed)
    tokenizer = build_tokenizer(corpus(train_set), run_dir / "base")
    build_tiny_model(cfg.model, tokenizer, run_dir / "base", seed=cfg.seed)
    teacher = random.Random(cfg.seed)
    sft_data = _write_jsonl(run_dir / "sft.jsonl", [
        {"prompt": p.prompt, "completion": teacher_answer(p, cfg.teacher_carry_error, teacher)} for p in train_set])
    t = lap("setup", t0)

    policy = _engine_train(["algo.name=sft"], run_dir / "base", sft_data, run_dir / "sft", cfg.sft_steps,
                           cfg.sft_lr, cfg.sft_batch_size, cfg.seed, cfg.progress)
    t = lap("sft", t)
    model, tokenizer = _load(policy)
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
            "stages": stages, "rounds": history, "run_dir": str(run_dir), "final_model": str(policy)}


def print_report(summary: dict[str, Any]) -> None:
    """The human-readable table (stderr)."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title="alignkit built-in task: reversed-digit addition, held-out exact match (greedy)")
    table.add_column("stage")
    table.add_column("accuracy", justify="right")
    table.add_row("after SFT warm-up", f"{summary['accuracy_before']:.1%}")
    table.add_row(f"after DPO ({len(summary['rounds'])} rounds)", f"{summary['accuracy_after']:.1%}")
    table.add_row("gain", f"{summary['accuracy_after'] - summary['accuracy_before']:+.1%}")
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
