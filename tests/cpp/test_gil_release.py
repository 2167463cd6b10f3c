"""The kernels release the GIL while they work: other Python threads keep running during a call.

A kernel runs in a background thread while the main thread spins in a pure-Python loop that
notes the longest pause between two of its iterations. A call that held the GIL would stop the
main thread for the whole call: one pause as long as the call. A call that releases it leaves
the main thread running, pausing only as long as the OS or a GIL hand-over delays it (a few ms,
more on a loaded machine). So each call is sized to take CALL_S or more and its longest pause
must stay under half of it. A ctypes call that holds the GIL, and the same call releasing it,
show the measurement tells the two apart. (Counting iterations during the call instead does not
hold up on a loaded machine: around a held call the main thread gets the GIL for a switch
interval plus the OS's delay in waking the worker, which reached a quarter of a 60 ms call's
worth with 2 cores oversubscribed 2.5x; the held call's one long pause stays.)
"""

from __future__ import annotations

import ctypes
import threading
import time
from dataclasses import dataclass

import pytest
import torch

import alignkit._sampler as ops

CALL_S = 0.06  # each measured call takes at least this long: far above a released GIL's pauses


@dataclass
class Run:
    seconds: float  # the call's duration, timed in the worker
    longest_pause: float  # the main thread's longest time between two loop iterations, the call included


def _run_beside_main_thread(call) -> Run:
    """Runs `call` in a worker thread while the main thread loops; see the module docstring."""
    seen: dict = {}
    go, done = threading.Event(), threading.Event()

    def worker():
        # One kernel thread (this thread's OpenMP setting; restored below, since torch also keeps it
        # process-wide), so the main thread has a core of its own on a 2-core machine.
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            go.wait()  # the main thread is looping by now
            t = time.perf_counter()
            call()
            seen["seconds"] = time.perf_counter() - t
        except BaseException as e:  # re-raised in the main thread, where pytest sees it
            seen["error"] = e
        finally:
            torch.set_num_threads(threads)
            done.set()

    thread = threading.Thread(target=worker)
    thread.start()
    go.set()
    longest, last = 0.0, time.perf_counter()
    while not done.is_set():
        now = time.perf_counter()
        longest, last = max(longest, now - last), now
    thread.join()
    if "error" in seen:
        raise seen["error"]
    return Run(seen["seconds"], longest)


def _linear(scale):
    m, n, k = 512 * scale, 4096, 1024
    out, x, w, b = torch.empty(m, n), torch.randn(m, k), torch.randn(n, k), torch.randn(n)
    return lambda: ops.linear(out, x, w, b)


def _linear_kn(scale):
    m, n, k = 512 * scale, 4096, 1024
    out, x, w, b = torch.empty(m, n), torch.randn(m, k), torch.randn(k, n), torch.randn(n)
    return lambda: ops.linear_kn(out, x, w, b)


def _linear_group(scale):
    m, k, ns = 512 * scale, 1024, (2048, 1024, 1024)  # q/k/v-like widths
    x = torch.randn(m, k)
    ws, outs = [torch.randn(n, k) for n in ns], [torch.empty(m, n) for n in ns]
    return lambda: ops.linear_group(outs, x, ws, [None] * len(ns))


def _paged_attention(scale):
    # Causal prefill of `seqs` sequences of 512 tokens over their paged caches (GQA 8/4 heads, head_dim 64).
    seqs, length, hq, hk, d, bs = 8 * scale, 512, 8, 4, 64, 16
    blocks = seqs * length // bs
    kc, vc = torch.randn(blocks, bs, hk, d), torch.randn(blocks, bs, hk, d)
    q = torch.randn(seqs * length, hq, d)
    out = torch.empty_like(q)
    tables = torch.arange(blocks, dtype=torch.int32).view(seqs, -1)
    lens = torch.full((seqs,), length, dtype=torch.int32)
    starts = torch.arange(0, seqs * length + 1, length, dtype=torch.int32)
    return lambda: ops.paged_attention(out, q, kc, vc, tables, lens, starts, d ** -0.5)


def _sample(scale):
    # top_p < 1 makes each row sort its 128k-entry vocabulary.
    r, v = 16 * scale, 131072
    kw = dict(logits=torch.randn(r, v), temperature=torch.ones(r), top_k=torch.zeros(r, dtype=torch.int32),
              top_p=torch.full((r,), 0.9), min_p=torch.zeros(r), seeds=torch.arange(r), sample_ids=torch.arange(r),
              positions=torch.arange(r), out_tokens=torch.empty(r, dtype=torch.int64), out_logprobs=torch.empty(r),
              out_raw_logprobs=torch.empty(r))
    return lambda: ops.sample(**kw)


def test_the_measurement_tells_a_held_gil_from_a_released_one():
    # The same libc sleep through ctypes.PyDLL (keeps the GIL across the call) and CDLL (releases it).
    held = _run_beside_main_thread(lambda: ctypes.PyDLL(None).usleep(int(CALL_S * 1e6)))
    assert held.seconds >= CALL_S
    assert held.longest_pause >= held.seconds / 2, held  # what the kernel test below would reject
    released = _run_beside_main_thread(lambda: ctypes.CDLL(None).usleep(int(CALL_S * 1e6)))
    assert released.longest_pause < released.seconds / 2, released


@pytest.mark.parametrize("make", [_linear, _linear_kn, _linear_group, _paged_attention, _sample],
                         ids=lambda f: f.__name__[1:])
def test_python_threads_run_while_a_kernel_works(make):
    scale = 1  # make(scale) -> a kernel call; ~60-100 ms here, doubled on faster machines until it takes CALL_S
    run = _run_beside_main_thread(make(scale))
    while run.seconds < CALL_S and scale < 64:
        scale *= 2
        run = _run_beside_main_thread(make(scale))
    assert run.seconds >= CALL_S, f"the call took {run.seconds * 1e3:.1f} ms: too short to tell a held GIL apart"
    assert run.longest_pause < run.seconds / 2, (
        f"the main thread stopped for {run.longest_pause * 1e3:.0f} ms of a {run.seconds * 1e3:.0f} ms call: "
        f"the kernel held the GIL")
