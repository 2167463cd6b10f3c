"""BlockAllocator: reference counts, FIFO free queue, and clear errors for misuse (also under hypothesis)."""

from collections import deque

import pytest
from hypothesis import settings, strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

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


class AllocatorMachine(RuleBasedStateMachine):
    """Random allocate / incref / decref / misuse sequences against a pure-Python model of the pool."""

    @initialize(num_blocks=st.integers(1, 8), block_size=st.integers(1, 16))
    def make(self, num_blocks, block_size):
        self.a = ops.BlockAllocator(num_blocks, block_size)
        self.n = num_blocks
        self.free = deque(range(num_blocks))  # the model's FIFO free queue, front first
        self.held: dict[int, int] = {}        # allocated block -> holders

    def _some_held(self, data):
        return data.draw(st.sampled_from(sorted(self.held)), label="held block")

    @rule()
    def allocate(self):
        if not self.free:
            with pytest.raises(RuntimeError, match="out of KV blocks"):
                self.a.allocate()
            return
        b = self.a.allocate()
        assert b not in self.held, f"block {b} handed out again while held"
        # The header promises a FIFO free queue: the longest-free block is reused first.
        assert b == self.free.popleft()
        self.held[b] = 1

    @precondition(lambda self: self.held)
    @rule(data=st.data())
    def incref(self, data):
        b = self._some_held(data)
        self.a.incref(b)
        self.held[b] += 1

    @precondition(lambda self: self.held)
    @rule(data=st.data())
    def decref(self, data):
        b = self._some_held(data)
        self.a.decref(b)
        self.held[b] -= 1
        if self.held[b] == 0:  # the last holder let go: back of the queue
            del self.held[b]
            self.free.append(b)

    @precondition(lambda self: self.held)
    @rule(data=st.data())
    def release_all_holders(self, data):
        # Like a finished sequence dropping a shared block: frees it however many holders it had.
        b = self._some_held(data)
        for _ in range(self.held.pop(b)):
            self.a.decref(b)
        self.free.append(b)

    @precondition(lambda self: self.free)
    @rule(data=st.data())
    def touching_a_free_block_raises(self, data):
        b = data.draw(st.sampled_from(sorted(self.free)), label="free block")
        with pytest.raises(RuntimeError, match="already free"):
            self.a.decref(b)
        with pytest.raises(RuntimeError, match="is free"):
            self.a.incref(b)

    @rule(offset=st.sampled_from([-3, -1, 0, 5]))
    def out_of_range_ids_raise(self, offset):
        bad = offset if offset < 0 else self.n + offset
        for op in (self.a.refcount, self.a.incref, self.a.decref):
            with pytest.raises(IndexError, match="outside"):
                op(bad)

    @invariant()
    def counts_match_the_model(self):
        # Misuse above must leave the pool untouched, so this also checks the failed calls.
        assert self.a.num_free == len(self.free)
        assert self.a.num_free + len(self.held) == self.a.num_blocks == self.n, "a block leaked or was duplicated"
        assert [self.a.refcount(b) for b in range(self.n)] == [self.held.get(b, 0) for b in range(self.n)]


TestAllocatorMachine = AllocatorMachine.TestCase
TestAllocatorMachine.settings = settings(max_examples=80, stateful_step_count=50, deadline=None)
