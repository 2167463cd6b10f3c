"""The training loop: `train(cfg) -> TrainResult`.

Offline objectives (sft, dpo, ipo, simpo, kto, orpo, reward_model) run this loop:

    setup:  objective <- cfg.algo; tokenizer; rows -> token ids (data.py);
            reference log-probs cached on the rows, reference model freed (if needs.reference);
            policy (from the checkpoint when resuming); AdamW + LR schedule; logger
    step:   grad_accum x [ micro-batch -> forward quantities the objective declared (forward.py)
                           -> objective.loss(batch, out) -> backward ]
            -> all-reduce gradients (torch.distributed) -> clip -> optimizer step -> scheduler step
            -> log (rank 0) -> eval every train.eval_every -> checkpoint every output.save_every
    end:    final eval, final model in <output.dir>/final

Online objectives (`needs.rollouts`) will add a rollout phase at the top of each step
(prompts -> sampler.generate -> rewards -> objective.advantages -> the same forward/loss/backward);
`_next_micro_batches` is the one place that phase plugs in.
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.distributed as dist

from alignkit.engine import checkpoint as ckpt
from alignkit.engine import models
from alignkit.engine.collate import BatchStream, collate, completion_tokens, padded_length
from alignkit.engine.config import build_config, objective_from_config, to_yaml
from alignkit.engine.data import load_splits
from alignkit.engine.forward import compute_outputs
from alignkit.engine.metrics_log import MetricsLogger
from alignkit.engine.optim import build_optimizer, build_scheduler, clip_gradients
from alignkit.engine.reference import cache_reference_logps

log = logging.getLogger("alignkit.train")


@dataclass
class TrainResult:
    """What a finished run produced."""

    output_dir: Path
    final_dir: Path | None
    steps: int
    eval_metrics: dict[str, float] = field(default_factory=dict)
    train_metrics: dict[str, float] = field(default_factory=dict)


def dist_rank_world() -> tuple[int, int]:
    """(rank, world size) when torch.distributed is initialised, else (0, 1)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def autocast_factory(mode: str, device: torch.device) -> Callable[[], Any]:
    """`mixed_precision`: "auto" => bf16 autocast on CUDA with bf16 support, none otherwise; "bf16"; "no"."""
    if mode == "auto":
        mode = "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "no"
    if mode == "no":
        return contextlib.nullcontext
    return lambda: torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def _to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def _all_reduce_gradients(model: torch.nn.Module, world: int) -> None:
    """Average gradients across ranks (plain all-reduce; DDP/FSDP wrapping is a later issue)."""
    if world == 1:
        return
    for p in model.parameters():
        if p.grad is not None:
            dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
            p.grad.div_(world)


@torch.no_grad()
def evaluate(policy: torch.nn.Module, objective: Any, examples: list[dict[str, Any]], pad_id: int,
             batch_size: int, device: torch.device, autocast: Callable[[], Any]) -> dict[str, float]:
    """Row-weighted mean loss and objective metrics over this rank's share of `examples` (all-reduced)."""
    rank, world = dist_rank_world()
    fmt = objective.needs.data
    # Longest first: batches of similar lengths waste less compute on padding (order does not change the means).
    mine = sorted(examples[rank::world], key=padded_length, reverse=True)
    sums: dict[str, float] = defaultdict(float)
    # Losses are row-weighted below; give each batch the token normalizer that makes a token-mean
    # loss average over every eval token (all ranks): tokens x this batch's share of the rows.
    counts = torch.tensor([float(sum(map(completion_tokens, mine))), float(len(mine))], dtype=torch.float64)
    if world > 1:
        dist.all_reduce(counts)
    eval_tokens, eval_rows = counts.tolist()
    policy.eval()
    try:
        for start in range(0, len(mine), batch_size):
            rows = mine[start: start + batch_size]
            batch = collate(rows, fmt, pad_id)
            if "completion_mask" in batch:
                batch["token_normalizer"] = torch.tensor(max(eval_tokens * len(rows) / max(eval_rows, 1.0), 1.0))
            batch = _to_device(batch, device)
            with autocast():
                loss, metrics = objective.loss(batch, compute_outputs(policy, objective.needs, batch))
            sums["loss"] += float(loss) * len(rows)
            for k, v in metrics.items():
                sums[k] += float(v) * len(rows)
            sums["_rows"] += len(rows)
    finally:
        policy.train()
    keys = sorted(sums)
    if world > 1:
        # A rank whose shard is empty (fewer eval rows than ranks) has no metric keys; the
        # all-reduce below needs the same keys in the same order everywhere.
        every_rank: list[Any] = [None] * world
        dist.all_gather_object(every_rank, keys)
        keys = sorted(set().union(*every_rank) | {"_rows"})
    totals = torch.tensor([sums.get(k, 0.0) for k in keys], dtype=torch.float64)
    if world > 1:
        dist.all_reduce(totals)
    n = max(totals[keys.index("_rows")].item(), 1.0)
    return {k: totals[i].item() / n for i, k in enumerate(keys) if k != "_rows"}


def _next_micro_batches(stream: BatchStream, grad_accum: int, device: torch.device) -> list[dict[str, torch.Tensor]]:
    """The micro-batches of one optimizer step (the online rollout phase will produce these instead)."""
    return [_to_device(stream.next(), device) for _ in range(grad_accum)]


def _set_token_normalizer(micro_batches: list[dict[str, torch.Tensor]], world: int) -> None:
    """Give every micro-batch `token_normalizer` = completion tokens of the whole step / (accum x ranks).

    The loop averages micro-batch losses over accumulation steps and ranks; a token-mean loss that
    divides its own token sum by this number therefore averages over every token of the step,
    however the tokens fall into micro-batches (a per-micro-batch mean would not).
    """
    if not micro_batches or "completion_mask" not in micro_batches[0]:
        return
    tokens = sum(mb["completion_mask"].sum() for mb in micro_batches).to(torch.float64)
    if world > 1:
        dist.all_reduce(tokens)
    normalizer = (tokens / (len(micro_batches) * world)).clamp_min(1.0).float()
    for mb in micro_batches:
        mb["token_normalizer"] = normalizer


def train(cfg: Any) -> TrainResult:
    """Run one training job described by `cfg` (a TrainConfig, DictConfig or mapping)."""
    cfg = build_config(cfg)
    objective = objective_from_config(cfg)
    needs = objective.needs
    if needs.rollouts is not None or needs.data == "prompt":
        raise NotImplementedError("online objectives land with the online-RL issue")
    if needs.reward_model or needs.value_model:
        raise NotImplementedError(f"{cfg.algo.name}: reward/value models are supplied with rollouts "
                                  "(online objectives), which land with the online-RL issue")
    rank, world = dist_rank_world()
    is_main = rank == 0
    out_dir = Path(cfg.output.dir)
    device = models.resolve_device(cfg.model.device)
    dtype = models.resolve_dtype(cfg.model.dtype, device)  # frozen models (reference)
    train_dtype = models.policy_dtype(cfg.model.dtype, device)  # the trained weights
    autocast = autocast_factory(cfg.train.mixed_precision, device)
    seed_everything(cfg.train.seed)

    # --- data, cached reference log-probs ----------------------------------------------------
    tokenizer = models.load_tokenizer(cfg.model.path, cfg.model.trust_remote_code)
    train_split, eval_split = load_splits(cfg.data, needs.data, tokenizer, cfg.train.seed)
    eval_rows = eval_split.examples if eval_split is not None else []
    log.info("data: %d train rows (%d skipped), %d eval rows", len(train_split.examples), train_split.skipped,
             len(eval_rows))
    if needs.reference:
        log.info("caching reference log-probs for %d train + %d eval rows", len(train_split.examples), len(eval_rows))
        cache_reference_logps(cfg, needs, [train_split.examples, eval_rows], tokenizer.pad_token_id,
                              dtype, device, autocast)

    # --- policy, optimizer, schedule, resume -------------------------------------------------
    resume_from = ckpt.resolve_resume(cfg.output.resume, out_dir)
    policy = models.load_policy(cfg, needs, str(resume_from) if resume_from else cfg.model.path,
                                train_dtype, device, tokenizer.pad_token_id)
    if needs.reference:
        # The cached reference ran in eval mode; dropout in the policy would bias every log-ratio.
        models.disable_dropout(policy)
    policy.train()
    optimizer = build_optimizer(policy, cfg.train.lr, cfg.train.weight_decay)
    stream = BatchStream(train_split.examples, needs.data, tokenizer.pad_token_id, cfg.train.batch_size,
                         cfg.train.seed, cfg.data.shuffle, rank, world)
    grad_accum = cfg.train.grad_accum
    total_steps = cfg.train.max_steps if cfg.train.max_steps > 0 else \
        math.ceil(cfg.train.epochs * stream.batches_per_epoch() / grad_accum)
    scheduler = build_scheduler(optimizer, cfg.train.schedule, cfg.train.warmup_steps, cfg.train.warmup_ratio,
                                total_steps)
    step = 0
    if resume_from is not None:
        state = ckpt.load_trainer_state(resume_from)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        stream.load_state_dict(state["data"])
        step = int(state["step"])
        if state.get("objective") != cfg.algo.name:
            log.warning("resuming a %r checkpoint with algo.name=%r", state.get("objective"), cfg.algo.name)
        ckpt.set_rng_state(state["rng"])
        log.info("resumed from %s at step %d", resume_from, step)

    config_yaml = to_yaml(cfg)
    if is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "config.yaml").write_text(config_yaml)
    logger = MetricsLogger(out_dir, total_steps, enabled=is_main, tensorboard=cfg.output.tensorboard,
                           wandb=cfg.output.wandb, progress=cfg.output.progress, initial_step=step,
                           config=dict(_plain(cfg)))

    def save(name: str, with_state: bool) -> Path | None:
        path = None
        if is_main:
            state = None if not with_state else {
                "step": step, "data": stream.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "rng": ckpt.rng_state(), "total_steps": total_steps,
                "objective": cfg.algo.name}
            path = ckpt.save_checkpoint(out_dir, name, policy, tokenizer, state, config_yaml)
            if with_state:
                ckpt.rotate_checkpoints(out_dir, cfg.output.keep_last, current_step=step)
        if world > 1:
            dist.barrier()
        return path

    # --- the step loop -----------------------------------------------------------------------
    window: dict[str, torch.Tensor] = defaultdict(lambda: torch.zeros((), device=device))
    window_steps, train_metrics, eval_metrics, last_eval = 0, {}, {}, -1
    try:
        while step < total_steps:
            optimizer.zero_grad(set_to_none=True)
            micro_batches = _next_micro_batches(stream, grad_accum, device)
            _set_token_normalizer(micro_batches, world)
            for batch in micro_batches:
                with autocast():
                    out = compute_outputs(policy, needs, batch)
                    loss, metrics = objective.loss(batch, out)
                (loss / grad_accum).backward()
                window["loss"] += loss.detach().float() / grad_accum
                for k, v in metrics.items():
                    window[k] += torch.as_tensor(v, device=device).detach().float() / grad_accum
            _all_reduce_gradients(policy, world)
            grad_norm = clip_gradients(policy.parameters(), cfg.train.max_grad_norm)
            lr = scheduler.get_last_lr()[0]
            optimizer.step()
            scheduler.step()
            step += 1
            window_steps += 1
            window["grad_norm"] += grad_norm
            logger.advance()

            if step % max(cfg.output.log_every, 1) == 0 or step == total_steps:
                train_metrics = {k: float(v) / window_steps for k, v in window.items()}
                train_metrics.update(lr=lr, epoch=stream.epoch + stream.batch / max(stream.batches_per_epoch(), 1))
                logger.log(step, "train", train_metrics)
                window.clear()
                window_steps = 0
            if eval_rows and cfg.train.eval_every > 0 and step % cfg.train.eval_every == 0:
                eval_metrics = evaluate(policy, objective, eval_rows, tokenizer.pad_token_id,
                                        cfg.train.eval_batch_size, device, autocast)
                logger.log(step, "eval", eval_metrics)
                last_eval = step
            if cfg.output.save_every > 0 and step % cfg.output.save_every == 0:
                save(f"checkpoint-{step}", with_state=True)

        if eval_rows and last_eval != step:
            eval_metrics = evaluate(policy, objective, eval_rows, tokenizer.pad_token_id,
                                    cfg.train.eval_batch_size, device, autocast)
            logger.log(step, "eval", eval_metrics)
        final_dir = save("final", with_state=False) if cfg.output.save_final else None
    finally:
        logger.close()
    return TrainResult(out_dir, final_dir, step, eval_metrics, train_metrics)


def _plain(cfg: Any) -> dict[str, Any]:
    from omegaconf import OmegaConf

    return OmegaConf.to_container(cfg, resolve=True)
