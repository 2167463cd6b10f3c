"""Embedding: importing the sampler needs only torch and loads nothing else of alignkit.engine."""

import json
import subprocess
import sys


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
