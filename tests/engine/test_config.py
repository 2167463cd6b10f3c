"""Config loading: YAML + overrides, unknown keys rejected with the valid list, objective options validated."""

from __future__ import annotations

import pytest

from alignkit.engine.config import ConfigError, load_config


def test_defaults_and_objective_options_are_filled_in():
    cfg = load_config(None, ["model.path=/m", "algo.name=dpo"])
    assert cfg.train.lr == 1e-5 and cfg.data.max_length == 512 and cfg.output.resume is None
    # DPO's Config dataclass defaults appear under algo, beside the name.
    assert cfg.algo.name == "dpo" and cfg.algo.beta == 0.1 and cfg.algo.loss_type == "sigmoid"


def test_unknown_key_lists_the_valid_keys_of_its_section():
    with pytest.raises(ConfigError) as err:
        load_config(None, ["train.lrr=1e-4"])
    msg = str(err.value)
    assert "train.lrr" in msg
    for valid in ("batch_size", "grad_accum", "lr", "warmup_ratio", "eval_batch_size"):
        assert valid in msg


def test_unknown_section_lists_the_sections():
    with pytest.raises(ConfigError, match=r"unknown config section\(s\) trian; valid sections: algo, model, data"):
        load_config(None, ["trian.lr=1"])


def test_unknown_algo_option_lists_the_objective_options():
    with pytest.raises(ConfigError) as err:
        load_config(None, ["algo.name=simpo", "algo.betta=2"])
    assert "algo.betta" in str(err.value) and "beta" in str(err.value) and "gamma" in str(err.value)


def test_bad_algo_option_value_is_rejected():
    with pytest.raises(ConfigError, match="loss_type"):
        load_config(None, ["algo.name=dpo", "algo.loss_type=hinge"])
    with pytest.raises(ConfigError, match="beta"):
        load_config(None, ["algo.name=dpo", "algo.beta=lots"])


def test_unknown_objective_name_names_the_known_ones():
    with pytest.raises(ConfigError, match="dpo"):
        load_config(None, ["algo.name=dppo"])


def test_bad_value_type_and_choice_name_the_key():
    with pytest.raises(ConfigError, match="train.batch_size"):
        load_config(None, ["train.batch_size=many"])
    with pytest.raises(ConfigError, match="train.schedule='cosin'"):
        load_config(None, ["train.schedule=cosin"])
    with pytest.raises(ConfigError, match="max_prompt_length"):
        load_config(None, ["data.max_length=64", "data.max_prompt_length=64"])


def test_yaml_recipe_then_overrides_win(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("algo: simpo\nmodel:\n  path: /m\ntrain:\n  lr: 0.5\n  batch_size: 3\n")
    cfg = load_config(recipe, ["train.lr=0.25", "algo.gamma=0.5"])
    assert cfg.algo.name == "simpo" and cfg.algo.gamma == 0.5 and cfg.algo.beta == 2.0
    assert cfg.train.lr == 0.25 and cfg.train.batch_size == 3


def test_yaml_with_unknown_key_is_rejected(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("data:\n  trian: x.jsonl\n")
    with pytest.raises(ConfigError, match="data.trian.*valid keys in 'data': train, eval"):
        load_config(recipe, [])


def test_objective_from_a_file_is_validated_against_its_config(tmp_path):
    plugin = tmp_path / "my_obj.py"
    plugin.write_text(
        "from dataclasses import dataclass\n"
        "from alignkit.algorithms import Objective, Needs\n"
        "class Mine(Objective):\n"
        "    @dataclass\n"
        "    class Config:\n"
        "        alpha: float = 1.0\n"
        "    needs = Needs(data='sft')\n")
    cfg = load_config(None, [f"algo={plugin}:Mine", "algo.alpha=3"])
    assert cfg.algo.alpha == 3.0
    with pytest.raises(ConfigError, match="valid keys in 'algo': name, alpha"):
        load_config(None, [f"algo.name={plugin}:Mine", "algo.beta=3"])


def test_override_without_equals_sign_is_explained():
    with pytest.raises(ConfigError, match="key=value"):
        load_config(None, ["train.lr"])


def test_bare_no_for_mixed_precision_means_no_not_false(tmp_path):
    # YAML reads `no` as a boolean; both the CLI and a recipe file must still mean "no".
    cfg = load_config(None, ["model.path=x", "train.mixed_precision=no"])
    assert cfg.train.mixed_precision == "no"
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model: {path: x}\ntrain: {mixed_precision: no}\n")
    assert load_config(str(recipe), []).train.mixed_precision == "no"


def test_zero_prompt_length_is_rejected():
    with pytest.raises(ConfigError, match="max_prompt_length=0"):
        load_config(None, ["model.path=x", "data.max_prompt_length=0"])
