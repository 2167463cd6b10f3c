"""Completion log-probs (trunk + LM head on completion positions only) agree with a naive full log_softmax."""

from __future__ import annotations

import pytest
import torch
import transformers as tf

from alignkit.engine.logprobs import completion_logps, split_trunk_head


def naive_token_logps(model, input_ids, attention_mask, completion_mask):
    """Full forward, full-vocabulary log_softmax, gather; per-token values on completion positions."""
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits.float()
    logp = torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, input_ids[:, 1:, None]).squeeze(-1)
    return logp * completion_mask[:, 1:]


def make_batch(vocab: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, vocab, (3, 12), generator=g)
    attn = torch.ones_like(ids)
    attn[1, 9:] = 0  # right padding on row 1
    attn[2, 7:] = 0
    cmask = torch.zeros_like(ids)
    cmask[0, 5:12] = 1  # completions: 7, 5 and 3 tokens
    cmask[1, 4:9] = 1
    cmask[2, 4:7] = 1
    return ids, attn, cmask


def tiny(kind: str):
    torch.manual_seed(0)
    if kind == "llama":
        return tf.LlamaForCausalLM(tf.LlamaConfig(vocab_size=50, hidden_size=32, intermediate_size=64,
                                                  num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                                  tie_word_embeddings=False)).eval()
    return tf.GPT2LMHeadModel(tf.GPT2Config(vocab_size=50, n_embd=32, n_layer=2, n_head=4, n_positions=64)).eval()


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
@pytest.mark.parametrize("chunk_elements", [1 << 25, 150])  # one chunk; 3 rows per chunk (150 // 50)
def test_matches_naive_log_softmax_values_and_gradients(kind, chunk_elements):
    model = tiny(kind)
    assert split_trunk_head(model) is not None  # the fast path is the one under test
    ids, attn, cmask = make_batch(50)
    out = completion_logps(model, ids, attn, cmask, chunk_elements=chunk_elements)
    naive = naive_token_logps(model, ids, attn, cmask)
    expected_rows = [naive[i][cmask[i, 1:].bool()] for i in range(3)]
    assert out.lengths.tolist() == [7.0, 5.0, 3.0]
    assert out.mask.tolist() == [[1.0] * 7, [1.0] * 5 + [0.0] * 2, [1.0] * 3 + [0.0] * 4]
    for i, exp in enumerate(expected_rows):
        torch.testing.assert_close(out.token_logps[i, : len(exp)], exp, atol=1e-5, rtol=0)
        assert torch.all(out.token_logps[i, len(exp):] == 0)
    torch.testing.assert_close(out.logps_sum, naive.sum(-1), atol=1e-5, rtol=0)
    torch.testing.assert_close(out.logps_mean, naive.sum(-1) / torch.tensor([7.0, 5.0, 3.0]), atol=1e-5, rtol=0)

    # Gradients through the chunked (checkpointed) head equal the naive ones.
    weights = torch.tensor([1.0, -2.0, 0.5])
    (out.logps_sum * weights).sum().backward()
    fast = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    (naive.sum(-1) * weights).sum().backward()
    for n, p in model.named_parameters():
        torch.testing.assert_close(fast[n], p.grad, atol=1e-5, rtol=1e-4)


def test_models_with_scaled_logits_fall_back_to_the_full_forward():
    model = tiny("llama")
    model.config.logit_scale = 0.5  # a Cohere-style config: logits are not just lm_head(hidden)
    assert split_trunk_head(model) is None
    ids, attn, cmask = make_batch(50, seed=1)
    out = completion_logps(model, ids, attn, cmask)
    torch.testing.assert_close(out.logps_sum, naive_token_logps(model, ids, attn, cmask).sum(-1), atol=1e-5, rtol=0)


def test_lm_head_sees_only_completion_positions():
    model = tiny("llama")
    seen = []
    model.lm_head.register_forward_hook(lambda mod, inp, out: seen.append(inp[0].shape[0]))
    ids, attn, cmask = make_batch(50)
    completion_logps(model, ids, attn, cmask, chunk_elements=150)
    # 7 + 5 + 3 = 15 completion tokens, 3 rows per chunk: five head calls of 3 rows, not 3 x 12 positions.
    assert seen == [3, 3, 3, 3, 3]
