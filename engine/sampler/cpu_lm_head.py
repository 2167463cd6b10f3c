"""On CPU, a sampler forward runs the LM head through oneDNN's matmul instead of MKL's sgemm.

The head of a sampler step is a few rows (one per live sequence) times a large vocabulary: the
shape fp32 sgemm handles worst, since MKL re-packs the whole [vocab, hidden] weight on every call.
oneDNN's matmul reads the weight where it is. Measured on the 2-vCPU dev VM (2 threads, the head
alone): 1.1-1.3x faster for vocab 4096 x hidden 256 at 8-256 rows, 1.2-2.3x for 32000 x 512 and
1.1-2.2x for 151936 x 896 (1.9-2.2x at 1 row for the two large vocabularies; 0.87x, 16 us lost,
for one row of the small one); inside the benchmark rollout the head's time fell from 0.64 s to
0.39-0.51 s.

The swap is active only inside a sampler forward, like the attention switch: training forwards
use the module's own `nn.Linear`. It reads the module's parameters (no copy, no packed cache), so a
training step is visible to the next sampler step. Inside `torch.compile` it is the op
`alignkit::cpu_linear` (inductor's own lowering of the oneDNN op expects frozen, pre-packed weights).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch

from .custom_ops import define_op, registered_once


def uses_onednn_head(head: torch.nn.Module | None) -> bool:
    """Whether the sampler runs this output layer through oneDNN: a plain fp32 `nn.Linear` on the CPU."""
    if type(head) is not torch.nn.Linear or not torch.backends.mkldnn.is_available():
        return False
    if "forward" in head.__dict__:  # already patched (hooks, another sampler's step): leave it be
        return False
    w = head.weight
    return w.device.type == "cpu" and w.dtype == torch.float32 and w.dim() == 2 and w.is_contiguous() \
        and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def _register_cpu_linear():
    """`torch.ops.alignkit.cpu_linear`, registered by the first `cpu_linear_op()` call."""
    def cpu_linear(x, weight, bias):
        """x @ weight.T (+ bias) on the CPU through oneDNN; x [..., in] -> [..., out]."""
        rows = x.reshape(-1, x.shape[-1])
        if rows.shape[0] == 0:
            out = torch.nn.functional.linear(rows, weight, bias)
        else:
            out = torch.ops.mkldnn._linear_pointwise(rows.contiguous(), weight, bias, "none", [], "")
        return out.reshape(*x.shape[:-1], weight.shape[0])

    def fake(x, weight, bias):
        return x.new_empty((*x.shape[:-1], weight.shape[0]))

    return define_op("cpu_linear", "(Tensor x, Tensor weight, Tensor? bias) -> Tensor", cpu_linear, fake)


cpu_linear_op = registered_once(_register_cpu_linear)


@contextmanager
def onednn_head(head: torch.nn.Module) -> Iterator[None]:
    """Within the block, `head(x)` computes its usual `F.linear(x, weight, bias)` with oneDNN."""
    op = cpu_linear_op()
    had_own = "forward" in head.__dict__
    own = head.__dict__.get("forward")

    def forward(x: torch.Tensor) -> torch.Tensor:
        if x.dtype != head.weight.dtype or torch.is_autocast_enabled("cpu"):
            return torch.nn.functional.linear(x, head.weight, head.bias)  # let F.linear cast
        return op(x, head.weight, head.bias)

    head.forward = forward
    try:
        yield
    finally:
        if had_own:
            head.forward = own
        else:
            del head.forward
