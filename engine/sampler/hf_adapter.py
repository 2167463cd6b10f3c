"""Drive any transformers decoder-only causal LM through the paged KV cache, without forking its code.

How: transformers looks attention up by name (`config._attn_implementation`) in
`AttentionInterface`, and forwards unknown keyword arguments of `model.forward` down to that
attention function. We register `alignkit_paged` there (and a mask builder that builds no
mask in `AttentionMaskInterface`: causality comes from the paged metadata), switch the model's
configs to it only while the sampler runs the model (one forward of a `stream`, a whole
`generate` call), and pass the step's
`PagedAttention` as the `alignkit_paged` keyword. `position_ids` carries each packed token's
position (rotary / learned embeddings); `logits_to_keep` (a 1-D index tensor) makes the
LM head run only on the rows that are sampled; on the CPU plain fp32 `nn.Linear` and Conv1D
(GPT-2) layers run through alignkit's decode kernels meanwhile (cpu_linear.py). Outside a sampler
call (and between the samples of a stream) the model keeps its own attention (sdpa/eager/flash)
and linear layers, so training is untouched.

The cache object is alignkit's `PagedAttention` (the step's block tables over the `KVCache`),
handed to the attention function as that keyword, not a transformers `Cache` passed as
`past_key_values`: a `Cache` describes a [batch, seq] grid of dense rows (its sequence length,
`cache_position` and the masks built from them), while a sampler step packs the new tokens of
many sequences at different lengths and positions into one row; the model runs with
`use_cache=False` and never sees a cache of its own.
"""

from __future__ import annotations

import inspect
from contextlib import contextmanager, nullcontext
from typing import Any, Iterator

import torch

from .attention import PagedAttention
from .cpu_linear import decode_linear_forward, decode_linears, is_conv1d

ATTN_NAME = "alignkit_paged"
_registered = False


def _no_mask(*args: Any, **kwargs: Any) -> None:
    """Mask builder for `alignkit_paged`: no dense mask, the kernel masks by position."""
    return None


def paged_attention_forward(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor,
                            value: torch.Tensor, attention_mask: torch.Tensor | None,
                            dropout: float = 0.0, scaling: float | None = None,
                            alignkit_paged: PagedAttention | None = None,
                            **kwargs: Any) -> tuple[torch.Tensor, None]:
    """AttentionInterface function: q/k/v [1, heads, T, head_dim] -> out [1, T, heads, head_dim]."""
    if alignkit_paged is None:
        raise RuntimeError(
            f"attention implementation {ATTN_NAME!r} was called without paged metadata: it is only "
            "active inside alignkit Sampler forwards. Do not set it on a model yourself; if you run the "
            "model from another thread while it samples, give that thread its own model copy. If a Sampler "
            f"was driving {type(module).__name__}, its layers do not pass keyword arguments on to the "
            "attention function (e.g. Falcon), so the paged cache cannot serve it: sample it with "
            "model.generate, or wrap it in an alignkit Runner.")
    for unsupported in ("softcap", "s_aux"):  # soft-capping, attention sinks: not in the kernel
        if kwargs.get(unsupported) is not None:
            raise NotImplementedError(f"paged attention does not support {unsupported!r} yet "
                                      f"({type(module).__name__}); sample this model with model.generate")
    layer_idx = getattr(module, "layer_idx", None)
    if layer_idx is None:
        raise RuntimeError(
            f"{type(module).__name__} has no `layer_idx`; the paged cache needs it to pick the layer's "
            "K/V blocks. Wrap this model in an alignkit Runner instead.")
    if query.shape[0] != 1:
        raise RuntimeError(f"paged attention expects the packed batch dimension 1, got {query.shape[0]}")
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    # [1, H, T, D] -> [T, H, D]: a free view for HF layouts that project to [T, H*D].
    out = alignkit_paged.attend(layer_idx, query[0].transpose(0, 1), key[0].transpose(0, 1),
                                value[0].transpose(0, 1), scale)
    return out.unsqueeze(0), None


def register_paged_attention() -> None:
    """Register `alignkit_paged` with transformers (idempotent)."""
    global _registered
    if _registered:
        return
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(ATTN_NAME, paged_attention_forward)
    AttentionMaskInterface.register(ATTN_NAME, _no_mask)
    _registered = True


def is_hf_causal_lm(model: object) -> bool:
    """Whether `model` looks like a transformers PreTrainedModel we can drive (without importing transformers)."""
    return hasattr(model, "config") and hasattr(model, "get_output_embeddings") \
        and hasattr(model.config, "_attn_implementation_internal")


class HFRunner:
    """`Runner` over a transformers decoder-only causal LM, sharing its parameters (no copy)."""

    def __init__(self, model: torch.nn.Module):
        config = model.config
        if getattr(config, "is_encoder_decoder", False):
            raise TypeError(f"{type(model).__name__} is an encoder-decoder model; the sampler drives "
                            "decoder-only causal LMs (e.g. LlamaForCausalLM, Qwen2ForCausalLM, GPT2LMHeadModel)")
        if model.get_output_embeddings() is None:
            raise TypeError(f"{type(model).__name__} has no LM head; pass the *ForCausalLM / *LMHeadModel "
                            "class (e.g. AutoModelForCausalLM), not the bare base model")
        text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
        # ALiBi models put their position biases into the attention mask, which the paged kernel
        # (positions come from the block tables) does not read: they would pass the layer count
        # in `forward` and still be sampled from the wrong distribution.
        if getattr(text_config, "alibi", False):
            raise NotImplementedError(
                f"{type(model).__name__} uses ALiBi position biases, which the paged attention kernel does "
                "not implement; sample it with model.generate, or wrap it in an alignkit Runner")
        # The paged kernel computes plain softmax attention; a model whose attention is soft-capped
        # would be sampled from a different distribution than its training forward computes.
        if getattr(text_config, "attn_logit_softcapping", None):
            raise NotImplementedError(
                f"{type(model).__name__} uses attention logit soft-capping "
                f"(attn_logit_softcapping={text_config.attn_logit_softcapping}), which the paged "
                "attention kernel does not implement yet; sample it with model.generate for now")
        self.model = model
        self.num_layers = int(text_config.num_hidden_layers)
        n_heads = int(text_config.num_attention_heads)
        self.num_kv_heads = int(getattr(text_config, "num_key_value_heads", None) or n_heads)
        head_dim = getattr(text_config, "head_dim", None)
        self.head_dim = int(head_dim) if head_dim else int(text_config.hidden_size) // n_heads
        max_pos = getattr(text_config, "max_position_embeddings", None)
        window = getattr(text_config, "sliding_window", None)
        if getattr(text_config, "use_sliding_window", True) is False:
            window = None
        layer_types = getattr(text_config, "layer_types", None)
        if layer_types and "sliding_attention" not in layer_types:
            window = None  # e.g. Qwen2 with max_window_layers >= its layers: no layer slides
        # Our kernel attends over the full context; with a sliding window that only equals the
        # model's attention while the context fits in the window, so cap lengths there.
        limits = [int(x) for x in (max_pos, window) if isinstance(x, int) and x > 0]
        self.max_context: int | None = min(limits) if limits else None
        # Every distinct config of the model and its sub-models (one attention switch each).
        configs = {id(config): config}
        for m in model.modules():
            c = getattr(m, "config", None)
            if c is not None and hasattr(c, "_attn_implementation_internal"):
                configs.setdefault(id(c), c)
        self._configs = list(configs.values())
        params = inspect.signature(model.forward).parameters
        self._logits_to_keep = "logits_to_keep" in params
        self._modules: list[torch.nn.Module] | None = None  # the model's modules, listed once per call
        self._compiled = False
        self._in_session = False  # inside session(): the paged mode is held by the caller
        self._routing_checked = False  # a compiled runner checks its first step, run eagerly
        self._linear_forwards: list[tuple[torch.nn.Module, Any]] = []  # (layer, its decode forward): refresh
        register_paged_attention()

    @property
    def vocab_size(self) -> int:
        """Rows of the LM head, read each call (resize_token_embeddings may change it)."""
        return int(self.model.get_output_embeddings().weight.shape[0])

    @property
    def dtype(self) -> torch.dtype:
        """Dtype of the model's parameters (the KV cache uses it)."""
        return next(self.model.parameters()).dtype

    @property
    def device(self) -> torch.device:
        """Device of the model's parameters (the KV cache lives there)."""
        return next(self.model.parameters()).device

    @contextmanager
    def _paged_mode(self) -> Iterator[None]:
        # Switch only for this forward (or a generate call: session) and always restore, so a training
        # forward between two sampler steps (e.g. while a `stream` is suspended) sees the model exactly as it was.
        saved = [c._attn_implementation_internal for c in self._configs]
        # Sampling is inference (no dropout): every module in train mode is switched off and
        # back on, one by one, so a model whose submodules are in mixed modes (a frozen part
        # kept in eval) gets each module's own mode back, which model.train() would not give.
        # The module list is walked once per `generate` call (refresh), not every step: ~0.6 us a
        # module, a quarter of a millisecond a step on a 32-layer model. The flags are written to
        # the instance dicts directly: nn.Module.__setattr__'s bookkeeping costs more per module.
        if self._modules is None:
            self.refresh()
        training = [m for m in self._modules if m.training]
        try:
            for c in self._configs:
                c._attn_implementation_internal = ATTN_NAME
            for m in training:
                m.__dict__["training"] = False
            with decode_linears(self._linear_forwards):
                yield
        finally:
            for c, s in zip(self._configs, saved):
                c._attn_implementation_internal = s
            for m in training:
                m.__dict__["training"] = True

    def refresh(self) -> None:
        """List the model's modules again (the Sampler calls it at the start of each call: adapters may have been added)."""
        self._modules = list(self.model.modules())
        # The decode forwards of the linear layers: kept per module across steps and calls (the
        # same function objects: torch.compile guards on them), made for a layer added since the
        # last call (a replaced projection or LM head, an adapter's nn.Linear), dropped for one
        # removed (not kept alive). By id: the old list holds its layers until it is replaced, so
        # no new layer can have an old one's id.
        kept = {id(m): f for m, f in self._linear_forwards}
        self._linear_forwards = [(m, kept.get(id(m)) or decode_linear_forward(m)) for m in self._modules
                                 if type(m) is torch.nn.Linear or is_conv1d(m)]

    def compile(self) -> None:
        """Run the model's step through `torch.compile` from now on (see `Sampler(compile=True)`)."""
        from .compiled_step import compile_step

        self._model_step = compile_step(self._model_step)
        self._compiled = True

    @contextmanager
    def session(self) -> Iterator[None]:
        """Hold the paged mode (and a compiled step's tracing settings) over several steps: a `generate` call.

        Each `forward` otherwise enters and leaves them itself (~0.2 ms a step in a rollout:
        the attention switch, the linear-layer swap, the compile settings). Nothing may run the
        model in between except through this runner (a `stream` consumer's code would: it releases
        them before each yield).
        """
        if self._in_session:
            yield
            return
        settings = self._model_step.tracing_settings() if self._compiled else nullcontext()
        with self._paged_mode(), settings:
            self._in_session = True
            try:
                yield
            finally:
                self._in_session = False

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor,
                attn: PagedAttention) -> torch.Tensor:
        """One packed step through the HF model; float32 logits [R, vocab] for `attn.logits_indices`."""
        # The switch stays outside the (possibly compiled) step: it is a side effect on the
        # model's configs that must always be undone, not something to trace.
        with self.session():
            if self._compiled and self._routing_checked:
                return self._model_step(input_ids, positions, attn)
            # Eager steps (and a compiled runner's first one) count the layers that attended through
            # the paged cache: a layer that ran attention of its own would see only this step's
            # packed tokens, and its samples would be wrong.
            attn.layers_attended = 0
            logits = type(self)._model_step(self, input_ids, positions, attn)
            if attn.layers_attended != self.num_layers:
                raise NotImplementedError(
                    f"{type(self.model).__name__}: {attn.layers_attended} paged-attention calls in a step of its "
                    f"{self.num_layers} layers (one each expected): its layers do not all attend through "
                    "transformers' attention interface (attention of their own, or layers without attention), "
                    "so the paged KV cache cannot serve it. Sample this model with model.generate, or wrap it "
                    "in an alignkit Runner")
            self._routing_checked = True
            if self._compiled:
                # Run the step again compiled, so that the K/V it leaves in the cache (the same slots,
                # overwritten) and its logits are the compiled ones: eager and compiled steps agree
                # only to rounding, and a seeded call must give what the next identical call gives.
                logits = self._model_step(input_ids, positions, attn)
            return logits

    def _model_step(self, input_ids: torch.Tensor, positions: torch.Tensor,
                    attn: PagedAttention) -> torch.Tensor:
        kwargs: dict[str, Any] = dict(input_ids=input_ids.unsqueeze(0), position_ids=positions.unsqueeze(0),
                                      use_cache=False, alignkit_paged=attn)
        if self._logits_to_keep:
            kwargs["logits_to_keep"] = attn.logits_indices
        logits = self.model(**kwargs).logits[0]
        if not self._logits_to_keep:
            logits = logits.index_select(0, attn.logits_indices)
        return logits.float()
