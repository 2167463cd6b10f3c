"""The HF adapter: paged forwards equal full forwards, and the model is untouched afterwards."""

import pytest
import torch

from alignkit.engine.sampler import Sampler, SamplingParams
from alignkit.engine.sampler.hf_adapter import HFRunner
from alignkit.engine.sampler.kv_cache import KVCache

from . import torch_reference
from .step_driver import plan_step
from .tiny_models import VOCAB


def _ops(name):
    if name == "torch_reference":
        return torch_reference
    import alignkit._sampler as ext
    return ext


def _full_last_logits(model, tokens):
    with torch.no_grad():
        return model(torch.tensor([tokens])).logits[0, -1].float()


@pytest.mark.parametrize("ops_name", ["torch_reference", "cpp"])
def test_paged_steps_match_full_forward_with_chunked_prefill_and_mixed_decode(any_model, ops_name):
    ops = _ops(ops_name)
    runner = HFRunner(any_model)
    cache = KVCache.allocate(num_layers=runner.num_layers, num_kv_heads=runner.num_kv_heads,
                             head_dim=runner.head_dim, num_blocks=3 * 4, block_size=4,
                             dtype=runner.dtype, device=runner.device)
    g = torch.Generator().manual_seed(0)
    seqs = [torch.randint(3, VOCAB, (n,), generator=g).tolist() for n in (9, 5, 2)]
    cached = [0, 0, 0]
    # Step 1: seq 0 prefills 6 of its 9 tokens (a chunk), seq 1 prefills fully, seq 2 waits.
    # Step 2: seq 0 finishes its prefill, seq 1 decodes, seq 2 prefills.  Steps 3-5: all decode.
    schedule = [[(0, 6), (1, 5)], [(0, 3), (1, 1), (2, 2)], [(0, 1), (1, 1), (2, 1)],
                [(0, 1), (1, 1), (2, 1)], [(2, 1), (0, 1)]]
    for step in schedule:
        feeds = []
        for s, n in step:
            if cached[s] + n > len(seqs[s]):  # decode: append the greedy token of the last step
                seqs[s].append(int(next_tok[s]))
            feeds.append((s, seqs[s][cached[s]:cached[s] + n], cached[s]))
        ids, pos, attn = plan_step(cache, ops, feeds, max_blocks=4)
        with torch.inference_mode():
            logits = runner.forward(ids, pos, attn)
        assert logits.shape == (len(step), VOCAB) and logits.dtype == torch.float32
        next_tok = {}
        for row, (s, n) in enumerate(step):
            cached[s] += n
            expected = _full_last_logits(any_model, seqs[s][:cached[s]])
            torch.testing.assert_close(logits[row], expected, atol=2e-5, rtol=1e-5)
            next_tok[s] = logits[row].argmax()


def test_training_forward_after_generate_is_unchanged_and_train_mode_restored(llama):
    model = llama
    model.train()
    impl_before = model.config._attn_implementation
    x = torch.randint(3, VOCAB, (2, 7), generator=torch.Generator().manual_seed(1))
    mask = torch.tensor([[1] * 7, [0, 0] + [1] * 5])

    def train_forward():
        model.zero_grad()
        out = model(x, attention_mask=mask, labels=x)
        out.loss.backward()
        return out.logits.detach().clone(), model.model.layers[0].self_attn.q_proj.weight.grad.clone()

    logits_a, grad_a = train_forward()
    Sampler(model, block_size=4).generate([[5, 6, 7], [9] * 6], SamplingParams(n=2, max_new_tokens=5, seed=0))
    assert model.training, "the sampler must restore train mode"
    assert model.config._attn_implementation == impl_before
    logits_b, grad_b = train_forward()
    model.zero_grad()
    model.eval()
    assert torch.equal(logits_a, logits_b)
    assert torch.equal(grad_a, grad_b)


def test_a_linear_layer_put_in_between_calls_runs_the_decode_kernel_and_the_old_one_is_let_go(models_dir):
    """Each call sees a replaced projection: the new layer runs the (batch-invariant) decode kernel too."""
    import gc
    import weakref

    from .tiny_models import build

    model = build("llama", models_dir)
    sampler = Sampler(model, block_size=4)
    params = SamplingParams(n=2, max_new_tokens=4, seed=0)
    sampler.generate([[5, 6, 7]], params)
    mlp = model.model.layers[0].mlp
    old = mlp.down_proj
    new = torch.nn.Linear(old.in_features, old.out_features, bias=False)
    with torch.no_grad():
        new.weight.copy_(old.weight)
    mlp.down_proj = new
    swapped = []
    new.register_forward_pre_hook(lambda module, args: swapped.append("forward" in module.__dict__))
    sampler.generate([[5, 6, 7]], params)
    assert swapped and all(swapped)  # every step ran the layer through the decode kernel
    assert "forward" not in new.__dict__  # and gave it its own forward back
    gone = weakref.ref(old)
    del old
    gc.collect()
    assert gone() is None  # the sampler keeps no reference to the replaced layer


def test_paged_attention_called_without_metadata_raises(llama):
    from alignkit.engine.sampler.hf_adapter import paged_attention_forward
    q = torch.zeros(1, 4, 3, 16)
    with pytest.raises(RuntimeError, match="only active inside alignkit Sampler"):
        paged_attention_forward(llama.model.layers[0].self_attn, q, q, q, None)


def test_encoder_decoder_or_headless_model_is_rejected(llama):
    with pytest.raises(TypeError, match="no LM head"):
        HFRunner(llama.model)


def test_sliding_window_caps_the_context(models_dir):
    from .tiny_models import build
    mistral = build("mistral", models_dir)
    assert HFRunner(mistral).max_context == 128  # window 128 < max_position_embeddings 256
    with pytest.raises(ValueError, match=r"exceeds the model's context of 128"):
        Sampler(mistral).generate([[5] * 100], SamplingParams(max_new_tokens=29))


@pytest.mark.parametrize("root_training", [False, True])
def test_each_module_gets_its_own_train_or_eval_mode_back_and_sampling_runs_without_dropout(tmp_path, root_training):
    from .tiny_models import build
    model = build("gpt2", tmp_path)
    model.config.resid_pdrop = model.transformer.h[0].mlp.dropout.p = 0.5  # dropout that would show
    # An eval model with one block in train mode, or a training model with a frozen block in eval:
    # model.train() afterwards would flip the frozen block back to train.
    model.train(root_training)
    model.transformer.h[0].train(not root_training)
    if root_training:
        model.transformer.h[1].mlp.dropout.p = 0.5
    modes = {name: m.training for name, m in model.named_modules()}
    sampler = Sampler(model, block_size=4)
    runs = [sampler.generate([[5, 6, 7]], SamplingParams(max_new_tokens=6, temperature=0))[0].samples[0]
            for _ in range(3)]
    assert {name: m.training for name, m in model.named_modules()} == modes  # model.train() would flip them all
    assert all(r.token_ids == runs[0].token_ids and r.logprobs == runs[0].logprobs for r in runs)


def test_a_layer_whose_attention_bypasses_the_paged_cache_is_caught_eager_and_compiled(tmp_path):
    from .tiny_models import build
    model = build("llama", tmp_path)
    attn = model.model.layers[1].self_attn
    attn.forward = lambda hidden_states, *a, **k: (hidden_states * 0, None)  # e.g. remote code with its own attention
    for compile in (False, True):
        with pytest.raises(NotImplementedError, match=r"1 paged-attention calls in a step of its 2 layers \(one each expected\)"):
            Sampler(model, compile=compile).generate([[5, 6]], SamplingParams(max_new_tokens=2))


def test_the_vocabulary_follows_resize_token_embeddings(tmp_path):
    from .tiny_models import build
    model = build("llama", tmp_path)
    sampler = Sampler(model, block_size=4)
    model.resize_token_embeddings(VOCAB + 7, mean_resizing=False)
    got = sampler.generate([[VOCAB + 3, 5]], SamplingParams(max_new_tokens=3, stop_token_ids=[VOCAB + 6]))[0]
    assert len(got.samples[0].token_ids) == 3  # the new ids are accepted as prompt and stop tokens
    model.resize_token_embeddings(VOCAB - 20, mean_resizing=False)
    with pytest.raises(ValueError, match=rf"token id {VOCAB - 10} outside the model's vocabulary \[0, {VOCAB - 20}\)"):
        sampler.generate([[VOCAB - 10]], SamplingParams(max_new_tokens=3))


def test_a_sliding_window_config_whose_layers_all_attend_fully_does_not_cap_the_context():
    import transformers as tf
    cfg = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
               num_key_value_heads=1, max_position_embeddings=256, use_sliding_window=True, sliding_window=16)
    assert HFRunner(tf.Qwen2ForCausalLM(tf.Qwen2Config(**cfg, max_window_layers=2))).max_context == 256
    assert HFRunner(tf.Qwen2ForCausalLM(tf.Qwen2Config(**cfg, max_window_layers=1))).max_context == 16
