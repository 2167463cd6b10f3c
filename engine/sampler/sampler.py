"""The `Sampler` loop: schedule -> copy-on-write -> forward -> sample -> update, until every group finishes."""

from __future__ import annotations

import numbers
import operator
import threading
import time
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import torch

from .attention import PagedAttention
from .hf_adapter import HFRunner, is_hf_causal_lm
from .kernels import default_kernels
from .kv_cache import KVCache, blocks_for_tokens
from .outputs import Sample, SampleGroup
from .params import SamplingParams
from .runner import Runner, check_runner

_MASK63 = (1 << 63) - 1


def _mix_seed(seed: int, index: int) -> int:
    """splitmix64 of (seed, prompt index): distinct, well-spread seeds for the groups of one call."""
    z = (seed + 0x9E3779B97F4A7C15 * (index + 1)) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return (z ^ (z >> 31)) & _MASK63


def _as_tensor(x: Any, dtype: torch.dtype) -> torch.Tensor:
    # Scheduler arrays arrive as zero-copy tensors (a stand-in scheduler may give lists).
    if isinstance(x, torch.Tensor):
        return x if x.dtype == dtype else x.to(dtype)
    return torch.as_tensor(x, dtype=dtype)


def _is_array(x: Any) -> bool:
    """A tensor or a numpy array (recognised without importing numpy: the sampler needs only torch)."""
    return isinstance(x, torch.Tensor) or (hasattr(x, "__array__") and hasattr(x, "tolist"))


def _has_int_dtype(x: Any) -> bool:
    """Whether a tensor / numpy array holds integers (not floats, bools or complex numbers)."""
    if isinstance(x, torch.Tensor):
        return not (x.dtype.is_floating_point or x.dtype.is_complex or x.dtype == torch.bool)
    return getattr(getattr(x, "dtype", None), "kind", None) in ("i", "u")


def _token_id(t: Any) -> int | None:
    """t as an int if it is an integer (Python, numpy, or a 0-d integer tensor), else None.

    operator.index, not int(): int() would truncate a float and parse a string. Bools (and bool
    tensors) are refused too: a True in a prompt is a bug, not token 1.
    """
    if isinstance(t, bool) or (isinstance(t, torch.Tensor) and t.dtype == torch.bool):
        return None
    try:
        return operator.index(t)
    except TypeError:
        return None


@dataclass
class SamplerStats:
    """Counters of the last `generate`/`stream` call (and totals since construction)."""

    steps: int = 0
    forward_tokens: int = 0       # tokens run through the model (prefill + decode + recompute)
    sampled_tokens: int = 0       # tokens drawn
    preemptions: int = 0          # sequences evicted and later recomputed (KV budget too small)
    max_batch_seqs: int = 0       # most sequences in one forward
    seconds: float = 0.0          # wall time of the call
    forward_seconds: float = 0.0  # of which in the model forward

    def add(self, other: "SamplerStats") -> None:
        """Accumulate another call's counters into these totals."""
        for f in ("steps", "forward_tokens", "sampled_tokens", "preemptions", "seconds", "forward_seconds"):
            setattr(self, f, getattr(self, f) + getattr(other, f))
        self.max_batch_seqs = max(self.max_batch_seqs, other.max_batch_seqs)


class Sampler:
    """Batched, KV-cached group sampler over a causal LM, sharing the model's parameters (no copy).

    model: a transformers decoder-only causal LM (Llama, Qwen2, Mistral, GPT-2, ...) or a `Runner`.
    kv_cache_tokens: KV budget in tokens (all sequences together). None sizes the cache to each
      call's workload (prompts + n * max_new_tokens, so nothing is ever preempted), capped at
      `max_kv_cache_bytes`. A smaller budget works too: sequences are preempted and recomputed.
    max_num_seqs: most sequences decoded in one forward (the batch size).
    max_num_batched_tokens: most tokens (prefill + decode) in one forward.
    block_size: tokens per KV block.
    ops: the kernel module (default `alignkit._sampler`); tests may pass a stand-in.
    compile: run each model step through `torch.compile` (inductor, dynamic shapes). The paged
      attention becomes one graph node (`torch.ops.alignkit.paged_attention`), so the norms,
      rotary embeddings and activations between the matmuls are fused instead of dispatched op by
      op: the forward alone is 1.3-1.6x faster at batch 16-56 on a small model on CPU, a whole
      CPU rollout there 1.1-1.2x (attention and the linear kernels dominate). The first
      steps pay a one-off compile (tens of seconds: a few graphs, for multi-sequence steps and for
      a lone sequence).
      Worth it for RL runs that sample every step; off by default. Needs a C++ compiler on CPU.

    After an optimizer step the next `generate` sees the new weights. The model is left in
    the mode (train/eval) and attention implementation it had.
    """

    def __init__(self, model: Any, *, kv_cache_tokens: int | None = None, max_num_seqs: int = 256,
                 max_num_batched_tokens: int = 2048, block_size: int = 16,
                 max_kv_cache_bytes: int = 2 << 30, ops: Any = None, compile: bool = False):
        for name, val in (("max_num_seqs", max_num_seqs), ("max_num_batched_tokens", max_num_batched_tokens),
                          ("block_size", block_size), ("max_kv_cache_bytes", max_kv_cache_bytes)):
            if not isinstance(val, int) or isinstance(val, bool) or val < 1:
                raise ValueError(f"Sampler({name}={val!r}): expected an int >= 1")
        if kv_cache_tokens is not None and (not isinstance(kv_cache_tokens, int) or kv_cache_tokens < block_size):
            raise ValueError(f"Sampler(kv_cache_tokens={kv_cache_tokens!r}): expected None or an int >= "
                             f"block_size ({block_size})")
        if max_num_batched_tokens < max_num_seqs:
            raise ValueError(f"Sampler(max_num_batched_tokens={max_num_batched_tokens}) must be >= "
                             f"max_num_seqs ({max_num_seqs}): every running sequence decodes one token per step")
        if isinstance(model, torch.nn.parallel.DistributedDataParallel):
            model = model.module  # sample with the local replica; DDP syncs gradients, not forwards
        if is_hf_causal_lm(model):
            self.runner: Runner = HFRunner(model)
        else:
            check_runner(model)
            self.runner = model
        if compile and ops is not None:
            raise ValueError("Sampler(compile=True) runs the alignkit._sampler kernels as a torch custom op; "
                             "it cannot be combined with a stand-in `ops` module")
        if ops is None:
            try:
                ops = default_kernels()  # alignkit._sampler, tensors passed as DLPack capsules (kernels.py)
            except ImportError as e:  # pragma: no cover - depends on the build
                raise ImportError("alignkit._sampler (the C++ extension) is not built; reinstall with "
                                  "`pip install --no-build-isolation -e .`") from e
        for fn in ("write_kv", "paged_attention", "copy_blocks", "sample", "Scheduler"):
            if not hasattr(ops, fn):
                raise TypeError(f"Sampler(ops=...): {ops!r} lacks `{fn}`")
        self.ops = ops
        # OpenMP's thread count is per thread, and a thread started after torch.set_num_threads
        # keeps OpenMP's default until torch touches its thread settings there: each step passes
        # torch's count to the kernels, so a sampler driven from a worker thread uses what torch
        # uses. (torch.get_num_threads() happens to set the thread's count too; the explicit call
        # does not rely on that.)
        self._set_kernel_threads = getattr(ops, "set_num_threads", None)
        self._forward = self.runner.forward
        self._compile_failure: tuple[type[BaseException], ...] = ()
        self._compiled = compile
        if compile:
            from torch._dynamo.exc import BackendCompilerFailed

            self._compile_failure = (BackendCompilerFailed,)
            if isinstance(self.runner, HFRunner):
                self.runner.compile()  # compiles the model call inside its attention switch
            else:
                from .compiled_step import compile_step

                self._forward = compile_step(self.runner.forward)
        self.kv_cache_tokens = kv_cache_tokens
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.block_size = block_size
        self.max_kv_cache_bytes = max_kv_cache_bytes
        self.cache: KVCache | None = None
        self._busy = threading.Lock()  # held while a call (or an unfinished stream) uses the cache
        self.last_stats = SamplerStats()
        self.total_stats = SamplerStats()

    # ----------------------------------------------------------------- public API
    def generate(self, prompt_token_ids: Sequence[Sequence[int]],
                 params: SamplingParams | Sequence[SamplingParams]) -> list[SampleGroup]:
        """Sample `params.n` completions per prompt; one `SampleGroup` per prompt, in prompt order."""
        prompts, plist = self._check_inputs(prompt_token_ids, params)
        groups = [SampleGroup(i, list(p), [None] * sp.n) for i, (p, sp) in enumerate(zip(prompts, plist))]
        for s in self._run(prompts, plist, hold_between_samples=True):
            groups[s.prompt_index].samples[s.sample_id] = s
        return groups

    def stream(self, prompt_token_ids: Sequence[Sequence[int]],
               params: SamplingParams | Sequence[SamplingParams]) -> Iterator[Sample]:
        """Like `generate`, but yield each `Sample` the moment it finishes (see `.prompt_index`, `.sample_id`)."""
        prompts, plist = self._check_inputs(prompt_token_ids, params)
        return self._run(prompts, plist)

    # ----------------------------------------------------------------- validation
    def _check_inputs(self, prompt_token_ids: Any, params: Any) -> tuple[list[list[int]], list[SamplingParams]]:
        if _is_array(prompt_token_ids):
            kind = type(prompt_token_ids).__name__
            if prompt_token_ids.ndim != 2:
                raise ValueError(f"prompt_token_ids {kind} must be 2-D [num_prompts, len], got "
                                 f"{prompt_token_ids.ndim}-D (a padded batch? pass a list of unpadded token-id lists "
                                 "instead)")
            if not _has_int_dtype(prompt_token_ids):
                raise TypeError(f"prompt_token_ids {kind} has dtype {prompt_token_ids.dtype}; token ids must be "
                                "integers (e.g. torch.long)")
            prompt_token_ids = prompt_token_ids.tolist()
        if isinstance(prompt_token_ids, (str, bytes)) or not isinstance(prompt_token_ids, Sequence):
            raise TypeError(f"prompt_token_ids must be a list of token-id lists, got {type(prompt_token_ids).__name__}"
                            " (tokenize text first)")
        if len(prompt_token_ids) == 0:
            raise ValueError("prompt_token_ids is empty: pass at least one prompt")
        if all(isinstance(t, numbers.Integral) for t in prompt_token_ids):  # numpy ints are Integral too
            raise TypeError("prompt_token_ids is a flat list of ints; pass a list of prompts, e.g. [prompt_ids]")
        if isinstance(params, SamplingParams):
            plist = [params] * len(prompt_token_ids)
        elif isinstance(params, Sequence) and all(isinstance(p, SamplingParams) for p in params):
            if len(params) != len(prompt_token_ids):
                raise ValueError(f"got {len(params)} SamplingParams for {len(prompt_token_ids)} prompts: pass one, "
                                 "or one per prompt")
            plist = list(params)
        else:
            raise TypeError(f"params must be a SamplingParams (or one per prompt), got {type(params).__name__}")
        vocab, max_ctx = self.runner.vocab_size, self.runner.max_context
        prompts = []
        for i, (p, sp) in enumerate(zip(prompt_token_ids, plist)):
            if _is_array(p):
                if not _has_int_dtype(p):
                    raise TypeError(f"prompt {i} is a {type(p).__name__} of dtype {p.dtype}; token ids must be "
                                    "integers")
                p = p.tolist()
            if isinstance(p, (str, bytes)) or not isinstance(p, Sequence):
                raise TypeError(f"prompt {i} is a {type(p).__name__}; expected a list of token ids")
            if len(p) == 0:
                raise ValueError(f"prompt {i} is empty; every prompt needs at least one token (e.g. BOS)")
            ids = [_token_id(t) for t in p]
            if None in ids:
                j = ids.index(None)
                raise TypeError(f"prompt {i}, position {j}: {p[j]!r} ({type(p[j]).__name__}) is not a token id; "
                                "token ids are ints")
            p = ids
            bad = [t for t in p if not 0 <= t < vocab]
            if bad:
                raise ValueError(f"prompt {i} has token id {bad[0]} outside the model's vocabulary [0, {vocab})")
            if max_ctx is not None and len(p) + sp.max_new_tokens > max_ctx:
                raise ValueError(f"prompt {i}: {len(p)} prompt tokens + max_new_tokens={sp.max_new_tokens} exceeds "
                                 f"the model's context of {max_ctx} tokens; lower max_new_tokens or truncate the prompt")
            if sp.max_token_id() >= vocab:
                raise ValueError(f"SamplingParams for prompt {i}: stop token id {sp.max_token_id()} is outside the "
                                 f"vocabulary [0, {vocab}) and could never be produced")
            prompts.append(p)
        # Checked here, not by the scheduler once a stream starts, so the error names the prompt.
        num_blocks, bs = self._planned_num_blocks(prompts, plist), self.block_size
        for i, (p, sp) in enumerate(zip(prompts, plist)):
            need = blocks_for_tokens(len(p) + sp.max_new_tokens - 1, bs)  # the last token is never fed back
            if need > num_blocks:
                raise ValueError(f"prompt {i}: {len(p)} prompt tokens + max_new_tokens={sp.max_new_tokens} need "
                                 f"{need} KV blocks of {bs} tokens, but the KV cache has {num_blocks}; raise "
                                 "Sampler(kv_cache_tokens=...) (or max_kv_cache_bytes), or lower max_new_tokens")
        return prompts, plist

    # ----------------------------------------------------------------- cache
    def _planned_num_blocks(self, prompts: list[list[int]], plist: list[SamplingParams]) -> int:
        """KV blocks the cache gets for this call: the fixed budget, or the workload's size capped by bytes."""
        r, bs = self.runner, self.block_size
        if self.kv_cache_tokens is not None:
            return blocks_for_tokens(self.kv_cache_tokens, bs)
        # Whole workload resident: shared prompt blocks once, plus each sample's own blocks
        # (its completion and a copied partial prompt block).
        need = sum(blocks_for_tokens(len(p), bs) + sp.n * (blocks_for_tokens(sp.max_new_tokens, bs) + 1)
                   for p, sp in zip(prompts, plist))
        per_block = 2 * r.num_layers * bs * r.num_kv_heads * r.head_dim * torch.finfo(r.dtype).bits // 8
        return max(1, min(need, self.max_kv_cache_bytes // per_block))

    def _ensure_cache(self, prompts: list[list[int]], plist: list[SamplingParams]) -> KVCache:
        r = self.runner
        bs = self.block_size
        num_blocks = self._planned_num_blocks(prompts, plist)
        if self.kv_cache_tokens is None and self.cache is not None and self.cache.num_blocks >= num_blocks:
            num_blocks = self.cache.num_blocks
        shape = dict(num_layers=r.num_layers, num_kv_heads=r.num_kv_heads, head_dim=r.head_dim, block_size=bs,
                     dtype=r.dtype, device=r.device)
        if self.cache is None or self.cache.num_blocks != num_blocks or not self.cache.matches(**shape):
            self.cache = None  # free the old one first
            self.cache = KVCache.allocate(num_blocks=num_blocks, **shape)
            if self._compiled:
                from .compiled_step import specialise_cache_layout

                specialise_cache_layout(self.cache)
        return self.cache

    # ----------------------------------------------------------------- the loop
    def _run(self, prompts: list[list[int]], plist: list[SamplingParams], *,
             hold_between_samples: bool = False) -> Iterator[Sample]:
        # One KV cache per Sampler: a second call while a stream is unfinished would overwrite
        # the blocks that stream still reads.
        # A lock taken without waiting, not a flag: two threads sharing one Sampler must not both get in.
        if not self._busy.acquire(blocking=False):
            raise RuntimeError("this Sampler is still running an unfinished stream() or a generate() call in "
                               "another thread; exhaust or close() the stream first, or use a second Sampler "
                               "for concurrent generation")
        try:
            if isinstance(self.runner, HFRunner):
                self.runner.refresh()  # modules added since the last call (e.g. adapters) are seen
            # generate() runs no code of its caller between two samples, so the runner's per-step
            # state (HFRunner.session: the attention switch, the linear swap, the compile settings)
            # is held for the whole call; a stream() consumer's code runs at each yield, so there
            # it is held a step at a time.
            with self._session() if hold_between_samples else nullcontext():
                yield from self._run_locked(prompts, plist)
        finally:
            self._busy.release()

    def _session(self) -> AbstractContextManager[Any]:
        """What the runner holds over consecutive steps: `HFRunner.session`, or a compiled runner's tracing settings."""
        if isinstance(self.runner, HFRunner):
            return self.runner.session()
        tracing_settings = getattr(self._forward, "tracing_settings", None)  # compile_step's CompiledStep
        return tracing_settings() if tracing_settings is not None else nullcontext()

    def _run_locked(self, prompts: list[list[int]], plist: list[SamplingParams]) -> Iterator[Sample]:
        cache = self._ensure_cache(prompts, plist)
        sched = self.ops.Scheduler(cache.num_blocks, self.block_size, self.max_num_seqs, self.max_num_batched_tokens)
        base_seed = None
        # The scheduler forks a group into n running sequences at once, so a group larger than
        # max_num_seqs is split into chunks (each prefilled once). Chunks keep the prompt's seed
        # and offset their sample ids, so the draws do not depend on the split.
        chunk_prompt, chunk_offset = [], []
        for i, (p, sp) in enumerate(zip(prompts, plist)):
            if sp.seed is None and base_seed is None:
                # Follows torch.manual_seed, so seeded training runs reproduce their rollouts.
                base_seed = int(torch.randint(0, 2**62, (1,)))
            seed = _mix_seed(sp.seed if sp.seed is not None else base_seed, i)
            for off in range(0, sp.n, self.max_num_seqs):
                sched.add_group(len(chunk_prompt), p, min(self.max_num_seqs, sp.n - off), sp.max_new_tokens,
                                list(sp.stop_token_ids), [list(s) for s in sp.stop_sequences], seed)
                chunk_prompt.append(i)
                chunk_offset.append(off)
        # Per-chunk sampling settings, gathered per row with the plan's group (chunk) ids.
        chunk_params = [plist[i] for i in chunk_prompt]
        temperature = torch.tensor([sp.temperature for sp in chunk_params], dtype=torch.float32)
        vocab = self.runner.vocab_size
        top_k = torch.tensor([min(sp.top_k, vocab) for sp in chunk_params], dtype=torch.int32)  # k >= V: off
        top_p = torch.tensor([sp.top_p for sp in chunk_params], dtype=torch.float32)
        min_p = torch.tensor([sp.min_p for sp in chunk_params], dtype=torch.float32)
        offsets = torch.tensor(chunk_offset, dtype=torch.int64)
        split = any(o > 0 for o in chunk_offset)
        stats = SamplerStats()
        t_start = time.perf_counter()
        try:
            while sched.has_unfinished():
                # Inference mode only around the step, never across a `yield`: the caller's code
                # between two streamed samples (e.g. a training step) must run with autograd.
                with torch.inference_mode(), self._session():
                    finished = self._step(sched, cache, stats, temperature, top_k, top_p, min_p,
                                          offsets if split else None)
                for f in finished:
                    yield Sample(token_ids=list(f.token_ids), logprobs=list(f.logprobs),
                                 raw_logprobs=list(f.raw_logprobs), finish_reason=f.finish_reason,
                                 sample_id=int(f.sample_id) + chunk_offset[f.group_id],
                                 prompt_index=chunk_prompt[f.group_id])
        finally:
            stats.preemptions = int(getattr(sched, "num_preemptions", 0))
            stats.seconds = time.perf_counter() - t_start
            self.last_stats = stats
            self.total_stats.add(stats)

    def _step(self, sched: Any, cache: KVCache, stats: SamplerStats, temperature: torch.Tensor,
              top_k: torch.Tensor, top_p: torch.Tensor, min_p: torch.Tensor,
              offsets: torch.Tensor | None) -> list[Any]:
        """One scheduler step: plan, copy-on-write, forward, sample, update; returns finished samples."""
        ops = self.ops
        device = cache.k[0].device
        on_cuda = device.type == "cuda"
        if self._set_kernel_threads is not None and not on_cuda:
            self._set_kernel_threads(torch.get_num_threads())
        plan = sched.schedule()
        input_ids = _as_tensor(plan.input_ids, torch.int64)
        if input_ids.numel() == 0:
            raise RuntimeError("scheduler produced an empty step with work pending (KV budget too "
                               "small for one sequence?); raise kv_cache_tokens")
        positions = _as_tensor(plan.positions, torch.int64)
        attn = PagedAttention(
            cache=cache, slot_mapping=_as_tensor(plan.slot_mapping, torch.int64),
            block_tables=_as_tensor(plan.block_tables, torch.int32),
            context_lens=_as_tensor(plan.context_lens, torch.int32),
            query_start_loc=_as_tensor(plan.query_start_loc, torch.int32),
            logits_indices=_as_tensor(plan.logits_indices, torch.int64), ops=ops)
        if on_cuda:
            attn = self._to_device(attn, device)
            input_ids, positions = input_ids.to(device), positions.to(device)
        copy_src = _as_tensor(plan.copy_src, torch.int64)
        if copy_src.numel():
            copy_dst = _as_tensor(plan.copy_dst, torch.int64)
            if on_cuda:
                copy_src, copy_dst = copy_src.to(device), copy_dst.to(device)
            for kc, vc in zip(cache.k, cache.v):
                ops.copy_blocks(kc, vc, copy_src, copy_dst, attn.stream)
        t_fwd = time.perf_counter()
        try:
            logits = self._forward(input_ids, positions, attn)
        except self._compile_failure as e:
            raise RuntimeError(f"Sampler(compile=True) could not compile the model step ({e}). Sample without "
                               "compiling (Sampler(..., compile=False)); on CPU, torch.compile needs a working C++ "
                               "compiler") from e
        if logits.dtype != torch.float32 or not logits.is_contiguous():
            logits = logits.float().contiguous()
        stats.forward_seconds += time.perf_counter() - t_fwd
        rows = logits.shape[0]
        gid = _as_tensor(plan.sample_group_ids, torch.int64)
        sample_ids = _as_tensor(plan.sample_ids, torch.int64)
        if offsets is not None:
            sample_ids = sample_ids + offsets[gid]
        row_args = [temperature[gid], top_k[gid], top_p[gid], min_p[gid],
                    _as_tensor(plan.sample_seeds, torch.int64), sample_ids,
                    _as_tensor(plan.sample_positions, torch.int64)]
        if on_cuda:
            row_args = [a.to(device) for a in row_args]
        tokens = torch.empty(rows, dtype=torch.int64, device=device)
        lps = torch.empty(rows, dtype=torch.float32, device=device)
        raw = torch.empty(rows, dtype=torch.float32, device=device)
        ops.sample(logits, *row_args, tokens, lps, raw, attn.stream)
        if on_cuda:
            tokens, lps, raw = tokens.cpu(), lps.cpu(), raw.cpu()
        stats.steps += 1
        stats.forward_tokens += input_ids.numel()
        stats.sampled_tokens += rows
        stats.max_batch_seqs = max(stats.max_batch_seqs, attn.context_lens.numel())
        return sched.update(plan.sample_seq_ids.tolist(), tokens.tolist(), lps.tolist(), raw.tolist())

    @staticmethod
    def _to_device(attn: PagedAttention, device: torch.device) -> PagedAttention:
        attn.slot_mapping = attn.slot_mapping.to(device, non_blocking=True)
        attn.block_tables = attn.block_tables.to(device, non_blocking=True)
        attn.context_lens = attn.context_lens.to(device, non_blocking=True)
        attn.query_start_loc = attn.query_start_loc.to(device, non_blocking=True)
        attn.logits_indices = attn.logits_indices.to(device, non_blocking=True)
        attn.stream = torch.cuda.current_stream(device).cuda_stream
        return attn
