"""alignkit's rollout sampler: batched, KV-cached group sampling driven by the C++ `alignkit._sampler`.

    from alignkit.engine.sampler import Sampler, SamplingParams
    groups = Sampler(model).generate(prompt_token_ids, SamplingParams(n=8, max_new_tokens=64))

Importing this package needs only torch (transformers is imported when an HF model is wrapped);
it does not import the rest of `alignkit.engine`, so other RL codebases can embed it.
"""

from .attention import PagedAttention
from .kv_cache import KVCache
from .outputs import Sample, SampleGroup
from .params import SamplingParams
from .runner import Runner
from .sampler import Sampler, SamplerStats

__all__ = ["Sampler", "SamplingParams", "SampleGroup", "Sample", "Runner", "PagedAttention", "KVCache",
           "SamplerStats"]

