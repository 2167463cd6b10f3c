"""The sampler's CPU linear layers (alignkit's decode kernel): same outputs as nn.Linear, active only in steps."""

import pytest
import torch

import alignkit.engine.sampler.cpu_linear as cl
from alignkit.engine.sampler import Sampler, SamplingParams
from alignkit.engine.sampler.cpu_linear import (cpu_linear_op, decode_linear_forward, decode_linears, is_conv1d,
                                                runs_decode_kernel)

from .tiny_models import VOCAB, build


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("shape", [(0, 64), (1, 64), (37, 64), (2, 5, 64), (4099, 64), (64,)],
                         ids=["0rows", "1row", "37rows", "3d", "prefill_rows", "1d"])
def test_cpu_linear_op_equals_f_linear(shape, bias):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(*shape, generator=g)
    w = torch.randn(1000, 64, generator=g)
    b = torch.randn(1000, generator=g) if bias else None
    got = cpu_linear_op()(x, w, b)
    assert got.shape == (*shape[:-1], 1000)
    torch.testing.assert_close(got, torch.nn.functional.linear(x, w, b), atol=1e-5, rtol=1e-5)


def test_only_plain_fp32_cpu_linears_run_the_decode_kernel():
    assert runs_decode_kernel(torch.nn.Linear(8, 16, bias=False))
    assert runs_decode_kernel(torch.nn.Linear(8, 16))
    assert not runs_decode_kernel(torch.nn.Linear(8, 16).to(torch.bfloat16))  # fp32 only: exact log-probs

    class Scaled(torch.nn.Linear):  # a subclass may compute something else: keep its own forward
        def forward(self, x):
            return 2 * super().forward(x)

    assert not runs_decode_kernel(Scaled(8, 16))
    assert not runs_decode_kernel(torch.nn.Embedding(8, 16))
    patched = torch.nn.Linear(8, 16)
    patched.forward = lambda x: x  # someone else's instance forward (hooks, a concurrent sampler)
    assert not runs_decode_kernel(patched)


def test_autocast_and_mixed_dtypes_fall_back_to_f_linear():
    layer = torch.nn.Linear(64, 300)
    x = torch.randn(5, 64)
    with decode_linears([(layer, decode_linear_forward(layer))]), torch.autocast("cpu", dtype=torch.bfloat16):
        got = layer(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        want = torch.nn.functional.linear(x, layer.weight, layer.bias)
    assert got.dtype == want.dtype == torch.bfloat16
    torch.testing.assert_close(got, want)
    with decode_linears([(layer, decode_linear_forward(layer))]), pytest.raises(RuntimeError, match="dtype"):
        layer(x.bfloat16())  # F.linear's own error for mismatched dtypes, not a kernel error


def test_a_forward_that_needs_gradients_runs_f_linear():
    layer = torch.nn.Linear(16, 8)
    x = torch.randn(3, 16)
    with decode_linears([(layer, decode_linear_forward(layer))]):
        y = layer(x)  # grad mode on, parameters require grad: autograd must see the op
    assert y.grad_fn is not None
    y.sum().backward()
    torch.testing.assert_close(layer.weight.grad, torch.ones(3, 8).T @ x)


def test_a_replaced_lm_head_is_served_and_the_old_one_released(models_dir, monkeypatch):
    import gc
    import weakref

    model = build("llama", models_dir)
    sampler = Sampler(model, block_size=4)
    params = SamplingParams(n=2, max_new_tokens=3, seed=0)
    sampler.generate([[5, 6, 7]], params)
    old_head = weakref.ref(model.get_output_embeddings())
    model.resize_token_embeddings(VOCAB + 8)  # a new lm_head module
    seen = set()
    compute = cl._cpu_linear
    monkeypatch.setattr(cl, "_cpu_linear", lambda x, w, b: seen.add(w.data_ptr()) or compute(x, w, b))
    sampler.generate([[5, 6, 7]], params)
    assert model.get_output_embeddings().weight.data_ptr() in seen
    gc.collect()
    assert old_head() is None


def test_swap_is_undone_even_on_error_and_skips_ineligible_layers():
    plain, half = torch.nn.Linear(8, 16), torch.nn.Linear(8, 16).half()
    pairs = [(m, decode_linear_forward(m)) for m in (plain, half)]
    with pytest.raises(RuntimeError, match="boom"):
        with decode_linears(pairs):
            assert "forward" in plain.__dict__ and "forward" not in half.__dict__
            raise RuntimeError("boom")
    assert "forward" not in plain.__dict__


@pytest.mark.parametrize("model_name,kernel,is_layer", [
    ("llama", "_cpu_linear", lambda m: type(m) is torch.nn.Linear),  # the LM head and every projection
    ("gpt2", "_cpu_linear_kn", is_conv1d),  # GPT-2's projections (its LM head is an nn.Linear)
])
def test_sampler_steps_run_every_linear_through_the_kernel_and_restore_them(model_name, kernel, is_layer,
                                                                             models_dir, monkeypatch):
    model = build(model_name, models_dir)
    seen = set()
    compute = getattr(cl, kernel)

    def counting(x, w, b):
        seen.add(w.data_ptr())
        return compute(x, w, b)

    monkeypatch.setattr(cl, kernel, counting)
    Sampler(model, block_size=4).generate([[5, 6, 7], [9] * 6], SamplingParams(n=3, max_new_tokens=4, seed=0))
    layers = [m for m in model.modules() if is_layer(m)]
    assert layers and seen == {m.weight.data_ptr() for m in layers}
    assert all("forward" not in m.__dict__ for m in layers)  # training forwards use the module's own again


@pytest.mark.parametrize("model_name", ["llama", "qwen2", "gpt2"])
def test_samples_and_logprobs_are_bitwise_batch_invariant(model_name, models_dir):
    """A sequence's tokens and log-probs are bitwise the same whatever it is batched with."""
    model = build(model_name, models_dir)
    g = torch.Generator().manual_seed(3)
    prompts = [torch.randint(3, VOCAB, (n,), generator=g).tolist() for n in (7, 13, 4, 9)]
    params = SamplingParams(n=3, temperature=1.0, max_new_tokens=14, seed=123)
    prompts += [torch.randint(3, VOCAB, (120,), generator=g).tolist() for _ in range(3)]  # a 400-token prefill step
    runs = []
    for config in (dict(max_num_seqs=64), dict(max_num_seqs=1, max_num_batched_tokens=5),
                   dict(max_num_seqs=7, max_num_batched_tokens=16)):
        groups = Sampler(model, block_size=4, **config).generate(prompts, params)
        runs.append([(s.token_ids, s.logprobs, s.raw_logprobs) for grp in groups for s in grp.samples])
    assert runs[1] == runs[0] and runs[2] == runs[0]  # exact equality, not a tolerance


def conv1d(nx: int, nf: int) -> torch.nn.Module:
    from transformers.pytorch_utils import Conv1D

    layer = Conv1D(nf, nx)
    torch.nn.init.normal_(layer.weight)
    torch.nn.init.normal_(layer.bias)
    return layer


@pytest.mark.parametrize("shape", [(0, 64), (1, 64), (37, 64), (2, 5, 64)], ids=["0rows", "1row", "37rows", "3d"])
def test_conv1d_forward_equals_its_own(shape):
    layer = conv1d(64, 300)
    x = torch.randn(*shape)
    want = layer(x).detach()
    cpu_linear_op()  # registers cpu_linear_kn too
    with torch.inference_mode():
        torch.testing.assert_close(torch.ops.alignkit.cpu_linear_kn(x, layer.weight, layer.bias), want,
                                   atol=1e-5, rtol=1e-5)
        with decode_linears([(layer, decode_linear_forward(layer))]):
            got = layer(x)
    assert "forward" not in layer.__dict__
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_conv1d_is_recognised_and_its_training_forward_keeps_autograd():
    layer = conv1d(16, 8)
    assert is_conv1d(layer) and runs_decode_kernel(layer)
    assert not runs_decode_kernel(conv1d(16, 8).to(torch.bfloat16))
    x = torch.randn(3, 16)
    with decode_linears([(layer, decode_linear_forward(layer))]):
        y = layer(x)  # grad mode on: Conv1D's own addmm, recorded by autograd
    y.sum().backward()
    assert layer.weight.grad is not None and layer.bias.grad is not None
