"""Verifier-labelled preference pairs from sampled completions: (prompt, correct, incorrect)."""

from __future__ import annotations

from collections import Counter
from typing import Callable, Sequence


def build_pairs(prompts: Sequence[str], completions: Sequence[Sequence[str]], verify: Callable[[str, str], bool],
                max_pairs_per_prompt: int = 2) -> list[dict[str, str]]:
    """Pair each prompt's correct samples with its incorrect ones; prompts without both give no pair.

    The incorrect answers the model produced most often come first: they are its likeliest
    mistakes, so pushing them down moves the greedy answer most.
    """
    if len(prompts) != len(completions):
        raise ValueError(f"build_pairs: {len(prompts)} prompts but {len(completions)} completion groups")
    rows: list[dict[str, str]] = []
    for prompt, group in zip(prompts, completions):
        good = [c for c, _ in Counter(c for c in group if verify(prompt, c)).most_common()]
        bad = [c for c, _ in Counter(c for c in group if not verify(prompt, c)).most_common()]
        for k in range(min(max_pairs_per_prompt, len(bad)) if good else 0):
            rows.append({"prompt": prompt, "chosen": good[k % len(good)], "rejected": bad[k]})
    return rows
