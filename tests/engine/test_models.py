"""Model loading: only declared models, pad token handling, clear errors for missing paths."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from alignkit.engine import models
from alignkit.engine.config import load_config


def test_tokenizer_without_pad_gets_eos_and_right_padding(tmp_path, tiny_tokenizer_factory):
    tok = tiny_tokenizer_factory()
    tok.pad_token = None
    tok.padding_side = "left"
    tok.save_pretrained(tmp_path)
    loaded = models.load_tokenizer(str(tmp_path))
    assert loaded.pad_token_id == loaded.eos_token_id == 3
    assert loaded.padding_side == "right"


def test_reference_is_frozen_in_eval_mode_and_defaults_to_the_policy_path(tiny_lm):
    cfg = load_config(None, [f"model.path={tiny_lm.path}"])
    ref = models.load_reference(cfg, torch.float32, torch.device("cpu"))
    assert not ref.training and not any(p.requires_grad for p in ref.parameters())


def test_reward_policy_is_a_one_output_classifier_with_a_pad_id(tiny_lm):
    cfg = load_config(None, [f"model.path={tiny_lm.path}", "algo.name=reward_model"])
    from alignkit.algorithms import get_objective

    model = models.load_policy(cfg, get_objective("reward_model").needs, str(tiny_lm.path), torch.float32,
                               torch.device("cpu"), pad_token_id=0)
    assert model.config.num_labels == 1 and model.config.pad_token_id == 0
    assert model(input_ids=torch.tensor([[2, 30, 31]])).logits.shape == (1, 1)


@pytest.mark.parametrize("key", ["model.ref_path", "model.reward_path", "model.value_path"])
def test_missing_model_directories_name_path_and_key(tmp_path, tiny_lm, key):
    missing = tmp_path / "nowhere"
    cfg = load_config(None, [f"model.path={tiny_lm.path}", f"{key}={missing}"])
    load = {"model.ref_path": lambda: models.load_reference(cfg, torch.float32, torch.device("cpu")),
            "model.reward_path": lambda: models.load_reward(cfg, torch.float32, torch.device("cpu"), 0),
            "model.value_path": lambda: models.load_value(cfg, None, torch.float32, torch.device("cpu"), 0)}[key]
    with pytest.raises(FileNotFoundError, match=f"nowhere.*{key}"):
        load()


def test_value_head_on_the_policy_trunk_starts_at_zero(tiny_lm):
    cfg = OmegaConf.create({"model": {"value_path": None}})
    policy = models.load_causal_lm(str(tiny_lm.path), key="model.path", dtype=torch.float32,
                                   device=torch.device("cpu"))
    head = models.load_value(cfg, policy, torch.float32, torch.device("cpu"), 0)
    assert head(torch.randn(2, 5, 32)).shape == (2, 5) and torch.all(head(torch.randn(1, 3, 32)) == 0)


def test_dtype_and_device_resolution():
    assert models.resolve_dtype("auto", torch.device("cpu")) == torch.float32
    assert models.resolve_dtype("bfloat16", torch.device("cpu")) == torch.bfloat16
    assert models.resolve_device("cpu") == torch.device("cpu")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="model.device"):
            models.resolve_device("cuda")


def test_hub_style_name_not_in_the_cache_names_the_key(monkeypatch):
    import transformers

    def not_found(*args, **kwargs):  # what from_pretrained raises offline for an uncached name (no network here)
        raise OSError("We couldn't connect to 'https://huggingface.co' to load the files")

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", not_found)
    with pytest.raises(FileNotFoundError, match="model.path='no-such-org/no-such-model'"):
        models.load_tokenizer("no-such-org/no-such-model")


def test_trained_weights_stay_float32_under_auto_and_float16_is_refused():
    cpu = torch.device("cpu")
    assert models.policy_dtype("auto", cpu) == torch.float32
    assert models.policy_dtype("float32", cpu) == torch.float32
    assert models.policy_dtype("bfloat16", cpu) == torch.bfloat16  # asked for explicitly
    with pytest.raises(ValueError, match="train.mixed_precision=bf16"):
        models.policy_dtype("float16", cpu)


def test_disable_dropout_makes_a_train_mode_forward_equal_the_eval_forward():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=50, n_embd=32, n_layer=2, n_head=2, n_positions=32))
    ids = torch.randint(0, 50, (2, 10))
    model.eval()
    eval_logits = model(ids).logits
    model.train()
    assert not torch.allclose(model(ids).logits, eval_logits)  # GPT-2 has dropout 0.1
    models.disable_dropout(model)
    torch.testing.assert_close(model(ids).logits, eval_logits, rtol=0, atol=1e-6)
