"""The paged KV cache: per-layer K and V block tensors on the model's device and dtype."""

from __future__ import annotations

from dataclasses import dataclass

import torch


def blocks_for_tokens(num_tokens: int, block_size: int) -> int:
    """Number of fixed-size blocks needed to hold `num_tokens` tokens."""
    return -(-num_tokens // block_size)


@dataclass
class KVCache:
    """K/V blocks for every attention layer, shaped [num_blocks, block_size, num_kv_heads, head_dim].

    Block ids are shared by all layers: block b of sequence s lives at index b of every
    layer's tensor, so one block table serves the whole model.
    """

    k: list[torch.Tensor]
    v: list[torch.Tensor]
    block_size: int

    @classmethod
    def allocate(cls, *, num_layers: int, num_kv_heads: int, head_dim: int, num_blocks: int,
                 block_size: int, dtype: torch.dtype, device: torch.device | str) -> "KVCache":
        """Allocate zeroed K/V blocks (zeroed so an unwritten slot can never inject NaNs)."""
        for name, val in (("num_layers", num_layers), ("num_kv_heads", num_kv_heads),
                          ("head_dim", head_dim), ("num_blocks", num_blocks), ("block_size", block_size)):
            if not isinstance(val, int) or val < 1:
                raise ValueError(f"KVCache.allocate: {name}={val!r} must be an int >= 1")
        if dtype not in (torch.float32, torch.bfloat16, torch.float16):
            raise TypeError(f"KVCache.allocate: dtype={dtype} unsupported; use float32, bfloat16 or float16")
        shape = (num_blocks, block_size, num_kv_heads, head_dim)
        k = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        v = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        return cls(k=k, v=v, block_size=block_size)

    @property
    def num_blocks(self) -> int:
        """Blocks per layer (the scheduler's block budget)."""
        return self.k[0].shape[0]

    @property
    def num_layers(self) -> int:
        """Attention layers the cache serves."""
        return len(self.k)

    @property
    def num_tokens(self) -> int:
        """Token capacity of the cache (all sequences together)."""
        return self.num_blocks * self.block_size

    @property
    def nbytes(self) -> int:
        """Memory held by all K and V blocks."""
        return sum(t.numel() * t.element_size() for t in self.k + self.v)

    def matches(self, *, num_layers: int, num_kv_heads: int, head_dim: int, block_size: int,
                dtype: torch.dtype, device: torch.device) -> bool:
        """Whether this cache can serve a model with these shapes (reuse instead of reallocating)."""
        t = self.k[0]
        return (self.num_layers == num_layers and t.shape[1:] == (block_size, num_kv_heads, head_dim)
                and t.dtype == dtype and t.device == torch.device(device))
