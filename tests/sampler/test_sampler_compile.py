"""`Sampler(compile=True)`: the torch.compile'd step samples what the eager step samples, and follows weight updates."""

import pytest
import torch
from torch._dynamo.utils import counters

from alignkit.engine.sampler import Sampler, SamplingParams

from .tiny_models import VOCAB, build

pytestmark = pytest.mark.slow  # each new model compiles its step graphs (~10-30 s on 2 cores)


def _prompts(lengths, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(3, VOCAB, (n,), generator=g).tolist() for n in lengths]


def _flat(groups):
    return [(s.token_ids, s.logprobs, s.raw_logprobs, s.finish_reason) for g in groups for s in g.samples]


def _assert_same_samples(got, want):
    assert len(got) == len(want)
    for (t1, lp1, raw1, f1), (t2, lp2, raw2, f2) in zip(got, want):
        assert t1 == t2 and f1 == f2
        torch.testing.assert_close(torch.tensor(lp1), torch.tensor(lp2), rtol=0, atol=1e-5)
        torch.testing.assert_close(torch.tensor(raw1), torch.tensor(raw2), rtol=0, atol=1e-5)


@pytest.fixture(scope="module", params=["llama", "gpt2", "qwen2"])
def model(request, models_dir):
    # Llama (GQA, rotary), GPT-2 (fused qkv split into strided views, learned positions), Qwen2 (MQA).
    return build(request.param, models_dir)


def test_compiled_sampler_matches_eager_and_sees_weight_updates(model, monkeypatch):
    # Mixed lengths and group sizes: multi-sequence prefill + decode steps, then a lone sequence
    # (the longest completion) so both compiled graphs are exercised.
    import alignkit._sampler as ext
    from alignkit.engine.sampler import cpu_linear

    grouped_calls = []  # the compiled step runs q/k/v and gate/up as grouped kernel calls

    def linear_group(outs, *args):
        grouped_calls.append(len(outs))
        return ext.linear_group(outs, *args)

    monkeypatch.setitem(cpu_linear._kernels, "linear_group", linear_group)
    prompts = _prompts([3, 11, 26])
    params = [SamplingParams(n=3, temperature=0.8, top_k=20, max_new_tokens=6, seed=5),
              SamplingParams(n=2, temperature=1.0, max_new_tokens=9, seed=6),
              SamplingParams(n=1, temperature=0.0, max_new_tokens=16)]
    eager = Sampler(model, block_size=4)
    compiled = Sampler(model, block_size=4, compile=True)
    graphs = counters["stats"]["unique_graphs"]
    _assert_same_samples(_flat(compiled.generate(prompts, params)), _flat(eager.generate(prompts, params)))
    # It really compiled (a sampler sharing dynamo's recompile budget with an earlier model
    # would silently run eager): multi-sequence steps and the lone sequence, at least.
    compiled_graphs = counters["stats"]["unique_graphs"]
    assert compiled_graphs >= graphs + 2
    if model.config.model_type == "gpt2":  # one Conv1D computes q, k and v: nothing to group
        assert not grouped_calls
    else:  # q/k/v (3 layers) and gate/up (2) of every decoder layer, every step
        assert {3, 2} <= set(grouped_calls), grouped_calls
    assert counters["frames"]["total"] == counters["frames"]["ok"], dict(counters["unimplemented"])

    # An optimizer-style in-place update must reach the compiled step (parameters are graph
    # inputs, not constants baked in at compile time).
    before = _flat(compiled.generate(prompts, params))
    head = model.get_output_embeddings().weight
    saved = head.detach().clone()
    try:
        with torch.no_grad():
            head.add_(torch.randn_like(head) * 0.5)
        after = _flat(compiled.generate(prompts, params))
        assert [lp for _, lp, _, _ in after] != [lp for _, lp, _, _ in before]
        _assert_same_samples(after, _flat(eager.generate(prompts, params)))
        assert counters["stats"]["unique_graphs"] == compiled_graphs  # new weights, same graphs
    finally:
        with torch.no_grad():
            head.copy_(saved)
    assert model.config._attn_implementation != "alignkit_paged"  # the switch is undone after compiled steps


def test_compile_refuses_an_explicit_kernel_module(llama):
    import alignkit._sampler as ext

    with pytest.raises(ValueError, match="compile=True"):  # even the real one: compiled steps bypass `ops`
        Sampler(llama, ops=ext, compile=True)


def test_a_failed_compile_names_the_fix_and_leaves_the_model_usable(llama):
    import torch._inductor.config as inductor_config

    prompts, params = _prompts([4]), SamplingParams(n=2, max_new_tokens=3, seed=0)
    # No working C++ compiler, and no cached graph to fall back on. inductor's own patch(), not
    # pytest's monkeypatch: undoing a monkeypatch of this config module left fx_graph_cache
    # "does not exist" for every later compile in the process.
    with inductor_config.patch({"cpp.cxx": ("/nonexistent/c++",), "fx_graph_cache": False}):
        with pytest.raises(RuntimeError, match=r"compile=False"):
            Sampler(llama, compile=True).generate(prompts, params)
    assert llama.config._attn_implementation != "alignkit_paged"
    assert len(Sampler(llama).generate(prompts, params)[0].samples) == 2


def test_warmed_up_graphs_serve_other_batch_sizes_without_compiling(models_dir):
    """Sizes that were equal by chance while warming up (2 sampled rows, 2 KV heads) are not baked into the graphs.

    Dynamo's duck sizing used to guard on such equalities, so an RL loop's first real rollout
    compiled more graphs (seconds each) after a warm-up; the step now traces without it.
    """
    sampler = Sampler(build("llama", models_dir), block_size=4, compile=True)  # 2 KV heads
    sampler.generate(_prompts([5, 7]), SamplingParams(n=1, max_new_tokens=6, seed=0))  # several sequences
    sampler.generate(_prompts([6]), SamplingParams(n=1, max_new_tokens=6, seed=0))  # and a lone one
    graphs = counters["stats"]["unique_graphs"]
    groups = sampler.generate(_prompts([3, 11, 26, 9, 14], seed=1), SamplingParams(n=3, max_new_tokens=12, seed=1))
    assert sum(len(s.token_ids) for g in groups for s in g.samples) == 5 * 3 * 12  # no stop tokens: all ran to the cap
    assert counters["stats"]["unique_graphs"] == graphs


def test_a_compiled_samplers_cache_has_static_inner_sizes_and_a_block_count_that_may_grow(models_dir):
    """Block size, KV heads and head dim are graph constants; a larger cache for a larger workload compiles nothing."""
    sampler = Sampler(build("llama", models_dir), block_size=4, compile=True)
    sampler.generate(_prompts([5, 7]), SamplingParams(n=1, max_new_tokens=6, seed=0))
    sampler.generate(_prompts([6]), SamplingParams(n=1, max_new_tokens=6, seed=0))
    small, graphs = sampler.cache.num_blocks, counters["stats"]["unique_graphs"]
    eager = Sampler(sampler.runner.model, block_size=4)
    prompts, params = _prompts([9, 12, 20], seed=2), SamplingParams(n=4, max_new_tokens=10, seed=2)
    step, held = sampler.runner._model_step, []
    settings = step.tracing_settings

    def counted():
        held.append(step._held)  # whether the settings were already held when asked for
        return settings()

    step.tracing_settings = counted
    got = sampler.generate(prompts, params)
    # Set up once for the call, then only re-entered (a no-op) at each of its steps.
    assert held[0] is False and len(held) > 2 and all(held[1:])
    assert step._held is False  # and let go at its end
    assert sampler.cache.num_blocks > small  # a new cache, sized to the larger workload
    assert counters["stats"]["unique_graphs"] == graphs
    _assert_same_samples(_flat(got), _flat(eager.generate(prompts, params)))
    # What torch._dynamo.mark_static records on a tensor: every dimension but the block count.
    assert all(t._dynamo_static_indices == {1, 2, 3} for t in sampler.cache.k + sampler.cache.v)


def test_a_compiled_samplers_first_call_gives_what_the_next_identical_call_gives(models_dir):
    # Its first step also runs eagerly once (the check that every layer attends through the cache);
    # the step is then re-run compiled, so the cache and the draws are the compiled ones from the start.
    sampler = Sampler(build("llama", models_dir), block_size=4, compile=True)
    prompts, params = _prompts([5, 9]), SamplingParams(n=2, max_new_tokens=6, seed=4)
    first, second = _flat(sampler.generate(prompts, params)), _flat(sampler.generate(prompts, params))
    assert first == second  # bitwise: tokens, log-probs, raw log-probs
