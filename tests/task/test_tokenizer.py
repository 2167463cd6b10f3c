"""The run-time sentencepiece tokenizer, wrapped as a Hugging Face tokenizer, round-trips the task."""

import pytest
import sentencepiece as spm
from transformers import AutoTokenizer

from alignkit.engine.task.arithmetic import corpus, split_problems
from alignkit.engine.task.tokenizer import build_tokenizer


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    train, held_out = split_problems(2, 2000, 300, seed=0)
    out = tmp_path_factory.mktemp("tok")
    build_tokenizer(corpus(train), out)
    return out, train, held_out


def test_saved_tokenizer_loads_back_with_auto_tokenizer(saved):
    out, _, _ = saved
    tok = AutoTokenizer.from_pretrained(out)
    assert (tok.pad_token, tok.unk_token, tok.bos_token, tok.eos_token) == ("<pad>", "<unk>", "<s>", "</s>")
    assert len({tok.pad_token_id, tok.unk_token_id, tok.bos_token_id, tok.eos_token_id}) == 4
    # 4 specials + 10 digits + '+' + '=': nothing else occurs in the corpus.
    assert len(tok) == 16


def test_every_digit_is_one_token(saved):
    tok = AutoTokenizer.from_pretrained(saved[0])
    for d in "0123456789":
        ids = tok.encode(d, add_special_tokens=False)
        assert len(ids) == 1 and tok.convert_ids_to_tokens(ids) == [d]
    assert tok.convert_ids_to_tokens(tok.encode("37+45=28")) == ["<s>", "3", "7", "+", "4", "5", "=", "2", "8"]


def test_round_trip_and_prompt_completion_split_on_held_out_strings(saved):
    out, train, held_out = saved
    tok = AutoTokenizer.from_pretrained(out)
    sp = spm.SentencePieceProcessor(model_file=str(out / "sentencepiece.model"))
    for p in train[:200] + held_out:
        text = p.prompt + p.answer
        ids = tok.encode(text)
        assert ids[0] == tok.bos_token_id
        assert ids[1:] == sp.encode(text)  # same pieces as sentencepiece itself
        assert tok.decode(ids, skip_special_tokens=True) == text
        # Tokenizing prompt and completion apart gives the same ids as the whole string.
        assert tok.encode(p.prompt) + tok.encode(p.answer, add_special_tokens=False) == ids
