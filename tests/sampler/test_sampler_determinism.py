"""A seed fixes the samples whatever the batch size or KV budget (even with preemption)."""

import pytest
import torch

from alignkit.engine.sampler import Sampler, SamplingParams

from .tiny_models import VOCAB

# 6 prompts x 12 samples = 72 sequences: more than the largest batch size tested (64), so every
# configuration below really limits the batch.
PARAMS = SamplingParams(n=12, temperature=1.0, top_k=40, top_p=0.95, min_p=0.01, max_new_tokens=14, seed=123)
NUM_SEQS = 6 * 12


def _prompts():
    g = torch.Generator().manual_seed(3)
    return [torch.randint(3, VOCAB, (n,), generator=g).tolist() for n in (7, 13, 4, 9, 11, 5)]


def _flat(groups):
    return [(g.prompt_index, s.sample_id, s.token_ids, s.logprobs, s.finish_reason)
            for g in groups for s in g.samples]


@pytest.fixture(scope="module")
def reference(llama):
    # Every sequence in one batch: a configuration none of the tests below uses.
    sampler = Sampler(llama, block_size=4, max_num_seqs=256)
    flat = _flat(sampler.generate(_prompts(), PARAMS))
    assert sampler.last_stats.max_batch_seqs == NUM_SEQS
    return flat


@pytest.mark.parametrize("config", [
    dict(max_num_seqs=1, max_num_batched_tokens=5),   # one sequence at a time (groups split), prefill chunks of 5
    dict(max_num_seqs=7, max_num_batched_tokens=16),
    dict(max_num_seqs=64, max_num_batched_tokens=2048),
    dict(max_num_seqs=64, kv_cache_tokens=48),         # 12 blocks of 4 for 72 sequences: preempts
], ids=["bs1", "bs7", "bs64", "tiny_kv"])
def test_same_seed_same_samples_across_batch_sizes_and_preemption(llama, reference, config):
    sampler = Sampler(llama, block_size=4, **config)
    got = _flat(sampler.generate(_prompts(), PARAMS))
    assert len(got) == len(reference) == NUM_SEQS
    for (pi, si, toks, lps, fr), (rpi, rsi, rtoks, rlps, rfr) in zip(got, reference):
        assert (pi, si, toks, fr) == (rpi, rsi, rtoks, rfr)
        torch.testing.assert_close(torch.tensor(lps), torch.tensor(rlps), atol=1e-5, rtol=0)
    if "kv_cache_tokens" in config:
        assert sampler.last_stats.preemptions > 0, "the tiny KV budget was meant to force preemption"
    else:
        assert sampler.last_stats.preemptions == 0
    assert sampler.last_stats.max_batch_seqs <= config["max_num_seqs"] < NUM_SEQS
    if "kv_cache_tokens" not in config:
        # The batch size, not memory, bound the run; groups are admitted whole, so the largest
        # batch is within one group of the limit.
        assert sampler.last_stats.max_batch_seqs > config["max_num_seqs"] - PARAMS.n


def test_samples_of_a_group_differ_and_a_new_seed_changes_them(llama, reference):
    by_prompt0 = [toks for pi, _, toks, _, _ in reference if pi == 0]
    assert len({tuple(t) for t in by_prompt0}) > 1, "the 12 samples of one prompt should not all coincide"
    other = _flat(Sampler(llama, block_size=4).generate(_prompts(), PARAMS.__class__(
        **{**PARAMS.__dict__, "seed": 124})))
    assert [t for _, _, t, _, _ in other] != [t for _, _, t, _, _ in reference]


def test_stream_yields_every_sample_once_matching_generate(llama, reference):
    sampler = Sampler(llama, block_size=4, max_num_seqs=5)
    streamed = list(sampler.stream(_prompts(), PARAMS))
    keys = [(s.prompt_index, s.sample_id) for s in streamed]
    assert sorted(keys) == sorted((pi, si) for pi, si, *_ in reference) and len(set(keys)) == len(keys)
    ref = {(pi, si): toks for pi, si, toks, _, _ in reference}
    assert all(s.token_ids == ref[(s.prompt_index, s.sample_id)] for s in streamed)


def test_stop_token_and_stop_sequence_end_the_sample_and_are_kept(llama):
    prompt = _prompts()[1]
    free = Sampler(llama).generate([prompt], SamplingParams(temperature=0.0, max_new_tokens=12))[0].samples[0]
    assert free.finish_reason == "length" and len(free.token_ids) == 12
    toks = free.token_ids
    stop_tok = toks[5]
    cut = toks[: toks.index(stop_tok) + 1]
    s = Sampler(llama).generate([prompt], SamplingParams(temperature=0.0, max_new_tokens=12,
                                                         stop_token_ids=[stop_tok]))[0].samples[0]
    assert s.token_ids == cut and s.finish_reason == "stop"
    seq = toks[6:8]
    first = next(i for i in range(len(toks) - 1) if toks[i:i + 2] == seq)
    s = Sampler(llama).generate([prompt], SamplingParams(temperature=0.0, max_new_tokens=12,
                                                         stop_sequences=[seq]))[0].samples[0]
    assert s.token_ids == toks[: first + 2] and s.finish_reason == "stop"


def test_next_generate_sees_updated_weights(llama):
    prompt = _prompts()[0]
    sampler = Sampler(llama)
    params = SamplingParams(temperature=0.0, max_new_tokens=6)
    before = sampler.generate([prompt], params)[0].samples[0]
    head = llama.get_output_embeddings().weight
    saved = head.detach().clone()
    try:
        with torch.no_grad():
            head.zero_()  # all logits 0: greedy takes the lowest id on ties, token 0, every step
        after = sampler.generate([prompt], params)[0].samples[0]
    finally:
        with torch.no_grad():
            head.copy_(saved)
    assert before.token_ids != [0] * 6
    assert after.token_ids == [0] * 6


def test_stream_leaves_autograd_on_between_samples_and_guards_its_cache(llama):
    sampler = Sampler(llama, block_size=4)
    it = sampler.stream(_prompts(), PARAMS)
    first = next(it)
    assert torch.is_grad_enabled() and not torch.is_inference_mode_enabled()
    assert llama.config._attn_implementation != "alignkit_paged"
    with pytest.raises(RuntimeError, match="unfinished stream"):
        sampler.generate([[5, 6]], SamplingParams(max_new_tokens=2))
    it.close()
    assert len(sampler.generate([[5, 6]], SamplingParams(max_new_tokens=2))[0].samples[0].token_ids) == 2
    assert len(first.token_ids) >= 1


def test_generate_switches_the_model_once_a_call_and_stream_once_a_step(llama, monkeypatch):
    """generate() runs no caller code between steps, so it holds the paged mode; a stream lets go at every step."""
    from alignkit.engine.sampler.hf_adapter import HFRunner

    entries = []
    switch = HFRunner._paged_mode

    def counted(self):
        entries.append(llama.config._attn_implementation)  # what the model had when the switch began
        return switch(self)

    monkeypatch.setattr(HFRunner, "_paged_mode", counted)
    sampler = Sampler(llama, block_size=4)
    held = _flat(sampler.generate(_prompts(), PARAMS))
    assert len(entries) == 1 and sampler.last_stats.steps > 1
    entries.clear()
    streamed = []
    for s in sampler.stream(_prompts(), PARAMS):
        assert llama.config._attn_implementation != "alignkit_paged"  # let go before each yield
        streamed.append(s)
    assert len(entries) == sampler.last_stats.steps
    assert "alignkit_paged" not in entries  # never entered while already switched
    assert sorted(held) == sorted((s.prompt_index, s.sample_id, s.token_ids, s.logprobs, s.finish_reason)
                                  for s in streamed)


def test_a_step_failing_mid_generate_restores_the_model_and_the_next_call_runs(llama, monkeypatch):
    from alignkit.engine.sampler.hf_adapter import HFRunner

    sampler = Sampler(llama, block_size=4)
    want = _flat(sampler.generate(_prompts(), PARAMS))
    step, calls = HFRunner._model_step, []

    def failing(self, *args):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt  # e.g. Ctrl-C in the middle of a rollout
        return step(self, *args)

    monkeypatch.setattr(HFRunner, "_model_step", failing)
    impl = llama.config._attn_implementation
    with pytest.raises(KeyboardInterrupt):
        sampler.generate(_prompts(), PARAMS)
    assert llama.config._attn_implementation == impl and impl != "alignkit_paged"
    assert not any("forward" in m.__dict__ for m in llama.modules())  # the linear layers are their own again
    assert not sampler.runner._in_session
    assert _flat(sampler.generate(_prompts(), PARAMS)) == want  # the cache and the lock were let go


def test_a_prompts_samples_depend_on_its_index_in_the_call_not_on_the_other_prompts(llama):
    # The draws are keyed by (seed, prompt index in the call, sample id, position): the other
    # prompts of the call never change them, while two prompts of one call never share draws.
    a, b, c = _prompts()[:3]
    params = SamplingParams(n=2, temperature=1.0, max_new_tokens=8, seed=7)
    sampler = Sampler(llama, block_size=4)

    def tokens(prompts):
        return [[s.token_ids for s in g.samples] for g in sampler.generate(prompts, params)]

    ab, ac, cb, b_alone = tokens([a, b]), tokens([a, c]), tokens([c, b]), tokens([b])
    assert ab[0] == ac[0] and ab[1] == cb[1]
    assert ab[1] != b_alone[0], "at another index the same prompt takes other draws"


@pytest.mark.parametrize("max_num_seqs, prefills", [(64, 1), (2, 3)], ids=["whole_group", "split_in_3"])
def test_a_group_prefills_its_prompt_once_per_batch_of_samples(llama, max_num_seqs, prefills):
    # Tokens through the model = each prompt once (its n samples share the prefill, forked) plus one
    # decode token per sampled token after the first. A group larger than max_num_seqs runs in
    # chunks of max_num_seqs samples, each prefilled once: n=5 at 2 a batch is 3 prefills.
    prompts = _prompts()[:2]
    sampler = Sampler(llama, block_size=4, max_num_seqs=max_num_seqs)
    groups = sampler.generate(prompts, SamplingParams(n=5, temperature=1.0, max_new_tokens=6, seed=1))
    decode = sum(len(s.token_ids) - 1 for g in groups for s in g.samples)
    assert sampler.last_stats.preemptions == 0
    assert sampler.last_stats.forward_tokens == prefills * sum(map(len, prompts)) + decode
