"""The inductor pass that runs linear layers sharing an input as one `alignkit::cpu_linear_group` call."""

import pytest
import torch
from torch.fx.experimental.proxy_tensor import make_fx

from alignkit.engine.sampler.cpu_linear import cpu_linear_op
from alignkit.engine.sampler.linear_grouping import GroupLinearsOnSharedInput


def _step(x, wq, wk, wv, bv, wo, w_scaled):
    linear = torch.ops.alignkit.cpu_linear
    q, k, v = linear(x, wq, None), linear(x, wk, None), linear(x, wv, bv)  # one input: grouped
    o = linear(q + k + v, wo, None)  # another input, alone: left as it is
    s = linear(x, w_scaled * 2, None)  # a weight computed in the graph: left as it is
    return o, s


def _targets(gm):
    return [n.target for n in gm.graph.nodes if n.op == "call_function"]


def test_layers_on_one_input_become_one_group_call_with_the_same_bits():
    cpu_linear_op()
    g = torch.Generator().manual_seed(0)
    args = (torch.randn(5, 16, generator=g), torch.randn(8, 16, generator=g), torch.randn(8, 16, generator=g),
            torch.randn(8, 16, generator=g), torch.randn(8, generator=g), torch.randn(16, 8, generator=g),
            torch.randn(4, 16, generator=g))
    want = _step(*args)
    gm = make_fx(_step)(*args)
    assert _targets(gm).count(torch.ops.alignkit.cpu_linear.default) == 5
    GroupLinearsOnSharedInput()(gm.graph)
    gm.graph.lint()  # still topologically ordered
    gm.recompile()
    targets = _targets(gm)
    assert targets.count(torch.ops.alignkit.cpu_linear_group.default) == 1
    assert targets.count(torch.ops.alignkit.cpu_linear.default) == 2  # o and s stay single
    group = next(n for n in gm.graph.nodes if n.target is torch.ops.alignkit.cpu_linear_group.default)
    assert [w.name for w in group.args[1]] == ["wq_1", "wk_1", "wv_1"]
    got = gm(*args)
    assert all(torch.equal(a, b) for a, b in zip(got, want))


def _chained(x, w1, w2, w3, w4):
    linear = torch.ops.alignkit.cpu_linear
    a, b = linear(x, w1, None), linear(x, w2, None)  # a group whose first output ...
    return linear(a, w3, None), linear(a, w4, None), b  # ... is the shared input of the next group


def test_a_group_may_read_an_earlier_groups_output():
    cpu_linear_op()
    g = torch.Generator().manual_seed(2)
    args = (torch.randn(3, 8, generator=g), *(torch.randn(8, 8, generator=g) for _ in range(4)))
    want = _chained(*args)
    gm = make_fx(_chained)(*args)
    GroupLinearsOnSharedInput()(gm.graph)
    gm.graph.lint()  # the second group reads the rewired first output, not the erased node
    gm.recompile()
    assert _targets(gm).count(torch.ops.alignkit.cpu_linear_group.default) == 2
    assert torch.ops.alignkit.cpu_linear.default not in _targets(gm)
    assert all(torch.equal(a, b) for a, b in zip(gm(*args), want))


@pytest.mark.parametrize("shape", [(5, 16), (1, 5, 16)])
def test_group_op_equals_one_call_per_layer(shape):
    cpu_linear_op()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(*shape, generator=g)
    ws, bs = [torch.randn(n, 16, generator=g) for n in (16, 8)], [None, torch.randn(8, generator=g)]
    outs = torch.ops.alignkit.cpu_linear_group(x, ws, bs)
    for out, w, b in zip(outs, ws, bs):
        assert out.shape == (*shape[:-1], w.shape[0])
        assert torch.equal(out, torch.ops.alignkit.cpu_linear(x, w, b))
