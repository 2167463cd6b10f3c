"""On CPU, a sampler forward runs the model's fp32 `nn.Linear` (and Conv1D) layers through alignkit's decode kernels.

A decode step multiplies a few rows (one per live sequence) by every weight of the model. torch's
fp32 sgemm (MKL) re-packs the whole weight on every call, which only pays off over many rows;
`alignkit._sampler.linear` reads the weight where it is, row by row (linear.h). Measured on an
AVX2 2-vCPU VM, 2 threads, MKL / oneDNN / ours in us: 704x256 at 8 rows 88 / 152 / 33, at 128 rows
389 / 418 / 344; the 4096x256 head at 8 rows 410 / 343 / 158; a 151936x896 head at 8 rows
130648 / 55718 / 38485. On an AVX-512 VM (2 threads, caches hot) MKL / ours: 704x256 at 16 rows
40 / 29 us, at 56 rows 78 / 87, at 128 rows 157 / 209; in a whole rollout the two are within
noise there. Prefill steps (hundreds of rows) are taken a chunk of rows at a time.

Each row's result is bitwise independent of the other rows of the step (the kernel sums in a
fixed order), so what a sequence samples does not depend on what it was batched with. GPT-2's
projections are transformers' Conv1D, whose weight is stored [in, out]: they run through
`alignkit._sampler.linear_kn` (one multiply-add chain per output, lanes along the output
features), batch-invariant the same way. That costs speed against MKL, which packs its operands:
on the AVX-512 VM, 56 rows x 768 x 2304 take 1137 us (MKL 849), and a GPT-2 (d=256, 4 layers)
rollout of the benchmark's workload runs at 0.93-0.97x the tokens/s it has with `addmm`.

The swap is active only inside a sampler forward (a `generate` call holds it over all its
steps), like the attention switch: training forwards use the module's own forward, and a forward
that needs gradients falls back to `F.linear` (Conv1D: its own `addmm`). It reads the module's
parameters at call time (no copy, no packed cache), so a training step is visible to the next
sampler step. Inside `torch.compile` each layer is one call of
the op `alignkit::cpu_linear` (Conv1D: `alignkit::cpu_linear_kn`), and layers that read the same
input are then grouped into one `alignkit::cpu_linear_group` call (linear_grouping.py).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Callable, Iterator, Sequence

import torch
import torch.nn.functional as F

from .custom_ops import define_op, registered_once
from .kernels import as_capsule

_kernels: dict[str, Callable[..., None]] = {}  # alignkit._sampler's linear kernels, by name (_kernel)


def _kernel(name: str) -> Callable[..., None]:
    """The extension's `name` kernel (alignkit._sampler, imported on first use)."""
    kernel = _kernels.get(name)
    if kernel is None:
        import alignkit._sampler as ext

        kernel = _kernels[name] = getattr(ext, name)
    return kernel


def _run(name: str, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
         out_features: int) -> torch.Tensor:
    """The extension's `name` kernel on x [..., in] -> [..., out_features]."""
    rows = x if x.dim() == 2 else x.reshape(-1, x.shape[-1])
    out = rows.new_empty((rows.shape[0], out_features))
    # Called once per layer per step: the extension directly, tensors as DLPack capsules (kernels.py).
    _kernel(name)(as_capsule(out), as_capsule(rows.contiguous()), as_capsule(weight), as_capsule(bias))
    return out if x.dim() == 2 else out.view(*x.shape[:-1], out_features)


def _cpu_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """x @ weight.T (+ bias) for fp32 CPU tensors, weight [out, in] (nn.Linear)."""
    return _run("linear", x, weight, bias, weight.shape[0])


def _cpu_linear_kn(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """x @ weight (+ bias) for fp32 CPU tensors, weight [in, out] (transformers' Conv1D, GPT-2)."""
    return _run("linear_kn", x, weight, bias, weight.shape[1])


def _cpu_linear_group(x: torch.Tensor, weights: list[torch.Tensor],
                      biases: list[torch.Tensor | None]) -> list[torch.Tensor]:
    """[x @ w.T (+ b) for each layer] in one kernel call (layers on the same input: q/k/v, gate/up)."""
    rows = (x if x.dim() == 2 else x.reshape(-1, x.shape[-1])).contiguous()
    outs = [rows.new_empty((rows.shape[0], w.shape[0])) for w in weights]
    _kernel("linear_group")([as_capsule(o) for o in outs], as_capsule(rows), [as_capsule(w) for w in weights],
                            [as_capsule(b) for b in biases])
    return outs if x.dim() == 2 else [o.view(*x.shape[:-1], o.shape[1]) for o in outs]


def _register_cpu_linear() -> Any:
    """`torch.ops.alignkit.cpu_linear`, `cpu_linear_kn` and `cpu_linear_group` (on the first `cpu_linear_op()` call)."""
    schema = "(Tensor x, Tensor weight, Tensor? bias) -> Tensor"

    def fake_kn(x, weight, bias):
        return x.new_empty((*x.shape[:-1], weight.shape[1]))

    def fake(x, weight, bias):
        return x.new_empty((*x.shape[:-1], weight.shape[0]))

    def fake_group(x, weights, biases):
        return [x.new_empty((*x.shape[:-1], w.shape[0])) for w in weights]

    define_op("cpu_linear_kn", schema, _cpu_linear_kn, fake_kn)
    # Not called by model code: compiled steps group cpu_linear calls into it (linear_grouping.py).
    define_op("cpu_linear_group", "(Tensor x, Tensor[] weights, Tensor?[] biases) -> Tensor[]", _cpu_linear_group,
              fake_group)
    return define_op("cpu_linear", schema, _cpu_linear, fake)


cpu_linear_op = registered_once(_register_cpu_linear)


def is_conv1d(module: Any) -> bool:
    """transformers' Conv1D (GPT-2's projections: a linear layer whose weight is stored [in, out]).

    Recognised by name, so this module does not import transformers.
    """
    cls = type(module)
    return cls.__name__ == "Conv1D" and cls.__module__ in ("transformers.pytorch_utils", "transformers.modeling_utils")


def decode_linear_forward(module: torch.nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """A forward for an `nn.Linear` or Conv1D `module` that computes its output with the decode kernels."""
    params = module._parameters  # read at call time: a training step or a reassigned weight is seen
    conv1d = is_conv1d(module)

    def forward(x: torch.Tensor) -> torch.Tensor:
        w, b = params["weight"], params.get("bias")
        if x.dtype != w.dtype or torch.is_autocast_enabled("cpu") or torch.is_grad_enabled():
            # torch's own op casts, raises its own dtype error, or records autograd
            if conv1d:  # what Conv1D.forward computes
                rows = x.reshape(-1, x.shape[-1])
                out = torch.addmm(b, rows, w) if b is not None else rows @ w
                return out.view(*x.shape[:-1], w.shape[1])
            return F.linear(x, w, b)
        if torch.compiler.is_compiling():  # one graph node (registered by compile_step)
            return torch.ops.alignkit.cpu_linear_kn(x, w, b) if conv1d else torch.ops.alignkit.cpu_linear(x, w, b)
        return _cpu_linear_kn(x, w, b) if conv1d else _cpu_linear(x, w, b)  # eager: skip the dispatcher

    return forward


def runs_decode_kernel(module: Any) -> bool:
    """Whether a sampler step runs this layer through a decode kernel: a plain fp32 `nn.Linear` or Conv1D on the CPU."""
    if not (type(module) is torch.nn.Linear or is_conv1d(module)) or "forward" in module.__dict__:
        return False  # subclasses, patched modules: as they are
    params = module._parameters  # not module.weight: nn.Module.__getattr__ is slow, and this runs per layer per step
    w, b = params["weight"], params.get("bias")
    return w is not None and w.is_cpu and w.dtype is torch.float32 and w.ndim == 2 and w.is_contiguous() \
        and (b is None or (b.dtype is torch.float32 and b.is_contiguous()))


@contextmanager
def decode_linears(forwards: Sequence[tuple[torch.nn.Module, Callable[..., Any]]]) -> Iterator[None]:
    """Within the block, each eligible module of (module, forward) pairs runs `forward` instead of its own."""
    swapped = []
    try:
        for module, forward in forwards:
            if runs_decode_kernel(module):  # checked at every swap: the model may have moved or been cast
                # The instance dict directly: nn.Module.__setattr__'s bookkeeping costs ~5 us a layer.
                module.__dict__["forward"] = forward
                swapped.append(module)
        yield
    finally:
        for module in swapped:
            module.__dict__.pop("forward", None)
