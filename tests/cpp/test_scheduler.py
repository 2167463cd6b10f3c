"""Scheduler: block bookkeeping, KV layout, budgets and outputs under random workloads, groups arriving mid-run."""

from __future__ import annotations

import itertools
import random

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, event, given, settings, strategies as st

import alignkit._sampler as ops

VOCAB = 6  # tiny, so stop tokens and stop sequences actually occur


class NumpyPlan:
    """A StepPlan with its fields as numpy arrays (views of the plan's zero-copy tensors), for numpy-style asserts."""

    def __init__(self, plan):
        self._plan = plan

    def __getattr__(self, name):
        value = getattr(self._plan, name)
        return value.numpy() if isinstance(value, torch.Tensor) else value


def schedule(sched) -> NumpyPlan:
    """sched.schedule(), fields as numpy."""
    return NumpyPlan(sched.schedule())


def fake_token(seed: int, sample_id: int, position: int) -> int:
    """A stateless 'model + sampler': the token depends only on (seed, sample_id, position), like the real RNG."""
    return random.Random(seed * 1_000_003 + sample_id * 7919 + position).randrange(VOCAB)


def expected_sample(prompt, seed, sid, max_new, stop_ids, stop_seqs):
    """The closed-form output of one sample, independent of scheduling."""
    out = []
    while True:
        t = fake_token(seed, sid, len(prompt) + len(out))
        out.append(t)
        if t in stop_ids or any(len(s) <= len(out) and out[-len(s):] == s for s in stop_seqs):
            return out, "stop"
        if len(out) == max_new:
            return out, "length"


class KVModel:
    """Simulated cache: which (position, token) each slot holds, to check what attention would read."""

    def __init__(self, num_blocks, bs):
        self.bs = bs
        self.slots = [None] * (num_blocks * bs)

    def copy(self, src, dst):
        for s, d in zip(src, dst):
            self.slots[d * self.bs:(d + 1) * self.bs] = self.slots[s * self.bs:(s + 1) * self.bs]

    def write(self, slots, positions, tokens):
        for sl, p, t in zip(slots, positions, tokens):
            self.slots[sl] = (p, t)

    def read(self, table, n):
        return [self.slots[table[p // self.bs] * self.bs + p % self.bs] for p in range(n)]


def drive(num_blocks, bs, max_seqs, max_tokens, groups, arrivals=None):
    """Runs the scheduler to completion with fake_token, checking every step; returns (outputs, stats).

    arrivals[gid] (non-decreasing, in half-steps) is when group gid is added: 2k before step k's
    schedule(), 2k + 1 between its schedule() and update(). Default: all before the first step. A
    group due later is added at once when the scheduler runs dry (no idle steps).
    """
    sched = ops.Scheduler(num_blocks, bs, max_seqs, max_tokens)
    arrivals = arrivals or [0] * len(groups)
    added = 0

    def add_due(now):
        nonlocal added
        while added < len(groups) and (arrivals[added] <= now or not sched.has_unfinished()):
            prompt, n, max_new, stop_ids, stop_seqs, seed = groups[added]
            sched.add_group(added, prompt, n, max_new, stop_ids, stop_seqs, seed)
            added += 1

    kv = KVModel(num_blocks, bs)
    seq_tokens: dict[int, list[int]] = {}  # seq id -> prompt + generated, learned from sample rows
    outputs: dict[tuple[int, int], tuple] = {}
    forward_tokens = prefill_tokens = mixed_steps = steps = 0
    add_due(0)
    while sched.has_unfinished():
        steps += 1
        assert steps < 20_000, "no progress"
        plan = schedule(sched)
        sched.check_invariants()
        add_due(2 * steps - 1)  # arrivals while the step's forward would run
        T, S = len(plan.input_ids), len(plan.context_lens)
        assert 0 < T <= max_tokens, "empty step with work pending, or token budget exceeded"
        assert S <= max_seqs
        qsl = plan.query_start_loc
        assert qsl[0] == 0 and qsl[-1] == T and np.all(np.diff(qsl) >= 1)
        bt = plan.block_tables
        for s in range(S):  # slots follow the block table; context_lens ends at the last position
            pos = plan.positions[qsl[s]:qsl[s + 1]]
            assert np.array_equal(pos, np.arange(plan.context_lens[s] - len(pos), plan.context_lens[s]))
            for p, sl in zip(pos, plan.slot_mapping[qsl[s]:qsl[s + 1]]):
                assert sl == bt[s, p // bs] * bs + p % bs
        kv.copy(plan.copy_src, plan.copy_dst)  # copies first, then this step's writes
        kv.write(plan.slot_mapping, plan.positions, plan.input_ids)
        has_decode = False
        for r, (row, sid) in enumerate(zip(plan.logits_indices, plan.sample_seq_ids)):
            s = int(np.searchsorted(qsl, row, side="right") - 1)
            assert row == qsl[s + 1] - 1, "a sample must come from its sequence's last token"
            gid = int(plan.sample_group_ids[r])
            toks = seq_tokens.setdefault(int(sid), list(groups[gid][0]))
            assert plan.sample_positions[r] == len(toks) == plan.context_lens[s]
            # What attention reads for this sequence is exactly its own history.
            assert kv.read(bt[s], len(toks)) == list(enumerate(toks))
            # A decode: one query token that is a generated one fed back.
            has_decode |= int(qsl[s + 1] - qsl[s]) == 1 and len(toks) > len(groups[gid][0])
        forward_tokens += T
        prefill_tokens += plan.num_prefill_tokens
        mixed_steps += int(plan.num_prefill_tokens > 0 and has_decode)
        tokens = [fake_token(int(sd), int(si), int(p)) for sd, si, p in
                  zip(plan.sample_seeds, plan.sample_ids, plan.sample_positions)]
        for sid, t in zip(plan.sample_seq_ids, tokens):
            seq_tokens[int(sid)].append(t)
        finished = sched.update(plan.sample_seq_ids, tokens, [0.5] * len(tokens), [0.25] * len(tokens))
        sched.check_invariants()
        for f in finished:
            key = (f.group_id, f.sample_id)
            assert key not in outputs
            outputs[key] = (list(f.token_ids), f.finish_reason, list(f.logprobs), list(f.raw_logprobs))
        add_due(2 * steps)
    assert added == len(groups)
    a = sched.allocator
    assert a.num_free == num_blocks and all(a.refcount(b) == 0 for b in range(num_blocks)), "leaked blocks"
    assert sched.num_running == 0 and sched.num_waiting == 0
    return outputs, dict(forward_tokens=forward_tokens, prefill_tokens=prefill_tokens,
                         preemptions=sched.num_preemptions, mixed_steps=mixed_steps)


def check_outputs(groups, outputs, stats):
    assert len(outputs) == sum(g[1] for g in groups), "every admitted request finishes with exactly n samples"
    generated_minus_one = 0
    for gid, (prompt, n, max_new, stop_ids, stop_seqs, seed) in enumerate(groups):
        for sid in range(n):
            toks, reason, lps, raws = outputs[(gid, sid)]
            assert (toks, reason) == expected_sample(prompt, seed, sid, max_new, stop_ids, stop_seqs)
            assert lps == [0.5] * len(toks) and raws == [0.25] * len(toks)
            generated_minus_one += len(toks) - 1
    prompt_total = sum(len(g[0]) for g in groups)
    if stats["preemptions"] == 0:
        # Each prompt computed once per group, then one token per decode (the last sample is never fed back).
        assert stats["prefill_tokens"] == prompt_total
        assert stats["forward_tokens"] == prompt_total + generated_minus_one
    else:
        assert stats["forward_tokens"] > prompt_total + generated_minus_one


group_st = st.tuples(
    st.lists(st.integers(0, VOCAB - 1), min_size=1, max_size=14),    # prompt
    st.integers(1, 4),                                               # n
    st.integers(1, 9),                                               # max_new_tokens
    st.lists(st.integers(0, VOCAB - 1), max_size=1),                 # stop token ids
    st.lists(st.lists(st.integers(0, VOCAB - 1), min_size=2, max_size=2), max_size=1),  # stop sequences
    st.integers(0, 2**40),                                           # seed
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(groups=st.lists(group_st, min_size=1, max_size=6), bs=st.integers(1, 4), max_seqs=st.integers(1, 6),
       max_tokens=st.integers(1, 24), spare_blocks=st.integers(0, 12))
def test_random_workloads_keep_invariants_and_produce_the_closed_form_outputs(groups, bs, max_seqs, max_tokens,
                                                                              spare_blocks):
    # Tiny KV budgets: just enough for the longest single sequence, plus a few spare blocks.
    longest = max(-(-(len(p) + m - 1) // bs) for p, _, m, *_ in groups)
    outputs, stats = drive(longest + spare_blocks, bs, max_seqs, max_tokens, groups)
    check_outputs(groups, outputs, stats)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(workload=st.lists(st.tuples(group_st, st.integers(0, 7)), min_size=2, max_size=6), bs=st.integers(1, 4),
       max_seqs=st.integers(1, 6), max_tokens=st.integers(1, 24), spare_blocks=st.integers(0, 8))
def test_groups_added_mid_run_keep_invariants_and_produce_the_closed_form_outputs(workload, bs, max_seqs,
                                                                                  max_tokens, spare_blocks):
    # Continuous batching: each group arrives 0-7 half-steps after the previous one, so it lands
    # among running decodes and prefills (and between schedule() and update() at odd times).
    groups = [g for g, _ in workload]
    times = list(itertools.accumulate(gap for _, gap in workload))
    longest = max(-(-(len(p) + m - 1) // bs) for p, _, m, *_ in groups)
    outputs, stats = drive(longest + spare_blocks, bs, max_seqs, max_tokens, groups, arrivals=times)
    check_outputs(groups, outputs, stats)
    event(f"preempted: {stats['preemptions'] > 0}")
    event(f"a step mixed decodes and a prefill: {stats['mixed_steps'] > 0}")


def test_a_roomy_cache_never_preempts_and_prefills_each_prompt_once():
    rng = random.Random(0)
    groups = [([rng.randrange(VOCAB) for _ in range(rng.randint(1, 30))], rng.randint(1, 8), rng.randint(1, 12), [],
               [], rng.randrange(2**30)) for _ in range(12)]
    outputs, stats = drive(num_blocks=400, bs=4, max_seqs=64, max_tokens=64, groups=groups)
    assert stats["preemptions"] == 0
    check_outputs(groups, outputs, stats)


def test_a_tight_cache_preempts_and_still_gives_the_same_outputs():
    rng = random.Random(1)
    groups = [([rng.randrange(VOCAB) for _ in range(9)], 4, 12, [], [], rng.randrange(2**30)) for _ in range(5)]
    outputs, stats = drive(num_blocks=8, bs=4, max_seqs=16, max_tokens=32, groups=groups)
    assert stats["preemptions"] > 0
    check_outputs(groups, outputs, stats)


def test_fork_shares_full_prompt_blocks_and_copies_the_partial_one():
    sched = ops.Scheduler(num_blocks=16, block_size=4, max_num_seqs=8, max_num_batched_tokens=64)
    sched.add_group(0, [1, 2, 3, 4, 5, 1], n=3, max_new_tokens=5, seed=0)  # 6 tokens: 1 full + 1 partial block
    plan = schedule(sched)
    assert len(plan.input_ids) == 6 and plan.num_prefill_tokens == 6
    assert list(plan.logits_indices) == [5, 5, 5] and list(plan.sample_ids) == [0, 1, 2]
    full, partial = plan.block_tables[0, :2]
    assert sched.allocator.refcount(full) == 3 and sched.allocator.refcount(partial) == 3
    assert sched.allocator.num_free == 14
    sched.update(plan.sample_seq_ids, [0, 0, 0], [0.0] * 3, [0.0] * 3)
    plan = schedule(sched)
    # Two of the three samples copy the shared partial block; the last holder writes in place.
    assert len(plan.copy_src) == 2 and set(plan.copy_src) == {partial}
    assert len(set(plan.copy_dst)) == 2 and partial not in set(plan.copy_dst)
    assert sched.allocator.refcount(full) == 3 and sched.allocator.refcount(partial) == 1
    assert list(plan.positions) == [6, 6, 6] and plan.num_prefill_tokens == 0
    assert all(plan.block_tables[s, 0] == full for s in range(3))
    sched.check_invariants()


def test_the_allocator_property_is_a_snapshot_python_cannot_corrupt():
    sched = ops.Scheduler(num_blocks=8, block_size=4, max_num_seqs=4, max_num_batched_tokens=64)
    sched.add_group(0, [1, 2, 3, 4, 5], n=2, max_new_tokens=3, seed=0)
    plan = schedule(sched)
    held = int(plan.block_tables[0, 0])
    snapshot = sched.allocator
    assert snapshot.refcount(held) == 2 and snapshot.num_free == 6
    snapshot.decref(held)  # would free a block two sequences still use, were it the live allocator
    snapshot.decref(held)
    snapshot.allocate()
    assert sched.allocator.refcount(held) == 2 and sched.allocator.num_free == 6
    sched.check_invariants()


def test_one_step_mixes_decodes_and_a_prefill_chunk_within_the_token_budget():
    sched = ops.Scheduler(num_blocks=16, block_size=4, max_num_seqs=8, max_num_batched_tokens=8)
    sched.add_group(0, [1, 2, 3], n=2, max_new_tokens=6, seed=0)
    plan = schedule(sched)
    assert plan.num_prefill_tokens == 3 and len(plan.sample_seq_ids) == 2
    sched.update(plan.sample_seq_ids, [5, 4], [0.0] * 2, [0.0] * 2)
    sched.add_group(1, [1, 1, 2, 2, 3, 3, 4, 4, 5], n=1, max_new_tokens=4, seed=1)  # arrives while 0 decodes

    plan = schedule(sched)
    # Decodes first (the two samples feed back their generated tokens at position 3), then the new
    # prompt fills what the budget leaves: 6 of its 9 tokens, exactly 8 tokens in all.
    assert len(plan.input_ids) == 8  # the whole budget, and no more
    assert list(np.diff(plan.query_start_loc)) == [1, 1, 6]
    assert list(plan.input_ids[:2]) == [5, 4] and list(plan.positions[:2]) == [3, 3]
    assert list(plan.input_ids[2:]) == [1, 1, 2, 2, 3, 3] and list(plan.positions[2:]) == list(range(6))
    assert plan.num_prefill_tokens == 6
    # Only the decodes sample; a prefill chunk that stops short of the prompt's end yields nothing.
    assert list(plan.logits_indices) == [0, 1] and list(plan.sample_group_ids) == [0, 0]
    assert list(plan.sample_positions) == [4, 4]
    sched.update(plan.sample_seq_ids, [0, 0], [0.0] * 2, [0.0] * 2)

    plan = schedule(sched)
    # The prefill's last 3 tokens ride along with the next decodes and the new group samples at once.
    assert list(np.diff(plan.query_start_loc)) == [1, 1, 3] and plan.num_prefill_tokens == 3
    assert list(plan.positions[2:]) == [6, 7, 8]
    assert list(plan.logits_indices) == [0, 1, 4] and list(plan.sample_group_ids) == [0, 0, 1]
    sched.check_invariants()


def test_a_group_larger_than_max_num_seqs_decodes_in_turns():
    sched = ops.Scheduler(num_blocks=32, block_size=4, max_num_seqs=2, max_num_batched_tokens=8)
    sched.add_group(0, [1, 2, 3], n=5, max_new_tokens=3, seed=0)
    done, steps = [], 0
    while sched.has_unfinished():
        plan = schedule(sched)
        assert len(plan.context_lens) <= 2
        done += sched.update(plan.sample_seq_ids, [1] * len(plan.sample_seq_ids), [0.0] * len(plan.sample_seq_ids),
                             [0.0] * len(plan.sample_seq_ids))
        steps += 1
    assert sorted(f.sample_id for f in done) == [0, 1, 2, 3, 4]
    assert all(f.token_ids == [1, 1, 1] and f.finish_reason == "length" for f in done)


@pytest.mark.parametrize("kwargs, match", [
    (dict(prompt=[]), "prompt is empty"),
    (dict(n=0), r"n must be in \[1, 1048576\], got 0"),
    (dict(n=2**20 + 1), r"n must be in \[1, 1048576\], got 1048577 .* split a larger group"),
    (dict(max_new_tokens=0), "max_new_tokens must be >= 1"),
    (dict(prompt=[1] * 30, max_new_tokens=4), r"needs 9 KV blocks but the cache has only 8"),
    # prompt + max_new_tokens - 1 overflows int64: once accepted, the sequence then preempted itself forever
    (dict(max_new_tokens=2**63 - 1), r"max_new_tokens=9223372036854775807 needs 2305843009213693952 KV blocks"),
    (dict(prompt=[1, -3]), "negative"),
    (dict(stop_sequences=[[]]), "empty stop sequence"),
])
def test_add_group_rejects_bad_requests(kwargs, match):
    sched = ops.Scheduler(num_blocks=8, block_size=4, max_num_seqs=4, max_num_batched_tokens=16)
    args = dict(group_id=0, prompt=[1, 2], n=1, max_new_tokens=4, stop_token_ids=[], stop_sequences=[], seed=0)
    with pytest.raises(ValueError, match=match):
        sched.add_group(**{**args, **kwargs})


def test_a_live_group_id_cannot_be_reused_until_its_group_finishes():
    # Finished samples are reported by (group_id, sample_id): two live groups with one id would be ambiguous.
    sched = ops.Scheduler(num_blocks=8, block_size=4, max_num_seqs=4, max_num_batched_tokens=16)
    sched.add_group(7, [1, 2], n=2, max_new_tokens=1, seed=0)
    with pytest.raises(ValueError, match="group with this id has unfinished samples"):
        sched.add_group(7, [3], n=1, max_new_tokens=1, seed=0)
    plan = sched.schedule()
    done = sched.update(plan.sample_seq_ids.tolist(), [1, 1], [0.0, 0.0], [0.0, 0.0])
    assert len(done) == 2 and not sched.has_unfinished()
    sched.add_group(7, [3], n=1, max_new_tokens=1, seed=0)  # free again once it finished


def test_scheduler_rejects_more_blocks_than_int32_block_tables_hold():
    with pytest.raises(ValueError, match="num_blocks must be < 2\\*\\*31"):
        ops.Scheduler(num_blocks=2**31, block_size=4, max_num_seqs=4, max_num_batched_tokens=16)


@pytest.mark.parametrize("num_blocks, block_size", [(2**20, 2**11), (2, 2**62)])
def test_scheduler_rejects_more_cached_tokens_than_int32_context_lengths_hold(num_blocks, block_size):
    with pytest.raises(ValueError, match=r"num_blocks \* block_size = .* tokens must be < 2\*\*31"):
        ops.Scheduler(num_blocks=num_blocks, block_size=block_size, max_num_seqs=4, max_num_batched_tokens=16)
    ops.Scheduler(num_blocks=2**19, block_size=2**11, max_num_seqs=4, max_num_batched_tokens=16)  # 2**30 tokens: fine


def test_update_and_schedule_misuse_raise():
    sched = ops.Scheduler(num_blocks=8, block_size=4, max_num_seqs=4, max_num_batched_tokens=16)
    sched.add_group(0, [1, 2], 2, 4, [], [], 0)
    plan = schedule(sched)
    with pytest.raises(RuntimeError, match="call update"):
        schedule(sched)
    with pytest.raises(ValueError, match="same length"):
        sched.update(plan.sample_seq_ids, [1], [0.0], [0.0])
    with pytest.raises(ValueError, match="asked for 2"):
        sched.update([int(plan.sample_seq_ids[0])], [1], [0.0], [0.0])
    with pytest.raises(ValueError, match="not a sequence awaiting a sample"):
        sched.update([999, 998], [1, 1], [0.0, 0.0], [0.0, 0.0])
    with pytest.raises(ValueError, match="appears twice"):
        sched.update([int(plan.sample_seq_ids[0])] * 2, [1, 1], [0.0, 0.0], [0.0, 0.0])
    sched.update(plan.sample_seq_ids, [1, 1], [0.0, 0.0], [0.0, 0.0])  # state untouched by the failures
    sched.check_invariants()
    with pytest.raises(ValueError, match="max_num_seqs must be >= 1"):
        ops.Scheduler(8, 4, 0, 16)


def test_plan_fields_are_zero_copy_tensors_that_keep_the_plan_alive():
    sched = ops.Scheduler(num_blocks=8, block_size=4, max_num_seqs=4, max_num_batched_tokens=16)
    sched.add_group(0, [1, 2, 3, 4, 5], n=2, max_new_tokens=3, seed=0)
    plan = sched.schedule()
    ids, tables = plan.input_ids, plan.block_tables
    assert isinstance(ids, torch.Tensor) and ids.dtype == torch.int64 and tables.dtype == torch.int32
    assert ids.data_ptr() == plan.input_ids.data_ptr()  # the plan's own memory, not a copy per access
    del plan
    import gc
    gc.collect()
    sched.add_group(1, [9] * 7, n=1, max_new_tokens=2, seed=0)  # allocations that would reuse freed memory
    assert ids.tolist() == [1, 2, 3, 4, 5] and tables.shape == (1, 2)
