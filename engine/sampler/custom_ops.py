"""Register a torch custom op once per process, on first use, from whichever thread asks first."""

from __future__ import annotations

import threading
from typing import Any, Callable


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
