"""The sampler end to end on a CUDA GPU: the CUDA kernels behind the same checks the CPU path passes.

These run only where torch sees a GPU and the extension was built with CUDA (nvcc found at build
time); elsewhere they are skipped with that reason. `tools/gpu_check` runs them on a lent GPU.
"""

import pytest
import torch
from torch._dynamo.utils import counters

import alignkit._sampler as ops
from alignkit.engine.sampler import Sampler, SamplingParams

from .test_sampler_hf_parity import EOS, _hf_greedy
from .tiny_models import VOCAB, build

pytestmark = pytest.mark.skipif(not (ops.has_cuda and torch.cuda.is_available()),
                                reason="needs a CUDA GPU and an alignkit build with the CUDA kernels")
PARAMS = SamplingParams(n=3, temperature=1.0, top_k=40, top_p=0.95, min_p=0.01, max_new_tokens=14, seed=123)


def _prompts(seed, lengths):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(3, VOCAB, (n,), generator=g).tolist() for n in lengths]


@pytest.fixture(scope="module", params=["llama", "qwen2", "gpt2"])
def cuda_model(request, models_dir):
    return build(request.param, models_dir).to("cuda")


@pytest.fixture(scope="module")
def cuda_llama(models_dir):
    return build("llama", models_dir).to("cuda")


def test_the_kv_cache_lives_on_the_gpu(cuda_llama):
    sampler = Sampler(cuda_llama, block_size=4)
    sampler.generate(_prompts(0, [5]), SamplingParams(max_new_tokens=3, seed=0))
    assert sampler.cache.k[0].is_cuda and sampler.cache.v[0].is_cuda


def test_greedy_matches_hf_generate(cuda_model):
    prompts = _prompts(0, [3, 9, 17, 30, 5])
    expected = _hf_greedy(cuda_model, prompts, 14)
    groups = Sampler(cuda_model, block_size=4, max_num_seqs=3, max_num_batched_tokens=24).generate(
        prompts, SamplingParams(n=2, temperature=0.0, max_new_tokens=14, stop_token_ids=[EOS]))
    for i, g in enumerate(groups):
        assert all(s.token_ids == expected[i] for s in g.samples), f"prompt {i}"


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_reported_logprobs_equal_training_forward(cuda_llama, temperature):
    prompts = _prompts(1, [4, 11, 23])
    groups = Sampler(cuda_llama, block_size=4).generate(
        prompts, SamplingParams(n=2, temperature=temperature, max_new_tokens=12, seed=7))
    for g, prompt in zip(groups, prompts):
        for s in g.samples:
            ids = torch.tensor([prompt + s.token_ids], device="cuda")
            with torch.no_grad():
                logits = cuda_llama(ids).logits[0, len(prompt) - 1:-1].double()
            want = torch.log_softmax(logits / temperature, -1).gather(
                1, torch.tensor(s.token_ids, device="cuda")[:, None])[:, 0]
            raw = torch.log_softmax(logits, -1).gather(1, torch.tensor(s.token_ids, device="cuda")[:, None])[:, 0]
            torch.testing.assert_close(torch.tensor(s.logprobs, dtype=torch.float64), want.cpu(), atol=1e-5, rtol=0)
            torch.testing.assert_close(torch.tensor(s.raw_logprobs, dtype=torch.float64), raw.cpu(), atol=1e-5, rtol=0)


def _flat(groups):
    return [(g.prompt_index, s.sample_id, s.token_ids, s.logprobs, s.finish_reason) for g in groups for s in g.samples]


@pytest.mark.parametrize("config", [
    dict(max_num_seqs=1, max_num_batched_tokens=5),
    dict(max_num_seqs=7, max_num_batched_tokens=16),
    dict(max_num_seqs=64, kv_cache_tokens=48),  # preempts
], ids=["bs1", "bs7", "tiny_kv"])
def test_same_seed_same_samples_across_batch_sizes_and_preemption(cuda_llama, config):
    prompts = _prompts(3, [7, 13, 4, 9])
    reference = _flat(Sampler(cuda_llama, block_size=4, max_num_seqs=64).generate(prompts, PARAMS))
    sampler = Sampler(cuda_llama, block_size=4, **config)
    got = _flat(sampler.generate(prompts, PARAMS))
    assert len(got) == len(reference) == 12
    for (pi, si, toks, lps, fr), (rpi, rsi, rtoks, rlps, rfr) in zip(got, reference):
        assert (pi, si, toks, fr) == (rpi, rsi, rtoks, rfr)
        torch.testing.assert_close(torch.tensor(lps), torch.tensor(rlps), atol=1e-5, rtol=0)
    assert (sampler.last_stats.preemptions > 0) == ("kv_cache_tokens" in config)


@pytest.mark.slow
def test_compiled_sampler_matches_eager(cuda_llama):
    prompts = _prompts(5, [3, 11, 26])
    params = [SamplingParams(n=3, temperature=0.8, top_k=20, max_new_tokens=6, seed=5),
              SamplingParams(n=1, temperature=0.0, max_new_tokens=16)]
    eager = _flat(Sampler(cuda_llama, block_size=4).generate(prompts[:2], params))
    graphs = counters["stats"]["unique_graphs"]
    compiled = _flat(Sampler(cuda_llama, block_size=4, compile=True).generate(prompts[:2], params))
    assert counters["stats"]["unique_graphs"] > graphs  # it really compiled
    assert len(compiled) == len(eager) == 4
    for (pi, si, toks, lps, fr), (rpi, rsi, rtoks, rlps, rfr) in zip(compiled, eager):
        assert (pi, si, toks, fr) == (rpi, rsi, rtoks, rfr)
        torch.testing.assert_close(torch.tensor(lps), torch.tensor(rlps), atol=1e-5, rtol=0)
