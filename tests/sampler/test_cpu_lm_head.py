"""The sampler's CPU LM head (oneDNN matmul): same logits as nn.Linear, active only inside sampler steps."""

import pytest
import torch

from alignkit.engine.sampler import Sampler, SamplingParams
from alignkit.engine.sampler.cpu_lm_head import cpu_linear_op, onednn_head, uses_onednn_head


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("shape", [(0, 64), (1, 64), (37, 64), (2, 5, 64)], ids=["0rows", "1row", "37rows", "3d"])
def test_cpu_linear_equals_f_linear(shape, bias):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(*shape, generator=g)
    w = torch.randn(1000, 64, generator=g)
    b = torch.randn(1000, generator=g) if bias else None
    got = cpu_linear_op()(x, w, b)
    assert got.shape == (*shape[:-1], 1000)
    torch.testing.assert_close(got, torch.nn.functional.linear(x, w, b), atol=1e-5, rtol=1e-5)


def test_only_plain_fp32_cpu_linears_take_the_onednn_path():
    assert uses_onednn_head(torch.nn.Linear(8, 16, bias=False))
    assert not uses_onednn_head(torch.nn.Linear(8, 16).to(torch.bfloat16))  # fp32 only: exact log-probs

    class Scaled(torch.nn.Linear):  # a subclass may compute something else: keep its own forward
        def forward(self, x):
            return 2 * super().forward(x)

    assert not uses_onednn_head(Scaled(8, 16))
    assert not uses_onednn_head(None)
    patched = torch.nn.Linear(8, 16)
    patched.forward = lambda x: x  # someone else's instance forward (hooks, a concurrent sampler)
    assert not uses_onednn_head(patched)


def test_autocast_and_mixed_dtypes_fall_back_to_f_linear():
    head = torch.nn.Linear(64, 300)
    x = torch.randn(5, 64)
    with onednn_head(head), torch.autocast("cpu", dtype=torch.bfloat16):
        got = head(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        want = torch.nn.functional.linear(x, head.weight, head.bias)
    assert got.dtype == want.dtype == torch.bfloat16
    torch.testing.assert_close(got, want)
    with onednn_head(head), pytest.raises(RuntimeError, match="dtype"):
        head(x.bfloat16())  # F.linear's own error for mismatched dtypes, not a oneDNN crash


def test_swap_is_undone_even_on_error():
    head = torch.nn.Linear(8, 16)
    with pytest.raises(RuntimeError, match="boom"):
        with onednn_head(head):
            assert "forward" in head.__dict__
            raise RuntimeError("boom")
    assert "forward" not in head.__dict__


def test_sampler_steps_run_the_head_through_onednn_and_restore_it(llama):
    head = llama.get_output_embeddings()
    assert uses_onednn_head(head)
    with torch.profiler.profile() as prof:
        Sampler(llama, block_size=4).generate([[5, 6, 7], [9] * 6], SamplingParams(n=3, max_new_tokens=4, seed=0))
    assert any(e.name == "alignkit::cpu_linear" for e in prof.events())
    assert "forward" not in head.__dict__  # training forwards use nn.Linear.forward again
