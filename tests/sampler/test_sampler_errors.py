"""Bad inputs to the Sampler raise clear errors naming the problem and the fix."""

import numpy as np
import pytest
import torch

from alignkit.engine.sampler import Sampler, SamplingParams

from .tiny_models import VOCAB


@pytest.fixture(scope="module")
def sampler(llama):
    return Sampler(llama)


@pytest.mark.parametrize("prompts, exc, match", [
    ([5, 6, 7], TypeError, r"flat list of ints; pass a list of prompts"),
    ("hello", TypeError, r"tokenize text first"),
    ([], ValueError, r"prompt_token_ids is empty"),
    ([[5, 6], []], ValueError, r"prompt 1 is empty"),
    ([[5, VOCAB]], ValueError, rf"prompt 0 has token id {VOCAB} outside the model's vocabulary \[0, {VOCAB}\)"),
    ([[5, -1]], ValueError, r"token id -1 outside"),
    ([[3] * 250], ValueError, r"250 prompt tokens \+ max_new_tokens=8 exceeds the model's context of 256"),
    (torch.ones(2, 3, 4, dtype=torch.long), ValueError, r"must be 2-D"),
    # int() would truncate a float, take a bool as 0/1 and parse a string: each is refused instead.
    ([[5, 6.7, 9]], TypeError, r"prompt 0, position 1: 6.7 \(float\) is not a token id"),
    ([[5, 6], [True, 9]], TypeError, r"prompt 1, position 0: True \(bool\) is not a token id"),
    ([["5", "6"]], TypeError, r"position 0: '5' \(str\) is not a token id"),
    (torch.tensor([[5.0, 6.9]]), TypeError, r"prompt_token_ids Tensor has dtype torch.float32; token ids must be integers"),
    ([torch.tensor([5.0, 6.9])], TypeError, r"prompt 0 is a Tensor of dtype torch.float32"),
    ([np.array([5.5, 6.0])], TypeError, r"prompt 0 is a ndarray of dtype float64"),
    ([list(torch.tensor([5.0, 6.0]))], TypeError, r"position 0: tensor\(5.\) \(Tensor\) is not a token id"),
    ([[5, torch.tensor(True)]], TypeError, r"position 1: tensor\(True\) \(Tensor\) is not a token id"),
])
def test_bad_prompts_raise(sampler, prompts, exc, match):
    with pytest.raises(exc, match=match):
        sampler.generate(prompts, SamplingParams(max_new_tokens=8))


def test_integer_arrays_and_numpy_ints_are_accepted_as_prompts_and_params(sampler):
    params = SamplingParams(n=np.int64(2), max_new_tokens=np.int32(4), top_k=np.int64(5), seed=np.uint32(3),
                            temperature=np.float32(0.5))
    expected = [s.token_ids for s in sampler.generate([[5, 6, 7]], params)[0].samples]
    for prompts in (np.array([[5, 6, 7]]), [np.array([5, 6, 7], dtype=np.int32)], torch.tensor([[5, 6, 7]]),
                    [[np.int64(5), 6, 7]], [list(torch.tensor([5, 6, 7]))]):  # 0-d integer tensors too
        got = sampler.generate(prompts, params)[0]
        assert got.prompt_token_ids == [5, 6, 7] and [s.token_ids for s in got.samples] == expected


def test_top_k_beyond_int32_means_off_like_any_top_k_of_at_least_the_vocabulary(sampler):
    def draw(k):
        return [s.token_ids for s in sampler.generate([[5, 6]], SamplingParams(n=3, top_k=k, max_new_tokens=8, seed=1))[0].samples]
    assert draw(2**40) == draw(VOCAB) == draw(0)


def test_params_mismatch_and_wrong_type_raise(sampler):
    with pytest.raises(ValueError, match=r"got 1 SamplingParams for 2 prompts"):
        sampler.generate([[5], [6]], [SamplingParams()])
    with pytest.raises(TypeError, match=r"params must be a SamplingParams"):
        sampler.generate([[5]], {"n": 2})
    with pytest.raises(ValueError, match=r"stop token id 500 is outside the vocabulary"):
        sampler.generate([[5]], SamplingParams(max_new_tokens=8, stop_token_ids=[500]))


def test_bad_sampler_config_and_models_raise(llama):
    with pytest.raises(ValueError, match=r"max_num_seqs=0"):
        Sampler(llama, max_num_seqs=0)
    with pytest.raises(ValueError, match=r"max_num_batched_tokens=8\) must be >= max_num_seqs \(16\)"):
        Sampler(llama, max_num_seqs=16, max_num_batched_tokens=8)
    with pytest.raises(ValueError, match=r"kv_cache_tokens=2"):
        Sampler(llama, kv_cache_tokens=2)
    with pytest.raises(TypeError, match=r"neither a transformers PreTrainedModel .* nor an alignkit Runner"):
        Sampler(torch.nn.Linear(3, 3))
    with pytest.raises(TypeError, match=r"no LM head"):
        Sampler(llama.model)


def test_prompt_larger_than_kv_budget_raises_naming_the_prompt_before_a_stream_starts(llama):
    small = Sampler(llama, kv_cache_tokens=16, block_size=4, max_num_seqs=2)
    with pytest.raises(ValueError, match=r"prompt 0: 40 prompt tokens \+ max_new_tokens=4 need 11 KV blocks of 4 "
                                         r"tokens, but the KV cache has 4; raise Sampler\(kv_cache_tokens"):
        small.generate([[5] * 40], SamplingParams(max_new_tokens=4))
    # groups larger than max_num_seqs are split into chunks: the message still names the prompt
    params = [SamplingParams(n=5, max_new_tokens=4), SamplingParams(n=5, max_new_tokens=4),
              SamplingParams(max_new_tokens=12)]
    with pytest.raises(ValueError, match=r"^prompt 2: 10 prompt tokens"):
        small.stream([[1, 2, 3], [4, 5, 6], [7] * 10], params)  # raised by the call, not at the first sample


def test_attention_soft_capping_models_are_refused_not_sampled_wrongly():
    from transformers import Gemma2Config, Gemma2ForCausalLM

    cfg = Gemma2Config(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                       num_attention_heads=2, num_key_value_heads=1, head_dim=16, attn_logit_softcapping=50.0)
    with pytest.raises(NotImplementedError, match="soft-capping"):
        Sampler(Gemma2ForCausalLM(cfg))


@pytest.mark.parametrize("kind", ["gpt_neo", "bloom"])
def test_models_whose_attention_bypasses_the_interface_are_refused_not_sampled_wrongly(kind):
    # Both ran attention of their own over the packed step (no cache): log-probs off by up to 0.16.
    import transformers as tf

    if kind == "gpt_neo":
        model = tf.GPTNeoForCausalLM(tf.GPTNeoConfig(vocab_size=64, hidden_size=32, num_layers=2, num_heads=4,
                                                     attention_types=[[["global"], 2]], max_position_embeddings=64))
    else:
        model = tf.BloomForCausalLM(tf.BloomConfig(vocab_size=64, hidden_size=32, n_layer=2, n_head=4))
    with pytest.raises(NotImplementedError, match=r"0 paged-attention calls in a step of its 2 layers .* "
                                                  r"Sample this model with model.generate"):
        Sampler(model).generate([[5, 6, 7]], SamplingParams(max_new_tokens=3))


def test_falcon_is_refused_with_a_reason_alibi_or_not():
    import transformers as tf

    cfg = dict(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4)
    with pytest.raises(NotImplementedError, match=r"ALiBi position biases"):
        Sampler(tf.FalconForCausalLM(tf.FalconConfig(**cfg, alibi=True)))
    # Its layers do not pass the paged metadata on to the attention function: said, not sampled.
    with pytest.raises(RuntimeError, match=r"If a Sampler was driving FalconAttention, its layers do not pass"):
        Sampler(tf.FalconForCausalLM(tf.FalconConfig(**cfg))).generate([[5, 6, 7]], SamplingParams(max_new_tokens=3))
