"""Data: every row format, chat templates, truncation, completion masks, bad rows, splits, sharding.

Token ids of the test tokenizer (tests/conftest.py): <pad>=0 <unk>=1 <bos>=2 <eos>=3 <user>=4
<assistant>=5, then WORDS from 7: "yes"=22 "no"=23 "good"=24 "bad"=25 "the"=26 "cat"=27 "dog"=28
"sat"=29 "hello"=32 "hi"=33 "a"=40 "b"=41 "c"=42 "d"=43. Plain text gets a leading <bos>.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from alignkit.engine.collate import BatchStream, collate, epoch_order
from alignkit.engine.data import DataError, RowEncoder, encode_source, load_splits

from .helpers import write_jsonl


def data_cfg(train, **kw):
    base = dict(train=str(train), eval=None, eval_fraction=0.0, max_length=64, max_prompt_length=32,
                on_error="fail", shuffle=True)
    base.update(kw)
    return SimpleNamespace(**base)


def test_sft_text_row_ids_and_mask(tiny_lm):
    enc = RowEncoder(tiny_lm.tokenizer, "sft", 64, 32)
    ex = enc({"prompt": "hello the cat", "completion": "yes good"})
    assert ex == {"prompt_ids": [2, 32, 26, 27], "completion_ids": [22, 24, 3]}  # BOS on prompt, EOS on completion
    batch = collate([ex, enc({"prompt": "hi", "completion": "no"})], "sft", pad_id=0)
    assert batch["input_ids"].tolist() == [[2, 32, 26, 27, 22, 24, 3], [2, 33, 23, 3, 0, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1] * 7, [1, 1, 1, 1, 0, 0, 0]]
    assert batch["completion_mask"].tolist() == [[0, 0, 0, 0, 1, 1, 1], [0, 0, 1, 1, 0, 0, 0]]


def test_sft_messages_row_uses_the_chat_template(tiny_lm):
    enc = RowEncoder(tiny_lm.tokenizer, "sft", 64, 32)
    ex = enc({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]})
    # "<user> hi <eos> <assistant> " is the prompt; "hello <eos> " the completion (EOS from the template).
    assert ex == {"prompt_ids": [4, 33, 3, 5], "completion_ids": [32, 3]}


def test_conversational_row_without_a_chat_template_is_a_clear_error(tmp_path, tiny_tokenizer_factory):
    tok = tiny_tokenizer_factory(chat_template=False)
    rows = write_jsonl(tmp_path / "c.jsonl", [{"messages": [{"role": "user", "content": "hi"},
                                                            {"role": "assistant", "content": "yes"}]}])
    with pytest.raises(DataError, match=r"c\.jsonl:1: .*no chat template"):
        encode_source(str(rows), RowEncoder(tok, "sft", 64, 32))


def test_preference_rows_text_and_both_conversational_forms(tiny_lm):
    enc = RowEncoder(tiny_lm.tokenizer, "preference", 64, 32)
    text = enc({"prompt": "hi", "chosen": "yes", "rejected": "no bad"})
    assert text == {"prompt_ids": [2, 33], "chosen_ids": [22, 3], "rejected_ids": [23, 25, 3]}
    user = [{"role": "user", "content": "hi"}]
    with_prompt = enc({"prompt": user, "chosen": [{"role": "assistant", "content": "yes"}],
                       "rejected": [{"role": "assistant", "content": "no"}]})
    implicit = enc({"chosen": user + [{"role": "assistant", "content": "yes"}],
                    "rejected": user + [{"role": "assistant", "content": "no"}]})
    assert with_prompt == implicit == {"prompt_ids": [4, 33, 3, 5], "chosen_ids": [22, 3], "rejected_ids": [23, 3]}
    batch = collate([text], "preference", pad_id=0)  # chosen rows first, then rejected rows
    assert batch["input_ids"].tolist() == [[2, 33, 22, 3, 0], [2, 33, 23, 25, 3]]
    assert batch["completion_mask"].tolist() == [[0, 0, 1, 1, 0], [0, 0, 1, 1, 1]]


def test_prompt_rows_keep_the_answer(tiny_lm):
    enc = RowEncoder(tiny_lm.tokenizer, "prompt", 64, 32)
    assert enc({"prompt": "hi", "answer": "7"}) == {"prompt_ids": [2, 33], "answer": "7"}


def test_truncation_cuts_prompt_from_the_left_then_completion_to_max_length(tiny_lm):
    enc = RowEncoder(tiny_lm.tokenizer, "preference", max_length=6, max_prompt_length=3)
    ex = enc({"prompt": "a b c d", "chosen": "yes good yes", "rejected": "no"})
    # prompt [bos a b c d] -> last 3 = [b c d]; room = 6 - 3 = 3 tokens per completion.
    assert ex["prompt_ids"] == [41, 42, 43]
    assert ex["chosen_ids"] == [22, 24, 22]  # "yes good yes <eos>" cut to 3: the EOS is lost
    assert ex["rejected_ids"] == [23, 3]


def test_malformed_json_row_names_file_and_line(tmp_path, tiny_lm):
    path = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "hi", "completion": "yes"}, "", "{not json"])
    with pytest.raises(DataError, match=r"bad\.jsonl:3: invalid JSON"):
        encode_source(str(path), RowEncoder(tiny_lm.tokenizer, "sft", 64, 32))


def test_row_missing_a_field_names_file_line_and_field(tmp_path, tiny_lm):
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "hi", "chosen": "yes", "rejected": "no"},
                                             {"prompt": "hi", "chosen": "yes"}])
    with pytest.raises(DataError, match=r"p\.jsonl:2: .*missing 'rejected'"):
        encode_source(str(path), RowEncoder(tiny_lm.tokenizer, "preference", 64, 32))


def test_skip_drops_and_counts_bad_rows(tmp_path, tiny_lm):
    path = write_jsonl(tmp_path / "mixed.jsonl", [{"prompt": "hi", "completion": "yes"}, "[1, 2]",
                                                  {"prompt": 3, "completion": "x"}, "oops",
                                                  {"prompt": "hello", "completion": "no"}])
    split = encode_source(str(path), RowEncoder(tiny_lm.tokenizer, "sft", 64, 32), on_error="skip")
    assert split.skipped == 3
    assert [ex["completion_ids"] for ex in split.examples] == [[22, 3], [23, 3]]


def test_datasets_directory_is_read(tmp_path, tiny_lm):
    import datasets

    datasets.Dataset.from_list([{"prompt": "hi", "completion": "yes"}] * 3).save_to_disk(str(tmp_path / "ds"))
    split = encode_source(str(tmp_path / "ds"), RowEncoder(tiny_lm.tokenizer, "sft", 64, 32))
    assert len(split.examples) == 3 and split.examples[0]["completion_ids"] == [22, 3]


def test_missing_file_names_the_config_key(tiny_lm):
    with pytest.raises(DataError, match="data.train='/nope/x.jsonl'"):
        encode_source("/nope/x.jsonl", RowEncoder(tiny_lm.tokenizer, "sft", 64, 32))


def test_eval_fraction_split_is_seeded_and_disjoint(tmp_path, tiny_lm):
    rows = [{"prompt": "hi", "completion": " ".join(["yes"] * (i + 1))} for i in range(20)]
    path = write_jsonl(tmp_path / "t.jsonl", rows)
    cfg = data_cfg(path, eval_fraction=0.25)
    tr1, ev1 = load_splits(cfg, "sft", tiny_lm.tokenizer, seed=3)
    tr2, ev2 = load_splits(cfg, "sft", tiny_lm.tokenizer, seed=3)
    _, ev3 = load_splits(cfg, "sft", tiny_lm.tokenizer, seed=4)
    key = lambda split: sorted(len(e["completion_ids"]) for e in split.examples)  # noqa: E731
    assert len(ev1.examples) == 5 and len(tr1.examples) == 15
    assert key(ev1) == key(ev2) and key(tr1) == key(tr2)
    assert not set(key(ev1)) & set(key(tr1))
    assert key(ev1) != key(ev3)  # a different seed holds out different rows (C(20,5) choices)


def test_rank_sharding_partitions_each_epoch():
    shards = [epoch_order(10, epoch=1, seed=0, shuffle=True, rank=r, world=3) for r in range(3)]
    flat = [i for s in shards for i in s]
    assert all(len(s) == 3 for s in shards)  # 10 // 3 * 3 = 9 rows used, equal share per rank
    assert len(set(flat)) == 9
    assert epoch_order(10, 1, 0, True) != epoch_order(10, 2, 0, True)  # reshuffled per epoch


def test_batch_stream_resumes_at_the_same_position():
    rows = [{"prompt_ids": [2], "completion_ids": [i + 7]} for i in range(7)]
    a = BatchStream(rows, "sft", 0, batch_size=3, seed=1, shuffle=True)
    seen = [a.next()["input_ids"][:, 1].tolist() for _ in range(5)]  # 3 batches/epoch: crosses into epoch 1
    b = BatchStream(rows, "sft", 0, batch_size=3, seed=1, shuffle=True)
    for _ in range(2):
        b.next()
    c = BatchStream(rows, "sft", 0, batch_size=3, seed=1, shuffle=True)
    c.load_state_dict(b.state_dict())
    assert [c.next()["input_ids"][:, 1].tolist() for _ in range(3)] == seen[2:]
    assert sorted(sum(seen[:3], [])) == list(range(7, 14))  # one epoch visits every row once
    assert isinstance(collate(rows[:2], "sft", 0)["input_ids"], torch.Tensor)


def test_a_json_array_file_is_read_and_bad_entries_are_located(tmp_path, tiny_lm):
    path = tmp_path / "rows.json"
    path.write_text('[{"prompt": "hi", "completion": "yes"}, 7]')
    enc = RowEncoder(tiny_lm.tokenizer, "sft", 64, 32)
    with pytest.raises(DataError, match=r"rows\.json\[row 1\]: expected a JSON object"):
        encode_source(str(path), enc)
    assert encode_source(str(path), enc, on_error="skip").skipped == 1
