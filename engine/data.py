"""Rows -> token ids: the SFT, preference and prompt formats, from JSONL files or `datasets`.

Row formats (JSONL lines or `datasets` rows):

    sft:        {"prompt": str, "completion": str}  or  {"messages": [{"role", "content"}, ...]}
    preference: {"prompt": str, "chosen": str, "rejected": str}
                or conversational {"prompt": [msgs], "chosen": [msgs], "rejected": [msgs]}
                or {"chosen": [msgs], "rejected": [msgs]} (the shared leading turns are the prompt)
    prompt:     {"prompt": str | [msgs], "answer": optional str}

Tokenization: the prompt and each completion are tokenized separately and concatenated, so the
completion mask is exact. Plain-text prompts use the tokenizer's special-token policy (e.g. a
BOS); completions get no BOS and an EOS appended. Conversational rows are rendered with
`tokenizer.apply_chat_template` (prompt with the generation prompt; the completion is the rest
of the rendered conversation) and tokenized without extra special tokens. In `messages` rows only
the last turn (which must be the assistant's) is the completion; earlier turns are the prompt.

Truncation: the prompt is cut from the LEFT to `max_prompt_length` tokens (the end of a prompt,
next to the completion, matters most); then each completion is cut from the right so that
prompt + completion <= `max_length`. A completion cut this way loses its EOS.

Bad rows: `on_error="fail"` raises `DataError` naming `file:line` and the problem;
`on_error="skip"` drops the row, counts it and logs the count once per file.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch

log = logging.getLogger("alignkit.data")


class DataError(ValueError):
    """A dataset row or source is malformed; the message names where (file:line) and what."""


class RowError(ValueError):
    """One row does not fit the expected format (wrapped into DataError with its location)."""


@dataclass
class EncodedSplit:
    """Encoded rows (dicts of token-id lists) of one split and how many rows were skipped."""

    examples: list[dict[str, Any]]
    skipped: int = 0


# ---------------------------------------------------------------------------------------------
# Reading rows

def iter_rows(source: str, key: str = "data.train") -> Iterator[tuple[str, dict[str, Any] | RowError]]:
    """Yield (location, row) pairs; a row that cannot be parsed is yielded as a RowError."""
    path = Path(source).expanduser()
    if path.is_file():
        yield from _iter_jsonl(path)
    elif path.is_dir():
        yield from _iter_dataset(_load_from_disk(path, key), str(path))
    elif source.endswith((".jsonl", ".json")) or path.is_absolute() or source.startswith((".", "~")):
        raise DataError(f"{key}={source!r}: no such file or directory")
    else:
        import datasets

        try:
            ds = datasets.load_dataset(source, split="train")
        except Exception as exc:  # noqa: BLE001 - datasets raises many types; name the key instead
            raise DataError(f"{key}={source!r} is neither a local file/dir nor a loadable dataset: {exc}") from None
        yield from _iter_dataset(ds, source)


def _iter_jsonl(path: Path) -> Iterator[tuple[str, dict[str, Any] | RowError]]:
    with path.open("r", encoding="utf-8") as fh:
        head = fh.read(4096).lstrip()
        fh.seek(0)
        if head.startswith("["):  # a JSON array of rows rather than JSON lines
            try:
                rows = json.load(fh)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}:{exc.lineno}: invalid JSON ({exc.msg} at column {exc.colno})") from None
            for i, row in enumerate(rows):
                yield f"{path}[row {i}]", row if isinstance(row, dict) else RowError(
                    f"expected a JSON object, got {type(row).__name__}")
            return
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                yield where, RowError(f"invalid JSON ({exc.msg} at column {exc.colno})")
                continue
            yield where, row if isinstance(row, dict) else RowError(f"expected a JSON object, got {type(row).__name__}")


def _load_from_disk(path: Path, key: str) -> Any:
    import datasets

    try:
        ds = datasets.load_from_disk(str(path))
    except Exception as exc:  # noqa: BLE001
        raise DataError(f"{key}={str(path)!r} is a directory but not a dataset saved with save_to_disk: {exc}") from None
    if isinstance(ds, datasets.DatasetDict):
        if "train" in ds:
            return ds["train"]
        if len(ds) == 1:
            return next(iter(ds.values()))
        raise DataError(f"{key}={str(path)!r} holds splits {list(ds)}; point at one split's directory or add 'train'")
    return ds


def _iter_dataset(ds: Any, name: str) -> Iterator[tuple[str, dict[str, Any] | RowError]]:
    for i, row in enumerate(ds):
        yield f"{name}[row {i}]", dict(row)


# ---------------------------------------------------------------------------------------------
# Encoding rows

class RowEncoder:
    """Turns one row of a given format into token ids, with the truncation policy above."""

    def __init__(self, tokenizer: Any, fmt: str, max_length: int, max_prompt_length: int) -> None:
        if fmt not in ("sft", "preference", "prompt"):
            raise ValueError(f"unknown data format {fmt!r}")
        self.tok, self.fmt = tokenizer, fmt
        self.max_length, self.max_prompt_length = max_length, max_prompt_length

    def __call__(self, row: dict[str, Any]) -> dict[str, Any]:
        """Encode a row or raise RowError saying what is wrong with it."""
        return getattr(self, f"_encode_{self.fmt}")(row)

    def _encode_sft(self, row: dict[str, Any]) -> dict[str, Any]:
        if "messages" in row:
            msgs = _messages(row, "messages")
            if len(msgs) < 2 or msgs[-1]["role"] != "assistant":
                raise RowError("'messages' needs at least two turns, the last one from the assistant")
            prompt_ids, (completion,) = self._chat(msgs[:-1], [msgs[-1:]])
        else:
            _require(row, ("prompt", "completion"), "sft rows need 'prompt' and 'completion' (or 'messages')")
            prompt_ids, (completion,) = self._text(_str(row, "prompt"), [_str(row, "completion")])
        prompt_ids, (completion,) = self._truncate(prompt_ids, [completion])
        return {"prompt_ids": prompt_ids, "completion_ids": completion}

    def _encode_preference(self, row: dict[str, Any]) -> dict[str, Any]:
        _require(row, ("chosen", "rejected"), "preference rows need 'chosen' and 'rejected'")
        chosen, rejected = row["chosen"], row["rejected"]
        if isinstance(chosen, list) or isinstance(rejected, list):
            c, r = _messages(row, "chosen"), _messages(row, "rejected")
            if "prompt" in row:
                prompt = _messages(row, "prompt")
            else:  # the shared leading turns are the prompt; the last turn is the completion
                if len(c) < 2 or c[:-1] != r[:-1]:
                    raise RowError("conversational 'chosen'/'rejected' without 'prompt' must share all turns "
                                   "but the last one")
                prompt, c, r = c[:-1], c[-1:], r[-1:]
            prompt_ids, completions = self._chat(prompt, [c, r])
        else:
            _require(row, ("prompt",), "preference rows need 'prompt', 'chosen' and 'rejected'")
            prompt_ids, completions = self._text(_str(row, "prompt"), [_str(row, "chosen"), _str(row, "rejected")])
        prompt_ids, (c_ids, r_ids) = self._truncate(prompt_ids, completions)
        return {"prompt_ids": prompt_ids, "chosen_ids": c_ids, "rejected_ids": r_ids}

    def _encode_prompt(self, row: dict[str, Any]) -> dict[str, Any]:
        _require(row, ("prompt",), "prompt rows need 'prompt'")
        if isinstance(row["prompt"], list):
            prompt_ids, _ = self._chat(_messages(row, "prompt"), [])
        else:
            prompt_ids, _ = self._text(_str(row, "prompt"), [])
        out: dict[str, Any] = {"prompt_ids": prompt_ids[-self.max_prompt_length:]}
        if row.get("answer") is not None:
            out["answer"] = str(row["answer"])
        return out

    def _text(self, prompt: str, completions: list[str]) -> tuple[list[int], list[list[int]]]:
        prompt_ids = self.tok(prompt, add_special_tokens=True)["input_ids"]
        return self._nonempty_prompt(prompt_ids), [self._completion(c) for c in completions]

    def _chat(self, prompt: list[dict], completions: list[list[dict]]) -> tuple[list[int], list[list[int]]]:
        if not getattr(self.tok, "chat_template", None):
            raise RowError("conversational row (lists of messages) but the tokenizer has no chat template; "
                           "use a tokenizer with one or give plain-text 'prompt'/'completion' fields")
        prompt_text = self.tok.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
        texts = []
        for msgs in completions:
            full = self.tok.apply_chat_template(prompt + msgs, tokenize=False)
            if not full.startswith(prompt_text):
                raise RowError("the chat template does not render the prompt as a prefix of the conversation; "
                               "cannot separate the completion")
            texts.append(full[len(prompt_text):])
        prompt_ids = self.tok(prompt_text, add_special_tokens=False)["input_ids"]
        return self._nonempty_prompt(prompt_ids), [self._completion(t) for t in texts]

    def _completion(self, text: str) -> list[int]:
        ids = self.tok(text, add_special_tokens=False)["input_ids"]
        if not ids or ids[-1] != self.tok.eos_token_id:
            ids = ids + [self.tok.eos_token_id]
        return ids

    def _nonempty_prompt(self, ids: list[int]) -> list[int]:
        # The first completion token is predicted from the last prompt position: one is needed.
        if ids:
            return list(ids)
        if self.tok.bos_token_id is not None:
            return [self.tok.bos_token_id]
        raise RowError("the prompt is empty and the tokenizer has no BOS token to stand in for it")

    def _truncate(self, prompt_ids: list[int], completions: list[list[int]]) -> tuple[list[int], list[list[int]]]:
        prompt_ids = prompt_ids[-self.max_prompt_length:]
        room = self.max_length - len(prompt_ids)
        return prompt_ids, [c[:room] for c in completions]


def _require(row: dict[str, Any], keys: tuple[str, ...], msg: str) -> None:
    missing = [k for k in keys if k not in row or row[k] is None]
    if missing:
        raise RowError(f"{msg}; missing {', '.join(repr(k) for k in missing)} (row keys: {sorted(row)})")


def _str(row: dict[str, Any], key: str) -> str:
    value = row[key]
    if not isinstance(value, str):
        raise RowError(f"{key!r} must be a string, got {type(value).__name__}")
    return value


def _messages(row: dict[str, Any], key: str) -> list[dict[str, str]]:
    msgs = row[key]
    if not isinstance(msgs, list) or not msgs:
        raise RowError(f"{key!r} must be a non-empty list of {{'role', 'content'}} messages")
    for i, m in enumerate(msgs):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise RowError(f"{key}[{i}] must be a {{'role': str, 'content': str}} message, got {m!r}")
    return [{"role": m["role"], "content": m["content"]} for m in msgs]


def encode_source(source: str, encoder: RowEncoder, on_error: str = "fail", key: str = "data.train") -> EncodedSplit:
    """Read and encode every row of `source`; fail on (or skip and count) bad rows."""
    if on_error not in ("fail", "skip"):
        raise ValueError(f"data.on_error={on_error!r}: expected 'fail' or 'skip'")
    examples, skipped = [], 0
    for where, row in iter_rows(source, key):
        try:
            if isinstance(row, RowError):
                raise row
            examples.append(encoder(row))
        except RowError as exc:
            if on_error == "fail":
                raise DataError(f"{where}: {exc} (set data.on_error=skip to drop bad rows)") from None
            skipped += 1
    if skipped:
        log.warning("%s: skipped %d malformed row(s) (data.on_error=skip)", source, skipped)
    if not examples:
        raise DataError(f"{key}={source!r}: no usable rows" + (f" ({skipped} skipped)" if skipped else ""))
    return EncodedSplit(examples, skipped)


def load_splits(data_cfg: Any, fmt: str, tokenizer: Any, seed: int) -> tuple[EncodedSplit, EncodedSplit | None]:
    """The train split and the held-out split (`data.eval`, or `data.eval_fraction` of train, seeded)."""
    if not data_cfg.train:
        raise DataError("no training data: set data.train=<JSONL file | save_to_disk dir | dataset name>")
    encoder = RowEncoder(tokenizer, fmt, data_cfg.max_length, data_cfg.max_prompt_length)
    train = encode_source(data_cfg.train, encoder, data_cfg.on_error, "data.train")
    if data_cfg.eval:
        return train, encode_source(data_cfg.eval, encoder, data_cfg.on_error, "data.eval")
    if data_cfg.eval_fraction <= 0:
        return train, None
    n = len(train.examples)
    n_eval = max(1, round(n * data_cfg.eval_fraction))
    if n_eval >= n:
        raise DataError(f"data.eval_fraction={data_cfg.eval_fraction} leaves no training rows out of {n}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    held = set(perm[:n_eval])
    eval_rows = [train.examples[i] for i in sorted(held)]
    train_rows = [ex for i, ex in enumerate(train.examples) if i not in held]
    return EncodedSplit(train_rows, train.skipped), EncodedSplit(eval_rows, 0)
