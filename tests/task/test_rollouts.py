"""Task rollouts: alignkit's sampler and the `model.generate` fallback decode the same greedy text."""

import pytest

from alignkit.engine.task import rollouts
from alignkit.engine.task.arithmetic import corpus, split_problems
from alignkit.engine.task.tiny_model import TinyModelConfig, build_tiny_model
from alignkit.engine.task.tokenizer import build_tokenizer


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny")
    train, _ = split_problems(2, 500, 10, seed=0)
    tok = build_tokenizer(corpus(train), out)
    model = build_tiny_model(TinyModelConfig(hidden_size=32, layers=1, intermediate_size=64), tok, out, seed=3)
    return model, tok, [p.prompt for p in train[:16]]


def test_sampler_and_generate_fallback_agree_on_greedy_text(tiny, monkeypatch):
    model, tok, prompts = tiny
    monkeypatch.setattr(rollouts, "USE_ALIGNKIT_SAMPLER", True)
    ours = rollouts.generate(model, tok, prompts, n=1, temperature=0.0, max_new_tokens=4)
    monkeypatch.setattr(rollouts, "USE_ALIGNKIT_SAMPLER", False)
    hf = rollouts.generate(model, tok, prompts, n=1, temperature=0.0, max_new_tokens=4)
    assert ours == hf
    assert all(len(g) == 1 and tok.eos_token not in g[0] for g in ours)


@pytest.mark.parametrize("use_sampler", [True, False])
def test_sampling_returns_n_completions_per_prompt_and_is_seeded(tiny, monkeypatch, use_sampler):
    model, tok, prompts = tiny
    monkeypatch.setattr(rollouts, "USE_ALIGNKIT_SAMPLER", use_sampler)
    model.train()
    a = rollouts.generate(model, tok, prompts, n=5, temperature=1.0, max_new_tokens=4, seed=11)
    b = rollouts.generate(model, tok, prompts, n=5, temperature=1.0, max_new_tokens=4, seed=11)
    assert a == b and len(a) == len(prompts) and all(len(g) == 5 for g in a)
    # A random 16-token model at temperature 1 does not repeat one answer 80 times.
    assert len({c for g in a for c in g}) > 1
    assert model.training  # generation leaves the model in the mode it found it in
