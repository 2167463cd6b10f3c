"""Shared fixtures: a tiny word-level tokenizer (with a chat template) and a tiny Llama, saved to disk."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

SPECIALS = ["<pad>", "<unk>", "<bos>", "<eos>", "<user>", "<assistant>", "<system>"]
WORDS = ("0 1 2 3 4 5 6 7 8 9 + = ? . , yes no good bad the cat dog sat on mat hello hi what is "
         "plus equals answer question a b c d e f g h i j k l m n o p q r s t u v w x y z").split()
# A chat template in the usual shape: one "<role> content <eos>" block per turn, then the
# assistant header when a generation prompt is requested.
CHAT_TEMPLATE = ("{% for m in messages %}<{{ m['role'] }}> {{ m['content'] }} <eos> {% endfor %}"
                 "{% if add_generation_prompt %}<assistant> {% endif %}")


def build_tokenizer(chat_template: bool = True):
    """A PreTrainedTokenizerFast over WORDS (whitespace-split), BOS added to every encoded text."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(SPECIALS + WORDS)}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    core.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", vocab["<bos>"])])
    tok = PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>",
                                  unk_token="<unk>", additional_special_tokens=SPECIALS[4:])
    if chat_template:
        tok.chat_template = CHAT_TEMPLATE
    return tok


def build_tiny_llama(vocab_size: int, seed: int = 0, hidden: int = 32):
    """A 2-layer Llama with random weights."""
    import transformers as tf

    torch.manual_seed(seed)
    cfg = tf.LlamaConfig(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=256, bos_token_id=2, eos_token_id=3, pad_token_id=0,
                         tie_word_embeddings=False)
    return tf.LlamaForCausalLM(cfg)


@pytest.fixture(scope="session")
def tiny_lm(tmp_path_factory) -> SimpleNamespace:
    """A saved tiny Llama + tokenizer (with chat template) in one HF directory."""
    path = tmp_path_factory.mktemp("tiny_lm")
    tok = build_tokenizer()
    build_tiny_llama(len(tok)).save_pretrained(path)
    tok.save_pretrained(path)
    return SimpleNamespace(path=path, tokenizer=tok)



@pytest.fixture(scope="session")
def tiny_tokenizer_factory():
    """Build a fresh tiny tokenizer (`chat_template=False` for one without a template)."""
    return build_tokenizer
