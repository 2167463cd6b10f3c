"""Running a sampler step under `torch.compile` (`Sampler(compile=True)`).

Eager sampler steps call the extension directly (`PagedAttention.attend`). Under
`torch.compile` the nanobind functions would break the graph at every layer; wrapped as the
op `alignkit::paged_attention` (whose schema declares the two cache tensors it writes) the whole
decoder stays one graph, and inductor fuses the norms, rotary embeddings and activations around it.
"""

from __future__ import annotations

import contextlib
import types
from typing import Any, Callable, Iterator

import torch

from .cpu_linear import cpu_linear_op
from .custom_ops import define_op, registered_once
from .kernels import default_kernels
from .kv_cache import KVCache

RECOMPILE_LIMIT = 64  # graphs one compiled step may hold (dynamo's default is 8 per code object)
# The setting's name: recompile_limit since torch 2.7, cache_size_limit before (pyproject allows 2.4+).
_LIMIT_NAME = "recompile_limit" if hasattr(torch._dynamo.config, "recompile_limit") else "cache_size_limit"


def _register_paged_attention():
    """`torch.ops.alignkit.paged_attention`, registered by the first `paged_attention_op()` call."""
    ext = default_kernels()

    def paged_attention(q, k, v, k_cache, v_cache, slot_mapping, block_tables, context_lens, query_start_loc,
                        scale):
        """Write k/v into their cache slots, then attend q over each sequence's cache ([T, heads, dim])."""
        dt = k_cache.dtype
        q, k, v = q.to(dt).contiguous(), k.to(dt).contiguous(), v.to(dt).contiguous()
        stream = torch.cuda.current_stream(q.device).cuda_stream if q.is_cuda else 0
        ext.write_kv(k_cache, v_cache, k, v, slot_mapping, stream)
        out = torch.empty_like(q)
        ext.paged_attention(out, q, k_cache, v_cache, block_tables, context_lens, query_start_loc, scale, stream)
        return out

    def fake(q, k, v, k_cache, v_cache, slot_mapping, block_tables, context_lens, query_start_loc, scale):
        return torch.empty(q.shape, dtype=k_cache.dtype, device=q.device)

    # k_cache and v_cache are written in place (Tensor(a!)): functionalisation keeps the writes.
    return define_op("paged_attention", "(Tensor q, Tensor k, Tensor v, Tensor(a!) k_cache, Tensor(b!) v_cache, "
                     "Tensor slot_mapping, Tensor block_tables, Tensor context_lens, Tensor query_start_loc, "
                     "float scale) -> Tensor", paged_attention, fake)


paged_attention_op = registered_once(_register_paged_attention)


def _inductor_options() -> dict[str, Any]:
    """Inductor settings for a sampler step, those this torch version has (pyproject allows 2.4+)."""
    import torch._inductor.config as config

    # Inductor's per-call size/stride/alignment asserts (~100 a step) are off: dynamo's guards
    # already check every input, and the tests compare compiled steps with eager ones (in-process
    # A/B, 8 paired rollouts: 1-2% faster).
    options: dict[str, Any] = {k: False for k in ("size_asserts", "alignment_asserts") if hasattr(config, k)}
    try:  # linear layers on the same input (q/k/v, gate/up) become one grouped kernel call
        from .linear_grouping import GroupLinearsOnSharedInput
    except ImportError:  # torch without inductor's custom graph passes: one call per layer
        return options
    options["post_grad_custom_post_pass"] = GroupLinearsOnSharedInput()
    return options


def _no_duck_shapes() -> contextlib.AbstractContextManager:
    """Sizes that happen to be equal are not assumed equal while tracing a step.

    Dynamo's duck sizing gives one symbol to every dimension of the same size, then guards on the
    equality: a warm-up step with 4 sampled rows and 4 KV heads made a graph valid only while the
    rows equalled the heads, so the first real workload compiled two graphs more (~3 s of a
    5 s rollout). Distinct symbols make each graph valid for every size the step can take.
    Held by `CompiledStep.tracing_settings` (which says who else sees it).
    """
    import torch.fx.experimental._config as fx_config

    if not hasattr(fx_config, "use_duck_shape"):  # older torch: nothing to turn off
        return contextlib.nullcontext()
    return fx_config.patch(use_duck_shape=False)


def specialise_cache_layout(cache: KVCache) -> None:
    """Give torch.compile each K/V block tensor's block, head and head-dim sizes as constants.

    Traced with dynamic shapes and without duck sizing, every dimension of every cache tensor is
    a symbol of its own, which each step passes into the graph and guards: four per tensor, two
    tensors per layer. Only the block count differs between the caches a Sampler allocates (it
    follows the workload); the other three are fixed by the model and the Sampler, so they are
    marked static (a cache of another layout would compile graphs of its own, and be correct).
    Measured on the benchmark's rollout (2 CPU threads): faster in 7 of 8 paired rollouts,
    median 0.044 s of 1.58 s.
    """
    for t in cache.k + cache.v:
        for dim in range(1, t.dim()):
            torch._dynamo.mark_static(t, dim)


class CompiledStep:
    """A sampler step under `torch.compile(dynamic=True)`, with a compile cache of its own (see `compile_step`)."""

    def __init__(self, compiled: Callable[..., Any]):
        self._compiled = compiled
        self._held = False

    @contextlib.contextmanager
    def tracing_settings(self) -> Iterator[None]:
        """Hold the settings a (re)compile of this step traces under, for one step or a whole `generate` call.

        Dynamo specialises sizes 0 and 1 of every varying dimension (tokens, sequences, sampled
        rows, block-table width) and chance equalities between them, so a sampler with chunked
        prefill can need more than the default 8 graphs; past the limit dynamo would silently run
        the step eagerly: the limit is raised to RECOMPILE_LIMIT, and duck sizing is off
        (`_no_duck_shapes`). Both are read only when a step compiles, but nothing says in advance
        which step will, so they are held around every step; a `generate` call holds them once for
        all its steps (each entry costs ~0.1 ms a step in a rollout). torch 2.13 keeps config
        patches per thread (ContextVars), so they concern this thread only; older torch versions
        keep them process-wide: a torch.compile traced meanwhile in another thread would see them
        (correct, at most less specialised), and two compiled Samplers sampling in two threads at
        once could undo each other's settings (at worst a step past the default limit of 8 graphs
        runs eagerly, or the settings outlast both calls).
        """
        if self._held:  # already held by the caller (a generate call around its steps)
            yield
            return
        self._held = True
        try:
            with torch._dynamo.config.patch(**{_LIMIT_NAME: RECOMPILE_LIMIT}), _no_duck_shapes():
                yield
        finally:
            self._held = False

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        with self.tracing_settings():
            return self._compiled(*args, **kwargs)


def compile_step(step: Callable[..., Any]) -> CompiledStep:
    """`torch.compile(step, dynamic=True)` with a compile cache of its own.

    Dynamo keeps compiled graphs, and its recompile limit (8), per code object. Each model needs
    a few graphs (multi-sequence steps, a lone sequence: sizes 0 and 1 are specialised), so two
    samplers over different models running the same method would share one budget, exhaust it,
    and silently fall back to eager. A copy of the code object gives each step its own budget.
    """
    paged_attention_op()  # the traced attention calls torch.ops.alignkit.paged_attention
    cpu_linear_op()  # and CPU fp32 linear layers torch.ops.alignkit.cpu_linear (cpu_linear.py)
    fn = step.__func__ if isinstance(step, types.MethodType) else step
    fresh: Callable[..., Any] = step
    if isinstance(fn, types.FunctionType):  # partials and callable objects are compiled as they are
        fresh = types.FunctionType(fn.__code__.replace(), fn.__globals__, fn.__name__, fn.__defaults__,
                                   fn.__closure__)
        fresh.__kwdefaults__ = fn.__kwdefaults__
        if isinstance(step, types.MethodType):
            fresh = types.MethodType(fresh, step.__self__)
    return CompiledStep(torch.compile(fresh, dynamic=True, options=_inductor_options()))
