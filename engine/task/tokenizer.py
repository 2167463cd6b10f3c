"""Train a tiny sentencepiece tokenizer at run time and expose it as a Hugging Face tokenizer.

sentencepiece learns the vocabulary (`split_digits=True`, so every digit is its own token, and no
dummy whitespace prefix, so ``encode(prompt) + encode(completion) == encode(prompt + completion)``).
The learned pieces and merges are rebuilt as a `tokenizers` BPE model wrapped in
`PreTrainedTokenizerFast`: that object saves with `save_pretrained`, loads back with
`AutoTokenizer.from_pretrained`, and encodes exactly as the sentencepiece model does.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Iterable

import sentencepiece as spm
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

PAD, UNK, BOS, EOS = "<pad>", "<unk>", "<s>", "</s>"
_SPACE = "\u2581"  # sentencepiece's visible space


def train_sentencepiece(lines: Iterable[str], vocab_size: int = 32) -> bytes:
    """Train a BPE sentencepiece model on `lines`; returns the serialized model."""
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(list(lines)), model_writer=buf, vocab_size=vocab_size, model_type="bpe",
        split_digits=True, add_dummy_prefix=False, remove_extra_whitespaces=False,
        pad_id=0, unk_id=1, bos_id=2, eos_id=3, pad_piece=PAD, unk_piece=UNK, bos_piece=BOS, eos_piece=EOS,
        # A tiny corpus has fewer distinct pieces than vocab_size: take what exists instead of failing.
        hard_vocab_limit=False, character_coverage=1.0, minloglevel=2,
    )
    return buf.getvalue()


def _bpe_from_sentencepiece(sp: spm.SentencePieceProcessor) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """The vocabulary and merge list (best-scored pieces merge first) of a sentencepiece BPE model."""
    vocab = {sp.id_to_piece(i): i for i in range(sp.get_piece_size())}
    merges: list[tuple[float, tuple[str, str]]] = []
    for piece, pid in vocab.items():
        if sp.is_control(pid) or sp.is_unknown(pid) or len(piece) < 2:
            continue
        for k in range(1, len(piece)):
            left, right = piece[:k], piece[k:]
            if left in vocab and right in vocab:
                merges.append((-sp.get_score(pid), (left, right)))
    merges.sort()
    return vocab, [m for _, m in merges]


def hf_tokenizer_from_sentencepiece(model_proto: bytes) -> PreTrainedTokenizerFast:
    """Wrap a serialized sentencepiece BPE model as a fast HF tokenizer that adds BOS to every encode."""
    sp = spm.SentencePieceProcessor(model_proto=model_proto)
    vocab, merges = _bpe_from_sentencepiece(sp)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token=UNK, fuse_unk=True))
    tok.normalizer = normalizers.Replace(" ", _SPACE)
    # Same pre-split as sentencepiece: digits are isolated, spaces start a new piece.
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.Split(Regex(_SPACE), behavior="merged_with_next"),
    ])
    tok.decoder = decoders.Replace(_SPACE, " ")
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, vocab[BOS])],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=BOS, eos_token=EOS, unk_token=UNK, pad_token=PAD, padding_side="left",
    )


def build_tokenizer(lines: Iterable[str], out_dir: str | Path, vocab_size: int = 32) -> PreTrainedTokenizerFast:
    """Train on `lines`, save the HF tokenizer (and the raw sentencepiece model) to `out_dir`, return it."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    proto = train_sentencepiece(lines, vocab_size)
    (out / "sentencepiece.model").write_bytes(proto)
    tokenizer = hf_tokenizer_from_sentencepiece(proto)
    tokenizer.save_pretrained(out)
    return tokenizer
