"""Bad inputs to the Sampler raise clear errors naming the problem and the fix."""

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
])
def test_bad_prompts_raise(sampler, prompts, exc, match):
    with pytest.raises(exc, match=match):
        sampler.generate(prompts, SamplingParams(max_new_tokens=8))


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


def test_prompt_larger_than_kv_budget_raises(llama):
    small = Sampler(llama, kv_cache_tokens=16, block_size=4)
    with pytest.raises(ValueError, match=r"(?i)kv|block|fit"):
        small.generate([[5] * 40], SamplingParams(max_new_tokens=4))


def test_attention_soft_capping_models_are_refused_not_sampled_wrongly():
    from transformers import Gemma2Config, Gemma2ForCausalLM

    cfg = Gemma2Config(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                       num_attention_heads=2, num_key_value_heads=1, head_dim=16, attn_logit_softcapping=50.0)
    with pytest.raises(NotImplementedError, match="soft-capping"):
        Sampler(Gemma2ForCausalLM(cfg))
