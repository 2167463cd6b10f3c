"""Greedy parity with `model.generate` and log-prob parity with a plain training forward."""

import pytest
import torch

from alignkit.engine.sampler import Sampler, SamplingParams

from .tiny_models import VOCAB

EOS = 2


def _prompts(seed, lengths):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(3, VOCAB, (n,), generator=g).tolist() for n in lengths]


def _hf_greedy(model, prompts, max_new):
    """Left-padded batched HF greedy decoding on the model's device, each row cut after its first EOS."""
    width = max(map(len, prompts))
    ids = torch.zeros(len(prompts), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, p in enumerate(prompts):
        ids[i, width - len(p):] = torch.tensor(p)
        mask[i, width - len(p):] = 1
    device = next(model.parameters()).device
    with torch.no_grad():
        out = model.generate(ids.to(device), attention_mask=mask.to(device), do_sample=False, max_new_tokens=max_new,
                             eos_token_id=EOS, pad_token_id=0)
    rows = []
    for row in out[:, width:].tolist():
        rows.append(row[: row.index(EOS) + 1] if EOS in row else row)
    return rows


def test_greedy_matches_hf_generate_on_mixed_length_batch(any_model):
    prompts = _prompts(0, [3, 9, 17, 30, 5])
    max_new = 14
    expected = _hf_greedy(any_model, prompts, max_new)
    sampler = Sampler(any_model, block_size=4, max_num_seqs=3, max_num_batched_tokens=24)
    groups = sampler.generate(prompts, SamplingParams(n=2, temperature=0.0, max_new_tokens=max_new,
                                                      stop_token_ids=[EOS]))
    for i, g in enumerate(groups):
        assert g.prompt_index == i and g.prompt_token_ids == prompts[i]
        for s in g.samples:  # greedy: both samples of a group are the same sequence
            assert s.token_ids == expected[i], f"prompt {i}"
            assert s.finish_reason == ("stop" if s.token_ids[-1] == EOS else "length")
            assert len(s.logprobs) == len(s.raw_logprobs) == len(s.token_ids)


def _training_logprobs(model, prompt, completion, temperature):
    """log_softmax(logits / T) of the completion tokens from one full-sequence forward (fp32)."""
    ids = torch.tensor([prompt + completion])
    with torch.no_grad():
        logits = model(ids).logits[0, len(prompt) - 1:-1].double()
    lp = torch.log_softmax(logits / temperature, -1)
    return lp.gather(1, torch.tensor(completion)[:, None])[:, 0]


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_reported_logprobs_equal_training_forward(llama, temperature):
    prompts = _prompts(1, [4, 11, 6])
    sampler = Sampler(llama, block_size=4)
    params = SamplingParams(n=3, temperature=temperature, max_new_tokens=10, seed=7)
    groups = sampler.generate(prompts, params)
    n_checked = 0
    for g in groups:
        for s in g.samples:
            expect = _training_logprobs(llama, g.prompt_token_ids, s.token_ids, temperature)
            expect_raw = _training_logprobs(llama, g.prompt_token_ids, s.token_ids, 1.0)
            torch.testing.assert_close(torch.tensor(s.logprobs, dtype=torch.float64), expect, atol=1e-5, rtol=0)
            torch.testing.assert_close(torch.tensor(s.raw_logprobs, dtype=torch.float64), expect_raw,
                                       atol=1e-5, rtol=0)
            n_checked += len(s.token_ids)
    assert n_checked == 3 * 3 * 10  # no stop tokens: every sample runs to max_new_tokens
    if temperature != 1.0:  # the two log-probs really are different quantities
        assert any(abs(a - b) > 1e-3 for g in groups for s in g.samples for a, b in zip(s.logprobs, s.raw_logprobs))


def test_bfloat16_model_samples_with_bf16_cache_and_close_logprobs(models_dir):
    from .tiny_models import build
    model = build("llama", models_dir, dtype=torch.bfloat16)
    sampler = Sampler(model, block_size=4)
    g = sampler.generate([[5, 9, 11, 3, 8]], SamplingParams(n=2, temperature=1.0, max_new_tokens=8, seed=3))[0]
    assert sampler.cache.k[0].dtype == torch.bfloat16
    for s in g.samples:
        expect = _training_logprobs(model, g.prompt_token_ids, s.token_ids, 1.0)
        # bf16 activations: the paged and dense paths round differently, so only ~1e-2 agreement.
        torch.testing.assert_close(torch.tensor(s.logprobs, dtype=torch.float64), expect, atol=0.1, rtol=0)


def _other_architecture(kind):
    """A tiny random decoder of a family beyond the four fixtures (partial rotary, fused qkv, learned positions...)."""
    import transformers as tf

    common = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  max_position_embeddings=128, bos_token_id=1, eos_token_id=EOS, pad_token_id=0)
    torch.manual_seed(0)
    if kind == "gpt_neox":  # partial rotary (rotary_pct), parallel residual, fused qkv
        model = tf.GPTNeoXForCausalLM(tf.GPTNeoXConfig(**common, rotary_pct=0.5))
    elif kind == "phi3":  # fused qkv and gate/up projections
        model = tf.Phi3ForCausalLM(tf.Phi3Config(**common, num_key_value_heads=2))
    elif kind == "gemma":  # scaled embeddings, GQA
        model = tf.GemmaForCausalLM(tf.GemmaConfig(**common, num_key_value_heads=1, head_dim=16))
    elif kind == "biogpt":  # uses the attention interface without declaring _supports_attention_backend
        model = tf.BioGptForCausalLM(tf.BioGptConfig(**{**common, "max_position_embeddings": 130}))
    else:  # "opt": learned positions with an offset, biases everywhere
        model = tf.OPTForCausalLM(tf.OPTConfig(vocab_size=VOCAB, hidden_size=64, ffn_dim=128, num_hidden_layers=2,
                                               num_attention_heads=4, max_position_embeddings=128, word_embed_proj_dim=64,
                                               bos_token_id=1, eos_token_id=EOS, pad_token_id=0))
    with torch.no_grad():
        model.get_output_embeddings().weight.mul_(8.0)  # well-separated greedy decisions, as in tiny_models
    return model.eval()


@pytest.mark.parametrize("kind", ["gpt_neox", "phi3", "gemma", "opt", "biogpt"])
def test_other_architectures_match_hf_generate_and_a_training_forward(kind):
    model = _other_architecture(kind)
    prompts = _prompts(2, [3, 10, 7])
    sampler = Sampler(model, block_size=4, max_num_seqs=2, max_num_batched_tokens=8)
    greedy = sampler.generate(prompts, SamplingParams(temperature=0.0, max_new_tokens=9, stop_token_ids=[EOS]))
    assert [g.samples[0].token_ids for g in greedy] == _hf_greedy(model, prompts, 9)
    for g in sampler.generate(prompts, SamplingParams(n=2, temperature=0.8, max_new_tokens=9, seed=3)):
        for s in g.samples:
            expect = _training_logprobs(model, g.prompt_token_ids, s.token_ids, 0.8)
            torch.testing.assert_close(torch.tensor(s.logprobs, dtype=torch.float64), expect, atol=1e-5, rtol=0)
