"""Tiny random HF causal LMs built from configs, saved and loaded back through `from_pretrained`."""

from __future__ import annotations

from pathlib import Path

import torch

VOCAB = 97


def build(kind: str, tmp_dir: Path, dtype: torch.dtype = torch.float32, seed: int = 0) -> torch.nn.Module:
    """Build a tiny `kind` model ("llama" with GQA, "qwen2" with MQA, "mistral", "gpt2"), round-trip it through disk."""
    import transformers as tf

    torch.manual_seed(seed)
    if kind == "llama":
        cfg = tf.LlamaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                             bos_token_id=1, eos_token_id=2, pad_token_id=0)
        cls = tf.LlamaForCausalLM
    elif kind == "qwen2":
        cfg = tf.Qwen2Config(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=1, max_position_embeddings=256,
                             bos_token_id=1, eos_token_id=2, pad_token_id=0, tie_word_embeddings=False)
        cls = tf.Qwen2ForCausalLM
    elif kind == "mistral":  # sliding-window config (window larger than any test context)
        cfg = tf.MistralConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                               num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                               sliding_window=128, bos_token_id=1, eos_token_id=2, pad_token_id=0)
        cls = tf.MistralForCausalLM
    elif kind == "gpt2":
        cfg = tf.GPT2Config(vocab_size=VOCAB, n_embd=64, n_layer=2, n_head=4, n_positions=256,
                            bos_token_id=1, eos_token_id=2, pad_token_id=0)
        cls = tf.GPT2LMHeadModel
    else:
        raise ValueError(kind)
    model = cls(cfg)
    # Random init is near-uniform over the vocabulary; scale the head up so greedy/top-k
    # decisions are well separated and sampling is not just noise.
    with torch.no_grad():
        model.get_output_embeddings().weight.mul_(8.0)  # tied (GPT-2): scales the inputs too, harmless
    path = tmp_dir / kind
    model.save_pretrained(path)
    return cls.from_pretrained(path, dtype=dtype).eval()
