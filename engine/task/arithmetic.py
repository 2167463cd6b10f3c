"""Reversed-digit addition: a seeded problem generator and an exact-match verifier.

A problem is two non-negative integers below ``10**digits``. The prompt is ``"37+45="`` and the
answer is the sum with its digits written least-significant first: 37 + 45 = 82, so the
completion is ``"28"``. Writing the answer reversed lets a left-to-right model emit each digit
right after the carry that decides it, which a tiny model learns in tens of seconds on a CPU
(the plain left-to-right form stays below 6% after minutes; see DESIGN.md).

The built-in recipe stops SFT mid-way through learning the carries (mediocre on purpose).
Making the start mediocre instead with a careless teacher (demonstrations that drop carries
60% of the time) was tried and rejected: it stalled SFT near 1% for 800 steps.
"""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True)
class Problem:
    """One addition problem: the operands, the prompt text and the reference completion."""

    a: int
    b: int

    @property
    def prompt(self) -> str:
        """The text the model is conditioned on, e.g. ``"37+45="``."""
        return f"{self.a}+{self.b}="

    @property
    def answer(self) -> str:
        """The reference completion: the sum's digits reversed, e.g. ``"28"`` for 37+45."""
        return str(self.a + self.b)[::-1]


def parse_prompt(prompt: str) -> Problem:
    """Recover the problem from its prompt text; raises ValueError on anything else."""
    body = prompt.strip()
    if not body.endswith("=") or body.count("+") != 1:
        raise ValueError(f"not an addition prompt: {prompt!r} (expected e.g. '37+45=')")
    left, right = body[:-1].split("+")
    if not (left.isdigit() and right.isdigit()):
        raise ValueError(f"not an addition prompt: {prompt!r} (operands must be digits)")
    return Problem(int(left), int(right))


def is_correct(prompt: str, completion: str) -> bool:
    """Verifier: True when the completion (surrounding whitespace ignored) is the exact reversed sum."""
    return completion.strip() == parse_prompt(prompt).answer


def all_problems(digits: int) -> list[Problem]:
    """Every problem with both operands below ``10**digits``, in a fixed order."""
    if digits < 1:
        raise ValueError(f"task.digits={digits}: must be >= 1")
    n = 10**digits
    return [Problem(a, b) for a in range(n) for b in range(n)]


def split_problems(digits: int, n_train: int, n_eval: int, seed: int) -> tuple[list[Problem], list[Problem]]:
    """Draw disjoint train and held-out eval problems (seeded): no eval prompt is ever trained on."""
    pool = all_problems(digits)
    if n_train + n_eval > len(pool):
        raise ValueError(
            f"{n_train} train + {n_eval} held-out problems exceed the {len(pool)} distinct "
            f"{digits}-digit problems; lower task.n_train / task.n_eval / task.n_dev or raise task.digits"
        )
    rng = random.Random(seed)
    rng.shuffle(pool)
    return pool[n_eval:n_eval + n_train], pool[:n_eval]


def corpus(problems: list[Problem]) -> list[str]:
    """Full ``prompt + answer`` strings, the text the tokenizer is trained on."""
    return [p.prompt + p.answer for p in problems]
