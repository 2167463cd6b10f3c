"""BlockAllocator: reference counts, FIFO free queue, and clear errors for misuse."""

import pytest

import alignkit._sampler as ops


def test_allocate_all_then_out_of_blocks():
    a = ops.BlockAllocator(3, 16)
    assert (a.num_blocks, a.block_size, a.num_free) == (3, 16, 3)
    got = [a.allocate() for _ in range(3)]
    assert sorted(got) == [0, 1, 2] and a.num_free == 0
    assert all(a.refcount(b) == 1 for b in got)
    with pytest.raises(RuntimeError, match="out of KV blocks"):
        a.allocate()


def test_shared_block_is_freed_only_by_its_last_holder_and_requeued_last():
    a = ops.BlockAllocator(3, 4)
    b = a.allocate()
    a.incref(b)
    a.incref(b)
    assert a.refcount(b) == 3
    a.decref(b)
    a.decref(b)
    assert a.refcount(b) == 1 and a.num_free == 2
    a.decref(b)
    assert a.refcount(b) == 0 and a.num_free == 3
    # FIFO: the two never-used blocks come out before the one just freed.
    assert [a.allocate() for _ in range(3)] == [x for x in (0, 1, 2) if x != b] + [b]


def test_misuse_raises():
    a = ops.BlockAllocator(2, 4)
    for bad in (-1, 2):
        with pytest.raises(IndexError, match=r"outside \[0, 2\)"):
            a.refcount(bad)
        with pytest.raises(IndexError):
            a.incref(bad)
        with pytest.raises(IndexError):
            a.decref(bad)
    with pytest.raises(RuntimeError, match="already free"):
        a.decref(0)
    with pytest.raises(RuntimeError, match="is free"):
        a.incref(1)
    with pytest.raises(ValueError, match="num_blocks must be >= 1"):
        ops.BlockAllocator(0, 4)
    with pytest.raises(ValueError, match="block_size must be >= 1"):
        ops.BlockAllocator(4, 0)
