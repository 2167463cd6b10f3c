"""The training forward builds exactly the declared quantities; chosen+rejected share one forward."""

from __future__ import annotations

import torch
import transformers as tf

from alignkit.algorithms import Needs
from alignkit.engine.collate import collate
from alignkit.engine.data import RowEncoder
from alignkit.engine.forward import compute_outputs, sequence_scores


def naive_sum(model, prompt, completion):
    """Summed completion log-prob of one unpadded sequence via a full log_softmax."""
    ids = torch.tensor([prompt + completion])
    logp = torch.log_softmax(model(input_ids=ids).logits[0, :-1].float(), -1)
    return sum(logp[len(prompt) - 1 + i, tok] for i, tok in enumerate(completion))


def test_preference_outputs_match_separate_unpadded_forwards(tiny_lm):
    model = tf.AutoModelForCausalLM.from_pretrained(tiny_lm.path).eval()
    enc = RowEncoder(tiny_lm.tokenizer, "preference", 64, 32)
    rows = [enc({"prompt": "hi", "chosen": "yes good", "rejected": "no bad bad bad"}),
            enc({"prompt": "hello the cat", "chosen": "yes", "rejected": "no"})]
    batch = collate(rows, "preference", pad_id=0)
    needs = Needs(data="preference", logps="mean", token_logps=True, chosen_nll=True)
    with torch.no_grad():
        out = compute_outputs(model, needs, batch)
        for i, r in enumerate(rows):
            c = naive_sum(model, r["prompt_ids"], r["chosen_ids"])
            rej = naive_sum(model, r["prompt_ids"], r["rejected_ids"])
            torch.testing.assert_close(out.chosen_logps[i], c / len(r["chosen_ids"]), atol=1e-5, rtol=0)
            torch.testing.assert_close(out.rejected_logps[i], rej / len(r["rejected_ids"]), atol=1e-5, rtol=0)
    assert out.chosen_lengths.tolist() == [3.0, 2.0] and out.rejected_lengths.tolist() == [5.0, 2.0]
    torch.testing.assert_close(out.chosen_nll_mean, -out.chosen_logps)
    # T is shared by chosen and rejected (one forward): the longest completion, 5 tokens.
    assert out.chosen_mask.tolist() == [[1, 1, 1, 0, 0], [1, 1, 0, 0, 0]]
    torch.testing.assert_close(out.chosen_token_logps.sum(-1) / out.chosen_lengths, out.chosen_logps)
    assert "ref_chosen_logps" not in out and "chosen_rewards" not in out  # nothing undeclared


def test_sft_outputs_and_reward_scores_read_the_last_real_token(tiny_lm):
    model = tf.AutoModelForCausalLM.from_pretrained(tiny_lm.path).eval()
    enc = RowEncoder(tiny_lm.tokenizer, "sft", 64, 32)
    rows = [enc({"prompt": "hi", "completion": "yes good"}), enc({"prompt": "hi the cat", "completion": "no"})]
    with torch.no_grad():
        out = compute_outputs(model, Needs(data="sft"), collate(rows, "sft", 0))
        torch.testing.assert_close(out.logps[1], naive_sum(model, rows[1]["prompt_ids"], rows[1]["completion_ids"]),
                                   atol=1e-5, rtol=0)
    assert out.token_logps.shape == out.mask.shape == (2, 3)

    rm = tf.AutoModelForSequenceClassification.from_pretrained(tiny_lm.path, num_labels=1).eval()
    batch = collate(rows, "sft", 0)
    with torch.no_grad():
        scores = sequence_scores(rm, batch["input_ids"], batch["attention_mask"])
        alone = rm(input_ids=torch.tensor([rows[0]["prompt_ids"] + rows[0]["completion_ids"]])).logits[0, 0]
    torch.testing.assert_close(scores[0], alone, atol=1e-5, rtol=0)


def test_reward_scores_match_the_hf_classifier_when_pad_is_eos(tiny_lm):
    # Tokenizers without a pad token get pad = eos; the trained score must sit where HF's own
    # sequence-classifier forward reads it (the rightmost non-pad token), or the saved reward
    # model would score a different position than it was trained at.
    rm = tf.AutoModelForSequenceClassification.from_pretrained(tiny_lm.path, num_labels=1).eval()
    eos = tiny_lm.tokenizer.eos_token_id
    rm.config.pad_token_id = eos
    enc = RowEncoder(tiny_lm.tokenizer, "sft", 64, 32)
    rows = [enc({"prompt": "hi", "completion": "yes good"}), enc({"prompt": "hi the cat", "completion": "no"})]
    batch = collate(rows, "sft", eos)
    assert (batch["input_ids"] == eos).any()  # completions end with EOS, which is also the pad id
    with torch.no_grad():
        ours = sequence_scores(rm, batch["input_ids"], batch["attention_mask"])
        theirs = rm(input_ids=batch["input_ids"]).logits[:, 0]
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)
