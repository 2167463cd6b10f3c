"""Objective plugins and their registry: `get_objective("dpo")`, `get_objective("my_file.py:MyLoss")`."""

from .base import ModelOutputs, Needs, Objective, Rollouts
from .registry import get_objective, list_objectives, register

# Built-in objectives register themselves on import.
from . import dpo, kto, orpo, reward_model, sft, simpo  # noqa: E402,F401  isort: skip

__all__ = [
    "ModelOutputs",
    "Needs",
    "Objective",
    "Rollouts",
    "get_objective",
    "list_objectives",
    "register",
]
