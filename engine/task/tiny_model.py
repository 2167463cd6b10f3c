"""A tiny Llama-style causal LM built from a config (random weights) for the built-in task."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerBase


@dataclass
class TinyModelConfig:
    """Size of the tiny model; the defaults train in well under a minute on two CPU cores."""

    hidden_size: int = 128
    layers: int = 3
    heads: int = 4
    kv_heads: int = 2  # grouped-query attention: 2 KV heads shared by 4 query heads
    intermediate_size: int = 384
    max_positions: int = 32


def build_tiny_model(cfg: TinyModelConfig, tokenizer: PreTrainedTokenizerBase, out_dir: str | Path,
                     seed: int = 0) -> LlamaForCausalLM:
    """Randomly initialise a tiny Llama sized for `tokenizer`, save it (with the tokenizer) to `out_dir`."""
    if cfg.hidden_size % cfg.heads or cfg.heads % cfg.kv_heads:
        raise ValueError(
            f"task.model: hidden_size={cfg.hidden_size}, heads={cfg.heads}, kv_heads={cfg.kv_heads}: "
            "hidden_size must divide by heads and heads by kv_heads"
        )
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=cfg.hidden_size, num_hidden_layers=cfg.layers,
        num_attention_heads=cfg.heads, num_key_value_heads=cfg.kv_heads,
        intermediate_size=cfg.intermediate_size, max_position_embeddings=cfg.max_positions,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    out = Path(out_dir)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return model
