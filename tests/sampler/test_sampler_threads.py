"""A sampler driven from a worker thread runs its kernels on torch's thread count, not OpenMP's default."""

import os
import threading

import pytest
import torch

import alignkit._sampler as ext
from alignkit.engine.sampler import Sampler, SamplingParams
from alignkit.engine.sampler.hf_adapter import HFRunner


class KernelThreadsRecorder:
    """A Runner around an HF model that records the kernels' thread count as each step starts."""

    def __init__(self, model):
        self.inner = HFRunner(model)
        for name in ("num_layers", "num_kv_heads", "head_dim", "vocab_size", "dtype", "device", "max_context"):
            setattr(self, name, getattr(self.inner, name))
        self.seen = []

    def forward(self, input_ids, positions, attn):
        self.seen.append(ext.num_threads())
        return self.inner.forward(input_ids, positions, attn)


def _in_new_thread(fn):
    out = []
    t = threading.Thread(target=lambda: out.append(fn()))
    t.start()
    t.join()
    return out[0]


def test_kernels_follow_torch_thread_count_in_a_worker_thread(llama):
    if not ext.uses_openmp:
        pytest.skip("without OpenMP the kernels' pool has a fixed size (thread_pool.h)")
    if os.environ.get("ALIGNKIT_NUM_THREADS"):
        pytest.skip("ALIGNKIT_NUM_THREADS fixes the kernels' thread count in every thread (read at import)")
    openmp_default = _in_new_thread(ext.num_threads)  # a fresh thread's OpenMP count
    saved = torch.get_num_threads()
    want = openmp_default + 1  # differs from the default, so a thread that ignores torch shows it
    torch.set_num_threads(want)
    try:
        runner = KernelThreadsRecorder(llama)
        sampler = Sampler(runner)
        params = SamplingParams(n=2, max_new_tokens=4, seed=0)
        sampler.generate([[1, 5, 7]], params)  # cache allocated here, so the worker runs no torch op first
        runner.seen.clear()
        assert _in_new_thread(ext.num_threads) == openmp_default, "a new thread starts at OpenMP's default"
        _in_new_thread(lambda: sampler.generate([[1, 5, 7], [3, 4]], params))
        assert runner.seen and set(runner.seen) == {want}
    finally:
        torch.set_num_threads(saved)


def test_set_num_threads_rejects_a_count_below_one():
    with pytest.raises(ValueError, match="expected an int >= 1"):
        ext.set_num_threads(0)


def test_set_num_threads_sets_the_calling_threads_count_only():
    if not ext.uses_openmp or os.environ.get("ALIGNKIT_NUM_THREADS"):
        pytest.skip("needs an OpenMP build whose thread count no ALIGNKIT_NUM_THREADS fixes")
    main = ext.num_threads()
    want = main + 2

    def worker():  # no torch call in this thread: only the binding can set its count
        ext.set_num_threads(want)
        return ext.num_threads()

    assert _in_new_thread(worker) == want
    assert ext.num_threads() == main
