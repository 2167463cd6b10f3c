"""Embedding: importing the sampler needs only torch and loads nothing else of alignkit.engine."""

import json
import subprocess
import sys
from pathlib import Path


def test_importing_sampler_loads_no_other_engine_module_nor_transformers():
    code = ("import sys, json; from alignkit.engine.sampler import Sampler, SamplingParams; "
            "print(json.dumps(sorted(m for m in sys.modules if m.startswith(('alignkit', 'transformers', "
            "'trl', 'datasets', 'omegaconf')))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    loaded = json.loads(out.strip().splitlines()[-1])
    foreign = [m for m in loaded if m not in ("alignkit", "alignkit.engine")
               and not m.startswith("alignkit.engine.sampler")]
    assert "alignkit.engine.sampler" in loaded
    assert foreign == [], f"importing the sampler pulled in {foreign}"


def test_sampler_imports_and_generates_without_numpy():
    # torch does not require numpy, so neither may the sampler: run a non-HF runner end to end in a
    # process where importing numpy fails.
    runner_file = Path(__file__).with_name("test_runner_protocol.py")
    code = f"""
import importlib.util, sys
sys.modules["numpy"] = None  # any `import numpy` now raises ImportError
import torch
from alignkit.engine.sampler import Sampler, SamplingParams
spec = importlib.util.spec_from_file_location("runner_protocol", {str(runner_file)!r})
mod = importlib.util.module_from_spec(spec)
spec.loader.exec_module(mod)
groups = Sampler(mod.TinyLM().eval(), block_size=4).generate([[3, 4, 5], [9] * 6], SamplingParams(n=2, max_new_tokens=5, seed=0))
print(sorted(len(s.token_ids) for g in groups for s in g.samples))
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == "[5, 5, 5, 5]"
