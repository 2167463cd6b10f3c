"""Reversed-digit addition: a seeded problem generator and an exact-match verifier.

A problem is two non-negative integers below ``10**digits``. The prompt is ``"37+45="`` and the
answer is the sum with its digits written least-significant first: 37 + 45 = 82, so the
completion is ``"28"``. Writing the answer reversed lets a left-to-right model emit each digit
right after the carry that decides it, which a tiny model learns in tens of seconds on a CPU
(the plain left-to-right form stays below 6% after minutes; see DESIGN.md).

The SFT demonstrations come from a careless teacher (`teacher_answer`): on problems that carry,
it often drops the carries (37+45 -> "27" instead of "28"). A model trained on them learns both
the right and the slipped answer and, greedily, mostly writes the slip: a mediocre start that a
verifier-labelled preference stage can fix, whatever the length of the warm-up.
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


def has_carry(a: int, b: int) -> bool:
    """True when adding a and b carries in at least one column."""
    while a or b:
        if a % 10 + b % 10 >= 10:
            return True
        a, b = a // 10, b // 10
    return False


def carryless_answer(problem: Problem) -> str:
    """The classic slip: add each column mod 10 and drop every carry (37+45 -> 72, written "27")."""
    a, b, digits = problem.a, problem.b, []
    while True:
        digits.append(str((a % 10 + b % 10) % 10))
        a, b = a // 10, b // 10
        if not (a or b):
            return "".join(digits)


def teacher_answer(problem: Problem, carry_error: float, rng: random.Random) -> str:
    """A demonstration from a careless teacher: on problems with a carry, drops the carries with
    probability `carry_error`; otherwise the reference answer."""
    if has_carry(problem.a, problem.b) and rng.random() < carry_error:
        return carryless_answer(problem)
    return problem.answer


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
            f"task.n_train + task.n_eval = {n_train + n_eval} exceeds the {len(pool)} distinct "
            f"{digits}-digit problems; lower them or raise task.digits"
        )
    rng = random.Random(seed)
    rng.shuffle(pool)
    return pool[n_eval:n_eval + n_train], pool[:n_eval]


def corpus(problems: list[Problem]) -> list[str]:
    """Full ``prompt + answer`` strings, the text the tokenizer is trained on."""
    return [p.prompt + p.answer for p in problems]
