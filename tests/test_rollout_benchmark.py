"""benchmarks/rollout.py runs end to end on a tiny workload and prints its one JSON line, consistent with itself.

A smoke test of the script, not of the speed: offline (the model is built from a config), our
sampler eager only (--no-compile), one round. Most of its ~30 s is transformers' `generate_batch`
building its continuous-batching manager (on the CPU it sizes its cache to a share of the
machine's RAM, whatever the workload).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # one ~30 s run of the script, shared by the tests below

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "rollout.py"
PROMPTS, GROUP, PROMPT_LEN, MAX_NEW = 2, 2, 8, 8
# hidden 256 keeps our FLOP/s a few % of the GEMM peak: flops_fraction is printed to 3 decimals,
# and a smaller model's fraction could round to 0.0 on a faster machine.
ARGS = ["--prompts", str(PROMPTS), "--group", str(GROUP), "--prompt-len", str(PROMPT_LEN), "--max-new", str(MAX_NEW),
        "--layers", "1", "--hidden", "256", "--heads", "4", "--kv-heads", "2", "--vocab", "512", "--num-stop", "8",
        "--threads", "1", "--repeats", "1", "--no-compile"]
REQUIRED = ["ours_tok_s", "generate_tok_s", "generate_batch_tok_s", "speedup_vs_generate", "speedup_vs_generate_batch",
            "gemm_peak_gflops", "flops_fraction", "prompts", "group", "prompt_len", "max_new_tokens"]


@pytest.fixture(scope="module")
def report() -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}  # a download attempt fails the run
    done = subprocess.run([sys.executable, str(SCRIPT), *ARGS], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    lines = done.stdout.splitlines()
    assert len(lines) == 1, done.stdout  # the one JSON line is the whole of stdout: logs go to stderr
    return json.loads(lines[0])


def _rounded_quotient_agrees(num: float, den: float, printed: float, num_step: float, den_step: float,
                             step: float) -> bool:
    """Whether printed (rounded to `step`) can be num/den, with num and den themselves rounded to their steps."""
    lo = (num - num_step / 2) / (den + den_step / 2)
    hi = (num + num_step / 2) / (den - den_step / 2)
    return lo - step / 2 <= printed <= hi + step / 2


def test_reports_every_required_key_and_the_workload_it_ran(report):
    assert [k for k in REQUIRED if k not in report] == []
    assert (report["prompts"], report["group"], report["max_new_tokens"]) == (PROMPTS, GROUP, MAX_NEW)
    # prompt_len is the range the prompt lengths are drawn from, L/2..L
    assert report["prompt_len"] == f"{PROMPT_LEN // 2}-{PROMPT_LEN}"
    # --no-compile: the headline figures are the eager sampler's
    assert report["ours_compiled"] is False
    assert report["ours_tok_s"] == report["ours_eager_tok_s"]


@pytest.mark.parametrize("system", ["ours", "generate", "generate_batch"])
def test_each_system_produced_between_one_and_max_new_tokens_per_sample(report, system):
    samples = PROMPTS * GROUP
    assert samples <= report[f"{system}_tokens"] <= samples * MAX_NEW  # each sample ends on a stop token or the cap
    assert report[f"{system}_tok_s"] > 0


def test_generate_batch_ran_every_sample_of_every_group(report):
    assert report["generate_batch_sequences"] == PROMPTS * GROUP
    assert report["generate_batch_repeated_prompts"] is False  # this transformers honours num_return_sequences


def test_generate_batch_gets_each_prompt_g_times_where_it_ignores_num_return_sequences():
    """transformers 5.17's generate_batch returned one sequence per prompt: the benchmark repeats the prompts."""
    import importlib.util
    from types import SimpleNamespace

    spec = importlib.util.spec_from_file_location("rollout_benchmark", SCRIPT)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)

    class OlderGenerateBatch:  # one output per prompt whatever num_return_sequences says
        calls: list = []

        def generate_batch(self, prompts, generation_config, **kwargs):
            self.calls.append((len(prompts), generation_config.num_return_sequences))
            return {f"req_{i}": SimpleNamespace(generated_tokens=[7] * (i % 3) + [1, 0, 0])
                    for i, _ in enumerate(prompts)}

        def destroy_cached_continuous_batching_manager(self):
            pass

    model = OlderGenerateBatch()
    args = SimpleNamespace(group=4, max_new=8, device="cpu")
    tokens, warm_s, lens, cold_s, repeated = bench.run_generate_batch(model, [[5, 6]] * 3, [1], args)
    assert repeated  # and the JSON line says so (generate_batch_repeated_prompts)
    assert model.calls == [(3, 4), (3, 4), (12, 1), (12, 1)]  # cold + warm, then both again with repeats
    assert len(lens) == 12 and tokens == sum(i % 3 + 1 for i in range(12))
    assert warm_s > 0 and cold_s > 0


@pytest.mark.parametrize("baseline", ["generate", "generate_batch"])
def test_speedups_are_the_quotients_of_the_printed_rates(report, baseline):
    # tok/s are printed to 0.1 and the speedups to 0.01, each rounded from the unrounded rates
    assert _rounded_quotient_agrees(report["ours_tok_s"], report[f"{baseline}_tok_s"],
                                    report[f"speedup_vs_{baseline}"], 0.1, 0.1, 0.01), report


def test_flops_fraction_is_our_flop_rate_over_the_measured_peak(report):
    assert 0 < report["gemm_peak_lowest_gflops"] <= report["gemm_peak_gflops"]  # the highest of its samples counts
    assert 0 < report["flops_fraction"] <= 1
    assert _rounded_quotient_agrees(report["ours_gflops"], report["gemm_peak_gflops"], report["flops_fraction"],
                                    0.01, 0.1, 0.001), report
