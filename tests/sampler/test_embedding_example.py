"""The README's "embed the sampler in your own RL loop" example, run verbatim."""

import torch

from .tiny_models import build

# Exactly the README snippet (MODEL_DIR is the only name the test provides).
SNIPPET = '''
import torch
from transformers import AutoModelForCausalLM
from alignkit.engine.sampler import Sampler, SamplingParams

policy = AutoModelForCausalLM.from_pretrained(MODEL_DIR)   # your policy, your training loop
sampler = Sampler(policy)                                  # shares its weights: no copy, no sync
opt = torch.optim.SGD(policy.parameters(), lr=0.1)
params = SamplingParams(n=4, temperature=0.8, max_new_tokens=16, stop_token_ids=[2], seed=0)
for step in range(2):
    groups = sampler.generate([[1, 5, 9], [1, 7, 3, 3]], params)   # 2 prompts x 4 samples
    for g in groups:
        rewards = torch.tensor([sum(t % 2 == 0 for t in s.token_ids) / 16 for s in g.samples])  # toy
        for s, adv in zip(g.samples, rewards - rewards.mean()):              # GRPO-style advantage
            ids = torch.tensor([g.prompt_token_ids + s.token_ids])
            logits = policy(ids).logits[0, len(g.prompt_token_ids) - 1:-1] / params.temperature
            new_lp = logits.log_softmax(-1).gather(1, ids[0, len(g.prompt_token_ids):, None])[:, 0]
            ratio = (new_lp - torch.tensor(s.logprobs)).exp()   # sampler log-probs = trainer's
            (-(ratio * adv).mean() / 8).backward()
            print(f"step {step}: max |ratio - 1| = {(ratio - 1).abs().max().item():.1e}")
    opt.step(); opt.zero_grad()
'''


def test_embedding_example_runs_and_is_on_policy_before_and_after_an_update(tmp_path, capsys):
    model = build("llama", tmp_path)  # saves tmp_path/llama
    before = model.get_output_embeddings().weight.detach().clone()
    ns = {"MODEL_DIR": str(tmp_path / "llama")}
    exec(compile(SNIPPET, "README-snippet", "exec"), ns)
    lines = [l for l in capsys.readouterr().out.splitlines() if l.startswith("step")]
    assert len(lines) == 2 * 2 * 4  # steps x prompts x samples
    gaps = [float(l.rsplit("=", 1)[1]) for l in lines]
    # Step 1 samples come after an optimizer step: ratio 1 only if the sampler used the new weights.
    assert max(gaps) < 1e-4, gaps
    # The update really moved the policy (otherwise step 1 would prove nothing).
    assert not torch.allclose(ns["policy"].get_output_embeddings().weight.detach(), before)


def test_readme_shows_exactly_the_snippet_this_test_runs():
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    assert SNIPPET.strip("\n") in readme
