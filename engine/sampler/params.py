"""Sampling parameters for one group of completions (validated on construction)."""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Sequence

_MAX_SEED = 2**63
MIN_TEMPERATURE = 1e-6  # the kernels' kMinTemperature (sampling.h)


def _is_int(x: object) -> bool:
    # Python and numpy ints; bool is an int subclass, and `n=True` is a bug, not a count.
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def _is_real(x: object) -> bool:
    """A Python or numpy int or float (not a bool)."""
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


@dataclass(frozen=True)
class SamplingParams:
    """How to sample the n completions of each prompt.

    Order of operations on the logits (done by the C++ kernel): temperature, min-p, top-k,
    top-p, then one draw. `temperature=0` means greedy (argmax, lowest token id on ties).

    Log-probs reported per token: `Sample.logprobs` are under softmax(logits / temperature)
    over the FULL vocabulary (not renormalised after top-k/top-p/min-p truncation) - the
    "old log-probs" PPO/GRPO use; `Sample.raw_logprobs` are at temperature 1. With
    temperature 0 both are at temperature 1.

    A stop token / stop sequence that ends a completion is kept in its `token_ids`. Stop
    sequences are matched against the generated tokens only: one that would begin inside the
    prompt does not stop the completion.
    `seed=None` draws a fresh seed per `generate` call (from torch's RNG); a fixed seed gives
    the same tokens whatever the batch size, the preemptions or the other prompts of the call.
    The draws are keyed by (seed, the prompt's index in the call, sample id, position), so the
    prompts of one call never share draws and a prompt at another index samples differently.
    """

    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    max_new_tokens: int = 256
    stop_token_ids: Sequence[int] = ()
    stop_sequences: Sequence[Sequence[int]] = ()
    seed: int | None = None

    def __post_init__(self) -> None:
        if not _is_int(self.n) or self.n < 1:
            raise ValueError(f"SamplingParams.n={self.n!r}: expected an int >= 1 (completions per prompt)")
        if not _is_real(self.temperature) or not math.isfinite(self.temperature) or self.temperature < 0 \
                or 0 < self.temperature < MIN_TEMPERATURE:
            raise ValueError(
                f"SamplingParams.temperature={self.temperature!r}: expected 0 (greedy) or a finite float >= "
                f"{MIN_TEMPERATURE} (smaller ones overflow logits / temperature in float32)")
        if not _is_real(self.top_p) or not (0.0 < self.top_p <= 1.0):
            raise ValueError(f"SamplingParams.top_p={self.top_p!r}: expected a float in (0, 1] (1 = off)")
        if not _is_int(self.top_k) or self.top_k < 0:
            raise ValueError(f"SamplingParams.top_k={self.top_k!r}: expected an int >= 0 (0 = off)")
        if not _is_real(self.min_p) or not (0.0 <= self.min_p <= 1.0):
            raise ValueError(f"SamplingParams.min_p={self.min_p!r}: expected a float in [0, 1] (0 = off)")
        if not _is_int(self.max_new_tokens) or self.max_new_tokens < 1:
            raise ValueError(
                f"SamplingParams.max_new_tokens={self.max_new_tokens!r}: expected an int >= 1")
        if isinstance(self.stop_token_ids, (str, bytes)) or not isinstance(self.stop_token_ids, Sequence):
            raise TypeError(
                f"SamplingParams.stop_token_ids={self.stop_token_ids!r}: expected a list of token ids")
        for t in self.stop_token_ids:
            if not _is_int(t) or t < 0:
                raise ValueError(
                    f"SamplingParams.stop_token_ids contains {t!r}: expected non-negative int token ids")
        if isinstance(self.stop_sequences, (str, bytes)) or not isinstance(self.stop_sequences, Sequence):
            raise TypeError(
                f"SamplingParams.stop_sequences={self.stop_sequences!r}: expected a list of token-id lists")
        for s in self.stop_sequences:
            if isinstance(s, (str, bytes)) or not isinstance(s, Sequence) or len(s) == 0:
                raise ValueError(
                    f"SamplingParams.stop_sequences contains {s!r}: expected non-empty lists of token ids "
                    "(tokenize stop strings first; a single id belongs in stop_token_ids)")
            for t in s:
                if not _is_int(t) or t < 0:
                    raise ValueError(
                        f"SamplingParams.stop_sequences contains token {t!r}: expected non-negative int ids")
        if self.seed is not None and (not _is_int(self.seed) or not (0 <= self.seed < _MAX_SEED)):
            raise ValueError(f"SamplingParams.seed={self.seed!r}: expected None or an int in [0, 2**63)")
        # Freeze the containers so a params object can be shared and hashed safely.
        object.__setattr__(self, "stop_token_ids", tuple(int(t) for t in self.stop_token_ids))
        object.__setattr__(self, "stop_sequences",
                           tuple(tuple(int(t) for t in s) for s in self.stop_sequences))
        for name in ("n", "top_k", "max_new_tokens"):  # numpy ints -> int
            object.__setattr__(self, name, int(getattr(self, name)))
        if self.seed is not None:
            object.__setattr__(self, "seed", int(self.seed))
        object.__setattr__(self, "temperature", float(self.temperature))
        object.__setattr__(self, "top_p", float(self.top_p))
        object.__setattr__(self, "min_p", float(self.min_p))

    def max_token_id(self) -> int:
        """Largest token id these params mention (-1 if none), for checking against the vocabulary."""
        ids = list(self.stop_token_ids) + [t for s in self.stop_sequences for t in s]
        return max(ids, default=-1)
