"""Two CPU ranks (gloo): sharded data, averaged gradients (identical weights), rank 0 alone writes."""

from __future__ import annotations

import json
import math
import os
import socket
import sys
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from datetime import timedelta

from .helpers import base_overrides, preference_rows, write_jsonl


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, model_dir: str, out_dir: str, data: str, port: int, tests_dir: str) -> None:
    sys.path.insert(0, tests_dir)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        from alignkit.engine.config import load_config
        from alignkit.engine.trainer import train

        cfg = load_config(None, base_overrides(Path(model_dir), Path(out_dir), Path(data), "dpo", **{
            "train.max_steps": 3, "data.eval": data, "output.tensorboard": False, "output.save_final": True}))
        from alignkit.engine import models

        held = {}
        real_load = models.load_policy

        def capture(*args, **kwargs):
            held["policy"] = real_load(*args, **kwargs)
            return held["policy"]

        models.load_policy = capture
        result = train(cfg)
        weights = torch.cat([p.detach().flatten() for p in held["policy"].parameters()])
        mine = torch.tensor([float(result.eval_metrics["loss"]), float(result.final_dir is not None)])
        gathered = [torch.zeros(2) for _ in range(2)]
        dist.all_gather(gathered, mine)
        all_weights = [torch.zeros_like(weights) for _ in range(2)]
        dist.all_gather(all_weights, weights)
        moved = not torch.equal(weights, torch.cat([p.detach().flatten() for p in real_load(
            cfg, result_needs(cfg), model_dir, torch.float32, torch.device("cpu"), 0).parameters()]))
        gathered.append(torch.tensor([float(torch.equal(all_weights[0], all_weights[1])), float(moved)]))
        if rank == 0:
            Path(out_dir, "ranks.json").write_text(json.dumps([g.tolist() for g in gathered]))
    finally:
        dist.destroy_process_group()


def result_needs(cfg):
    from alignkit.engine.config import objective_from_config

    return objective_from_config(cfg).needs


def test_two_gloo_ranks_agree_and_only_rank_zero_writes(tmp_path, tiny_lm):
    data = write_jsonl(tmp_path / "p.jsonl", preference_rows(16))
    out = tmp_path / "out"
    # fork: the children inherit the imported torch/transformers instead of importing them again.
    mp.start_processes(_worker, args=(str(tiny_lm.path), str(out), str(data), _free_port(),
                                      str(Path(__file__).resolve().parents[1])), nprocs=2, start_method="fork")
    (loss0, final0), (loss1, final1), (same_weights, moved) = json.loads((out / "ranks.json").read_text())
    assert same_weights == 1.0 and moved == 1.0  # gradients averaged: both ranks took the same steps
    assert loss0 == loss1  # the eval loss is all-reduced over both ranks' shards
    assert (final0, final1) == (1.0, 0.0)  # rank 0 saved the final model, rank 1 did not
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in lines] == [1, 2, 3, 3]  # written once (rank 0), not twice


def _eval_worker(rank: int, model_dir: str, out_dir: str, data: str, eval_data: str, port: int,
                 tests_dir: str) -> None:
    sys.path.insert(0, tests_dir)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    # A bounded timeout: were the ranks to disagree, the collective fails instead of hanging the suite.
    dist.init_process_group("gloo", rank=rank, world_size=2, timeout=timedelta(seconds=60))
    try:
        from alignkit.engine.config import load_config
        from alignkit.engine.trainer import train

        cfg = load_config(None, base_overrides(Path(model_dir), Path(out_dir), Path(data), "dpo", **{
            "train.max_steps": 1, "data.eval": eval_data, "output.tensorboard": False}))
        metrics = train(cfg).eval_metrics
        Path(out_dir, f"eval{rank}.json").write_text(json.dumps(metrics))
    finally:
        dist.destroy_process_group()


def test_eval_with_fewer_rows_than_ranks_gives_every_rank_the_same_metrics(tmp_path, tiny_lm):
    # One eval row for two ranks: rank 1's shard is empty, so it has computed no metric keys.
    data = write_jsonl(tmp_path / "p.jsonl", preference_rows(8))
    eval_data = write_jsonl(tmp_path / "e.jsonl", preference_rows(1))
    out = tmp_path / "out"
    mp.start_processes(_eval_worker, args=(str(tiny_lm.path), str(out), str(data), str(eval_data), _free_port(),
                                           str(Path(__file__).resolve().parents[1])), nprocs=2, start_method="fork")
    m0, m1 = (json.loads((out / f"eval{r}.json").read_text()) for r in (0, 1))
    assert m0 == m1 and "loss" in m0 and math.isfinite(m0["loss"])
