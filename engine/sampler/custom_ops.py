"""Register alignkit's torch ops once per process, on first use, from whichever thread asks first.

Ops are declared with a schema and one kernel (`torch.library.Library.define/impl`) rather than
`torch.library.custom_op`: called eagerly, custom_op wraps every call in Python autograd and
mutation-tracking layers (measured: ~45 us for a 2-argument op, ~200 us for the 10-argument
attention op around its ~80 us kernel); a schema op dispatches straight to its kernel (~4-6 us).
Sampler steps run under `inference_mode`, so no autograd formula is needed.
"""

from __future__ import annotations

import threading
from typing import Any, Callable

import torch

_libraries: list[torch.library.Library] = []  # a Library's registrations live as long as the object


def define_op(name: str, schema: str, kernel: Callable[..., Any], fake: Callable[..., Any]) -> Any:
    """Define `torch.ops.alignkit.<name>` from a schema, with `kernel` for every device and `fake` for tracing."""
    lib = torch.library.Library("alignkit", "FRAGMENT")
    lib.define(f"{name}{schema}")
    lib.impl(name, kernel, "CompositeExplicitAutograd")  # all backends, below autograd
    torch.library.register_fake(f"alignkit::{name}", fake, lib=lib)
    _libraries.append(lib)
    return getattr(torch.ops.alignkit, name).default


def registered_once(register: Callable[[], Any]) -> Callable[[], Any]:
    """A getter that calls `register()` the first time (under a lock) and returns its op ever after."""
    lock = threading.Lock()
    op: list[Any] = []

    def get() -> Any:
        with lock:  # two samplers built from two threads must not register the op twice
            if not op:
                op.append(register())
        return op[0]

    get.__doc__ = register.__doc__
    return get
