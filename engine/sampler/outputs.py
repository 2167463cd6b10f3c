"""Results of `Sampler.generate`: one `SampleGroup` per prompt holding its n `Sample`s."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

FinishReason = Literal["stop", "length"]


@dataclass
class Sample:
    """One completion: its tokens and, per token, the log-probs the sampler drew it with.

    `logprobs[i]` is log p(token_ids[i]) under softmax(logits / temperature) over the full
    vocabulary (what PPO/GRPO use as old log-probs); `raw_logprobs[i]` is the same at
    temperature 1. `finish_reason` is "stop" (stop token / sequence, kept in token_ids) or
    "length" (max_new_tokens reached).
    """

    token_ids: list[int]
    logprobs: list[float]
    raw_logprobs: list[float]
    finish_reason: FinishReason
    sample_id: int = 0      # which of its prompt's n samples
    prompt_index: int = 0   # which prompt (position in the generate/stream call)

    def __len__(self) -> int:
        return len(self.token_ids)


@dataclass
class SampleGroup:
    """The n completions of one prompt, in sample-id order."""

    prompt_index: int
    prompt_token_ids: list[int]
    samples: list[Sample] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.samples)
