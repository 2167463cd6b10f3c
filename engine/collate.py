"""Encoded rows -> padded tensors, and the seeded, rank-sharded order in which rows are visited.

Batch layouts (all right-padded with the tokenizer's pad id):

    sft:        input_ids, attention_mask, completion_mask            [B, L]
    preference: input_ids, attention_mask, completion_mask            [2B, L]
                (rows 0..B-1 = prompt+chosen, rows B..2B-1 = prompt+rejected: one forward for both)
                ref_chosen_logps, ref_rejected_logps                  [B] when cached by reference.py
    prompt:     input_ids, attention_mask                             [B, L]  (prompts only)

`completion_mask[i, t] = 1` when token t of row i belongs to the completion.
"""

from __future__ import annotations

from typing import Any

import torch

CACHED_KEYS = ("ref_chosen_logps", "ref_rejected_logps", "ref_logps")


def pad_sequences(prompts: list[list[int]], completions: list[list[int]] | None,
                  pad_id: int) -> dict[str, torch.Tensor]:
    """Concatenate prompt and completion ids per row and right-pad them into [N, L] tensors."""
    completions = completions if completions is not None else [[] for _ in prompts]
    seqs = [p + c for p, c in zip(prompts, completions)]
    length = max(len(s) for s in seqs)
    n = len(seqs)
    input_ids = torch.full((n, length), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((n, length), dtype=torch.long)
    completion_mask = torch.zeros((n, length), dtype=torch.long)
    for i, (p, c) in enumerate(zip(prompts, completions)):
        input_ids[i, : len(p) + len(c)] = torch.tensor(p + c, dtype=torch.long)
        attention_mask[i, : len(p) + len(c)] = 1
        completion_mask[i, len(p): len(p) + len(c)] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask, "completion_mask": completion_mask}


def collate(examples: list[dict[str, Any]], fmt: str, pad_id: int) -> dict[str, torch.Tensor]:
    """Pad a list of encoded rows of format `fmt` into a batch dict (layouts above)."""
    if fmt == "sft":
        batch = pad_sequences([e["prompt_ids"] for e in examples], [e["completion_ids"] for e in examples], pad_id)
    elif fmt == "preference":
        prompts = [e["prompt_ids"] for e in examples]
        batch = pad_sequences(prompts + prompts, [e["chosen_ids"] for e in examples]
                              + [e["rejected_ids"] for e in examples], pad_id)
    elif fmt == "prompt":
        batch = pad_sequences([e["prompt_ids"] for e in examples], None, pad_id)
        del batch["completion_mask"]
    else:
        raise ValueError(f"unknown data format {fmt!r}")
    for key in CACHED_KEYS:
        if key in examples[0]:
            batch[key] = torch.tensor([e[key] for e in examples], dtype=torch.float32)
    return batch


def padded_length(row: dict[str, Any]) -> int:
    """Tokens an encoded row occupies in a collated batch: prompt + its longest completion."""
    completions = [len(v) for k, v in row.items() if k.endswith("_ids") and k != "prompt_ids"]
    return len(row["prompt_ids"]) + max(completions, default=0)


def completion_tokens(row: dict[str, Any]) -> int:
    """Tokens an encoded row contributes to its batch's completion_mask (all of its completions)."""
    return sum(len(v) for k, v in row.items() if k.endswith("_ids") and k != "prompt_ids")


def epoch_order(n: int, epoch: int, seed: int, shuffle: bool, rank: int = 0, world: int = 1) -> list[int]:
    """This rank's row indices for one epoch: one seeded permutation shared by all ranks, strided by rank.

    The permutation depends only on (seed, epoch), so a resumed run visits rows in the same order.
    Each rank takes every `world`-th index; the tail that does not divide evenly is dropped so all
    ranks take the same number of steps.
    """
    if shuffle:
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch)).tolist()
    else:
        order = list(range(n))
    usable = (n // world) * world
    return order[:usable][rank::world]


def epoch_batches(n: int, batch_size: int, epoch: int, seed: int, shuffle: bool,
                  rank: int = 0, world: int = 1) -> list[list[int]]:
    """This rank's micro-batches (lists of row indices) for one epoch; the last one may be short."""
    order = epoch_order(n, epoch, seed, shuffle, rank, world)
    return [order[i: i + batch_size] for i in range(0, len(order), batch_size)]


class BatchStream:
    """Micro-batches epoch after epoch, remembering (epoch, batch) so a resumed run continues exactly."""

    def __init__(self, examples: list[dict[str, Any]], fmt: str, pad_id: int, batch_size: int, seed: int,
                 shuffle: bool, rank: int = 0, world: int = 1) -> None:
        if len(examples) < world:
            raise ValueError(f"{len(examples)} rows cannot be sharded over {world} ranks")
        self.examples, self.fmt, self.pad_id = examples, fmt, pad_id
        self.batch_size, self.seed, self.shuffle, self.rank, self.world = batch_size, seed, shuffle, rank, world
        self.epoch, self.batch = 0, 0
        self._cache: tuple[int, list[list[int]]] | None = None

    def batches_per_epoch(self) -> int:
        """Micro-batches one epoch yields on this rank."""
        return -(-(len(self.examples) // self.world) // self.batch_size)

    def _epoch(self) -> list[list[int]]:
        if self._cache is None or self._cache[0] != self.epoch:
            self._cache = (self.epoch, epoch_batches(len(self.examples), self.batch_size, self.epoch, self.seed,
                                                     self.shuffle, self.rank, self.world))
        return self._cache[1]

    def next(self) -> dict[str, torch.Tensor]:
        """The next micro-batch, rolling over into the next epoch when this one is used up."""
        if self.batch >= len(self._epoch()):
            self.epoch, self.batch = self.epoch + 1, 0
        idx = self._epoch()[self.batch]
        self.batch += 1
        return collate([self.examples[i] for i in idx], self.fmt, self.pad_id)

    def state_dict(self) -> dict[str, int]:
        """The data position: epoch and micro-batches consumed in it."""
        return {"epoch": self.epoch, "batch": self.batch}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Continue from a saved data position."""
        self.epoch, self.batch = int(state["epoch"]), int(state["batch"])
