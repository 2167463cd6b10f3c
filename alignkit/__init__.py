"""alignkit: a post-training engine for causal LMs (engine, objective plugins, C++ rollout sampler)."""

__version__ = "0.1.0"
