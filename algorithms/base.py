"""The objective plugin contract: what an objective declares (`Needs`) and what it defines (`loss`).

An objective is a small class. The engine reads its `needs` and supplies exactly that:
an objective that does not declare a reference model never gets one loaded.

Quantities the engine may put in `out` (a `ModelOutputs`), each computed only when declared.
Shapes: B = rows in the micro-batch, T = completion tokens (right-padded).

Offline preference data (`Needs(data="preference")`):
  chosen_logps, rejected_logps          [B]   policy log p(completion | prompt), reduced as
                                              `needs.logps` says ("sum" = summed over completion
                                              tokens, "mean" = summed / number of tokens)
  ref_chosen_logps, ref_rejected_logps  [B]   same reduction, reference model (needs.reference),
                                              computed once before training and cached
  chosen_lengths, rejected_lengths      [B]   completion token counts (float)
  chosen_rewards, rejected_rewards      [B]   scalar scores (needs.model == "reward")
  chosen_nll_mean                       [B]   mean token NLL of the chosen completion (ORPO, RPO)
Every batch with completions also carries `batch["token_normalizer"]` (scalar): the completion
tokens of the whole optimizer step divided by (micro-batches x ranks). A token-mean loss divides
its micro-batch token sum by it, so the mean is over every token of the step however they fall
into micro-batches and ranks (the engine averages micro-batch losses).
SFT data (`Needs(data="sft")`):
  logps [B], lengths [B], token_logps [B, T], mask [B, T]
Prompt data with rollouts (`Needs(data="prompt", rollouts=Rollouts(...))`), per sampled completion:
  token_logps      [B, T]  policy log-probs of the sampled tokens at temperature 1 (differentiable)
  old_token_logps  [B, T]  log-probs the sampler reported when it drew them (detached)
  ref_token_logps  [B, T]  reference model (needs.reference)
  values           [B, T]  value model (needs.value_model)
  mask             [B, T]  1 on completion tokens
  rewards          [B]     scalar reward per completion
  group_ids        [B]     which prompt a completion came from (G completions share one id)
  advantages       [B] or [B, T]  what `Objective.advantages` returned
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import torch

DataFormat = Literal["sft", "preference", "prompt"]
LogpReduction = Literal["sum", "mean"]
TrainedModel = Literal["causal_lm", "reward"]


@dataclass(frozen=True)
class Rollouts:
    """How many completions an online objective wants per prompt, and whether it trains on-policy."""

    group_size: int = 1
    # Optimisation passes over one batch of rollouts (PPO epochs); 1 = strictly on-policy.
    epochs: int = 1


@dataclass(frozen=True)
class Needs:
    """What an objective requires from the engine; the engine loads and computes nothing else."""

    data: DataFormat
    model: TrainedModel = "causal_lm"
    reference: bool = False
    reward_model: bool = False
    value_model: bool = False
    rollouts: Rollouts | None = None
    logps: LogpReduction = "sum"
    # Per-token log-probs and masks in `out` (offline data); always on for rollouts.
    token_logps: bool = False
    # Mean NLL of the chosen completion in `out` (ORPO-style auxiliary terms).
    chosen_nll: bool = False

    def __post_init__(self) -> None:
        if self.data not in ("sft", "preference", "prompt"):
            raise ValueError(f"Needs.data={self.data!r}: expected 'sft', 'preference' or 'prompt'")
        if self.logps not in ("sum", "mean"):
            raise ValueError(f"Needs.logps={self.logps!r}: expected 'sum' or 'mean'")
        if self.model not in ("causal_lm", "reward"):
            raise ValueError(f"Needs.model={self.model!r}: expected 'causal_lm' or 'reward'")
        if self.data == "prompt" and self.rollouts is None:
            raise ValueError("Needs(data='prompt') trains on rollouts: pass rollouts=Rollouts(group_size=G)")


@dataclass
class ModelOutputs:
    """The quantities the engine computed for one micro-batch (see the module docstring)."""

    values: dict[str, torch.Tensor] = field(default_factory=dict)

    def __getattr__(self, name: str) -> torch.Tensor:
        try:
            return self.__dict__["values"][name]
        except KeyError:
            have = sorted(self.__dict__.get("values", {}))
            raise AttributeError(
                f"ModelOutputs has no {name!r}; this batch has {have}. "
                "Declare it in the objective's Needs (e.g. reference=True, token_logps=True)."
            ) from None

    def __contains__(self, name: str) -> bool:
        return name in self.values


class Objective:
    """Base class of a training objective: a config dataclass, a `Needs`, and a loss."""

    @dataclass
    class Config:
        """Objective hyper-parameters; subclasses replace this dataclass."""

    needs: ClassVar[Needs]
    name: ClassVar[str] = ""

    def __init__(self, cfg: Any = None) -> None:
        self.cfg = cfg if cfg is not None else self.Config()

    def loss(self, batch: dict[str, torch.Tensor], out: ModelOutputs) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Return the scalar loss to minimise and a dict of detached scalar metrics."""
        raise NotImplementedError

    def advantages(self, rewards: torch.Tensor, group_ids: torch.Tensor, out: ModelOutputs) -> torch.Tensor:
        """Online objectives: turn per-completion rewards into advantages ([B] or [B, T])."""
        raise NotImplementedError(f"{type(self).__name__} is not an online objective")

    @classmethod
    def config_fields(cls) -> list[dataclasses.Field]:
        """The objective's options, for `--help` and config validation."""
        return list(dataclasses.fields(cls.Config))
