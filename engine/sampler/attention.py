"""Per-step paged-attention metadata, and the one call every attention layer makes with it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from .kv_cache import KVCache


@dataclass
class PagedAttention:
    """What one forward step needs to write new K/V into the paged cache and attend over it.

    Built by the `Sampler` once per step from the scheduler's plan; passed to the model's
    forward (HF adapter: as the `alignkit_paged` keyword, which transformers forwards to the
    attention function). A custom runner calls `attend` from each of its attention layers.
    Shapes: T = tokens in this step (all sequences packed), S = sequences, R = sampled rows.
    """

    cache: KVCache
    slot_mapping: torch.Tensor      # int64 [T]: block_id * block_size + offset
    block_tables: torch.Tensor      # int32 [S, max_blocks]
    context_lens: torch.Tensor      # int32 [S]: cached tokens incl. this step's
    query_start_loc: torch.Tensor   # int32 [S + 1]: prefix sums of query lengths
    logits_indices: torch.Tensor    # int64 [R]: rows of the T tokens whose logits are sampled
    ops: Any                        # write_kv / paged_attention (alignkit._sampler or a stand-in)
    stream: int = 0                 # raw cudaStream_t on CUDA, 0 on CPU
    layers_attended: int = 0        # eager `attend` calls this step (the HF adapter checks every layer made one)

    @property
    def num_tokens(self) -> int:
        """Tokens packed into this step (T)."""
        return self.slot_mapping.shape[0]

    def attend(self, layer_idx: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
               scale: float) -> torch.Tensor:
        """Store this step's k/v for `layer_idx`, then attend q causally over each sequence's cache.

        q: [T, num_heads, head_dim]; k, v: [T, num_kv_heads, head_dim] -> out [T, num_heads, head_dim].
        """
        kc, vc = self.cache.k[layer_idx], self.cache.v[layer_idx]
        if torch.compiler.is_compiling():  # traced by torch.compile: one graph node (compiled_step.py)
            return torch.ops.alignkit.paged_attention(q, k, v, kc, vc, self.slot_mapping, self.block_tables,
                                                      self.context_lens, self.query_start_loc, float(scale))
        self.layers_attended += 1
        # The kernels read raw memory: they need dense rows (GPT-2's fused qkv split is strided).
        if not q.is_contiguous():
            q = q.contiguous()
        if not k.is_contiguous():
            k = k.contiguous()
        if not v.is_contiguous():
            v = v.contiguous()
        if k.dtype != kc.dtype:
            k, v, q = k.to(kc.dtype), v.to(kc.dtype), q.to(kc.dtype)
        self.ops.write_kv(kc, vc, k, v, self.slot_mapping, self.stream)
        out = torch.empty_like(q)
        self.ops.paged_attention(out, q, kc, vc, self.block_tables, self.context_lens,
                                 self.query_start_loc, float(scale), self.stream)
        return out
