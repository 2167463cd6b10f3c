"""The extension's kernels, called with tensor arguments handed over as DLPack capsules.

nanobind imports a torch tensor by calling its Python-level `__dlpack__` method, ~6 us a tensor:
~40 us for an attention call's seven tensors, paid by every layer of every step. torch's C
`to_dlpack` builds the same capsule in ~0.6 us, and nanobind accepts a capsule as it is (the same
checks of dtype, device, shape and layout run in the extension). Results are identical.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.dlpack import to_dlpack

from .custom_ops import registered_once


def as_capsule(a: Any) -> Any:
    """A tensor as a DLPack capsule (detached first: export refuses tensors that require grad); anything else as is."""
    if isinstance(a, torch.Tensor):
        return to_dlpack(a.detach() if a.requires_grad else a)
    return a


class CapsuleKernels:
    """Wraps a kernel module (`alignkit._sampler`): same functions, tensors passed as DLPack capsules."""

    def __init__(self, module: Any):
        self._module = module

    def __getattr__(self, name: str) -> Any:
        fn = getattr(self._module, name)
        if isinstance(fn, type) or not callable(fn):  # classes (Scheduler) and constants pass through
            return fn

        def call(*args: Any, **kwargs: Any) -> Any:
            return fn(*[as_capsule(a) for a in args], **{k: as_capsule(v) for k, v in kwargs.items()})

        call.__name__, call.__doc__ = name, fn.__doc__
        setattr(self, name, call)  # built once per name
        return call


def _load_default() -> CapsuleKernels:
    """`alignkit._sampler` behind a `CapsuleKernels` (one per process)."""
    import alignkit._sampler as ext

    return CapsuleKernels(ext)


default_kernels = registered_once(_load_default)
