"""Load the models an objective declared: policy, reference, reward, value (nothing else).

Every loader takes a local HF directory (or a hub name already in the local cache). A missing
directory raises a `FileNotFoundError` naming the path and the config key to set.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(spec: str) -> torch.device:
    """`auto` => the local CUDA device when there is one (per LOCAL_RANK), else the CPU."""
    if spec == "auto":
        if torch.cuda.is_available():
            import os

            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        return torch.device("cpu")
    device = torch.device(spec)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"model.device={spec!r} but CUDA is not available; set model.device=cpu or auto")
    return device


def resolve_dtype(spec: str, device: torch.device) -> torch.dtype:
    """`auto` => bfloat16 on a CUDA device that supports it, float32 otherwise."""
    if spec == "auto":
        bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
        return torch.bfloat16 if bf16 else torch.float32
    if spec not in _DTYPES:
        raise ValueError(f"model.dtype={spec!r}: expected one of auto, {', '.join(_DTYPES)}")
    return _DTYPES[spec]


def _check_path(path: str | None, key: str) -> str:
    if path is None:
        raise FileNotFoundError(f"no model given: set {key}=<local HF model directory>")
    p = Path(path)
    # A hub-style name ("org/model") may be resolved from the local cache; anything that looks
    # like a filesystem path must exist.
    looks_local = p.is_absolute() or path.startswith((".", "~")) or path.count("/") != 1 or p.exists()
    if looks_local and not p.expanduser().is_dir():
        raise FileNotFoundError(f"model directory {path!r} does not exist (set {key} to a local HF model directory)")
    return str(p.expanduser()) if looks_local else path


def _from_pretrained(loader: Any, path: str, key: str, **kwargs: Any) -> Any:
    """`loader.from_pretrained(path)`, turning "not found" into an error that names the config key."""
    try:
        return loader.from_pretrained(path, **kwargs)
    except OSError as exc:
        if Path(path).is_dir():
            raise
        raise FileNotFoundError(f"{key}={path!r} is neither a local HF model directory nor a model in the "
                                f"local HF cache ({str(exc).splitlines()[0]})") from None


def load_tokenizer(path: str, trust_remote_code: bool = False, key: str = "model.path") -> Any:
    """Load a tokenizer for training: pad token = EOS when it has none, right padding."""
    from transformers import AutoTokenizer

    tok = _from_pretrained(AutoTokenizer, _check_path(path, key), key, trust_remote_code=trust_remote_code)
    if tok.pad_token_id is None:
        if tok.eos_token_id is None:
            raise ValueError(f"tokenizer at {path!r} has neither a pad nor an EOS token; add one of them")
        tok.pad_token = tok.eos_token
    if tok.eos_token_id is None:
        raise ValueError(f"tokenizer at {path!r} has no EOS token; completions need one (set tokenizer.eos_token)")
    tok.padding_side = "right"
    return tok


def load_causal_lm(path: str | None, *, key: str, dtype: torch.dtype, device: torch.device,
                   trust_remote_code: bool = False) -> nn.Module:
    """Load an `AutoModelForCausalLM` onto `device` in `dtype`."""
    from transformers import AutoModelForCausalLM

    model = _from_pretrained(AutoModelForCausalLM, _check_path(path, key), key, dtype=dtype,
                             trust_remote_code=trust_remote_code)
    return model.to(device)


def load_scalar_model(path: str | None, *, key: str, dtype: torch.dtype, device: torch.device,
                      pad_token_id: int | None, trust_remote_code: bool = False) -> nn.Module:
    """Load an `AutoModelForSequenceClassification` with one output (a reward / value model)."""
    from transformers import AutoModelForSequenceClassification

    model = _from_pretrained(AutoModelForSequenceClassification, _check_path(path, key), key, num_labels=1,
                             dtype=dtype, trust_remote_code=trust_remote_code)
    if model.config.pad_token_id is None:
        model.config.pad_token_id = pad_token_id
    return model.to(device)


def freeze(model: nn.Module) -> nn.Module:
    """Eval mode, no gradients: how reference and reward models are held."""
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


class ValueHead(nn.Module):
    """A scalar head (Linear(hidden, 1)) read off the policy trunk's hidden states."""

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.proj = nn.Linear(hidden_size, 1)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """[B, T, H] hidden states -> [B, T] values."""
        return self.proj(hidden).squeeze(-1)


def policy_dtype(spec: str, device: torch.device) -> torch.dtype:
    """Dtype of the trained weights: float32 master weights unless bfloat16 is asked for explicitly.

    AdamW in float16 turns eps=1e-8 into 0 (0/0 on any zero gradient), and bf16 weights drop
    updates below half a bf16 step (most of them at DPO learning rates), so `model.dtype=auto`
    keeps the policy in float32 and bf16 compute comes from `train.mixed_precision`.
    `model.dtype` still sets the dtype of the frozen models (reference, reward).
    """
    if spec == "float16":
        raise ValueError("model.dtype=float16: the trained model cannot keep float16 weights (AdamW's eps "
                         "underflows to 0 and updates turn into NaN); use model.dtype=float32 with "
                         "train.mixed_precision=bf16")
    return torch.bfloat16 if spec == "bfloat16" else torch.float32


def disable_dropout(model: nn.Module) -> None:
    """Set every dropout probability to 0, so policy log-probs compare with the eval-mode reference."""
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
        if isinstance(getattr(module, "attention_dropout", None), float):  # Llama-style attention
            module.attention_dropout = 0.0


def load_policy(cfg: Any, needs: Any, path: str | None, dtype: torch.dtype, device: torch.device,
                pad_token_id: int | None) -> nn.Module:
    """The trained model: a causal LM, or a one-output classifier when `needs.model == "reward"`."""
    if needs.model == "reward":
        return load_scalar_model(path, key="model.path", dtype=dtype, device=device, pad_token_id=pad_token_id,
                                 trust_remote_code=cfg.model.trust_remote_code)
    return load_causal_lm(path, key="model.path", dtype=dtype, device=device,
                          trust_remote_code=cfg.model.trust_remote_code)


def load_reference(cfg: Any, dtype: torch.dtype, device: torch.device) -> nn.Module:
    """The frozen reference policy: `model.ref_path`, or `model.path` when unset."""
    key = "model.ref_path" if cfg.model.ref_path else "model.path"
    path = cfg.model.ref_path or cfg.model.path
    return freeze(load_causal_lm(path, key=key, dtype=dtype, device=device,
                                 trust_remote_code=cfg.model.trust_remote_code))


def load_reward(cfg: Any, dtype: torch.dtype, device: torch.device, pad_token_id: int | None) -> nn.Module:
    """The frozen reward model at `model.reward_path`."""
    return freeze(load_scalar_model(cfg.model.reward_path, key="model.reward_path", dtype=dtype, device=device,
                                    pad_token_id=pad_token_id, trust_remote_code=cfg.model.trust_remote_code))


def load_value(cfg: Any, policy: nn.Module, dtype: torch.dtype, device: torch.device,
               pad_token_id: int | None) -> nn.Module:
    """The value model: `model.value_path` as a one-output classifier, else a fresh head on the policy trunk."""
    if cfg.model.value_path:
        return load_scalar_model(cfg.model.value_path, key="model.value_path", dtype=dtype, device=device,
                                 pad_token_id=pad_token_id, trust_remote_code=cfg.model.trust_remote_code)
    return ValueHead(policy.config.hidden_size).to(device=device, dtype=dtype)
