"""Objective registry: names, plugin files, modules, entry points, and the errors a user can hit."""

from __future__ import annotations

import importlib.metadata
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from alignkit.algorithms import ModelOutputs, Needs, Objective, get_objective, list_objectives, register
from alignkit.algorithms import registry
from alignkit.algorithms.dpo import DPO, IPO
from alignkit.algorithms.kto import KTO
from alignkit.algorithms.orpo import ORPO
from alignkit.algorithms.reward_model import RewardModel
from alignkit.algorithms.sft import SFT
from alignkit.algorithms.simpo import SimPO

PLUGIN = textwrap.dedent(
    '''
    from dataclasses import dataclass
    import torch
    from alignkit.algorithms import Needs, Objective

    class MyObjective(Objective):
        """Mean squared chosen log-prob (a toy)."""

        @dataclass
        class Config:
            scale: float = 2.0

        needs = Needs(data="preference", logps="mean")

        def loss(self, batch, out):
            loss = self.cfg.scale * (out.chosen_logps ** 2).mean()
            return loss, {"toy": loss.detach()}

    class NotAnObjective:
        pass
    '''
)


@pytest.fixture
def isolated_registry(monkeypatch):
    """A copy of the registry, so tests that register names leave the real one untouched."""
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    monkeypatch.setattr(registry, "_FILE_MODULES", {})
    return registry._REGISTRY


def test_builtins_are_registered_with_their_names():
    objs = list_objectives()
    expected = {"sft": SFT, "reward_model": RewardModel, "dpo": DPO, "ipo": IPO, "simpo": SimPO, "orpo": ORPO, "kto": KTO}
    for name, cls in expected.items():
        assert objs[name] is cls and cls.name == name and get_objective(name) is cls


def test_builtins_declare_exactly_what_they_use():
    assert DPO.needs.reference and DPO.needs.logps == "sum"
    assert IPO.needs.reference and IPO.needs.logps == "mean"
    assert KTO.needs.reference and KTO.needs.logps == "sum"
    assert not SimPO.needs.reference and SimPO.needs.logps == "mean"
    assert not ORPO.needs.reference and ORPO.needs.chosen_nll and ORPO.needs.logps == "mean"
    assert RewardModel.needs.model == "reward" and not RewardModel.needs.reference
    assert SFT.needs.data == "sft" and not SFT.needs.reference
    assert all(not c.needs.reward_model and not c.needs.value_model and c.needs.rollouts is None for c in (DPO, IPO, KTO, SimPO, ORPO, RewardModel, SFT))


def test_unknown_name_lists_known_names():
    with pytest.raises(KeyError) as err:
        get_objective("dpoo")
    msg = str(err.value)
    assert "'dpoo'" in msg and "dpo" in msg and "simpo" in msg and "orpo" in msg and "file.py:ClassName" in msg


def test_duplicate_registration_raises(isolated_registry):
    @register("toy_dup")
    class A(Objective):
        needs = Needs(data="sft")

    assert register("toy_dup")(A) is A  # the same class again is fine
    with pytest.raises(ValueError, match="already registered"):

        @register("toy_dup")
        class B(Objective):
            needs = Needs(data="sft")

    with pytest.raises(ValueError, match="already registered"):
        register("dpo")(A)
    assert get_objective("toy_dup") is A and get_objective("dpo") is DPO


def test_register_rejects_classes_without_needs(isolated_registry):
    with pytest.raises(TypeError, match="needs = Needs"):

        @register("toy_noneeds")
        class C(Objective):
            pass

    with pytest.raises(TypeError, match="not a subclass"):
        register("toy_plain")(dict)  # type: ignore[arg-type]


def test_plugin_file_by_relative_path(isolated_registry, tmp_path, monkeypatch):
    (tmp_path / "plugins").mkdir()
    (tmp_path / "plugins" / "my_obj.py").write_text(PLUGIN)
    monkeypatch.chdir(tmp_path)
    cls = get_objective("plugins/my_obj.py:MyObjective")
    assert issubclass(cls, Objective) and cls.name == "MyObjective"
    loss, metrics = cls().loss({}, ModelOutputs({"chosen_logps": torch.tensor([-1.0, -3.0])}))
    assert loss.item() == pytest.approx(2.0 * (1.0 + 9.0) / 2)
    # Loaded once per path: naming it again (or by absolute path) gives the same class object.
    assert get_objective(str(tmp_path / "plugins" / "my_obj.py") + ":MyObjective") is cls
    assert "MyObjective" not in list_objectives()  # a file class need not be registered


def test_plugin_file_that_registers_itself_can_be_named_twice(isolated_registry, tmp_path):
    path = tmp_path / "reg_obj.py"
    path.write_text(PLUGIN.replace("class MyObjective(Objective):", "@register('toy_file_reg')\nclass MyObjective(Objective):").replace(
        "import Needs, Objective", "import Needs, Objective, register"
    ))
    a = get_objective(f"{path}:MyObjective")
    b = get_objective(f"{path}:MyObjective")
    assert a is b and get_objective("toy_file_reg") is a and a.name == "toy_file_reg"


def test_missing_plugin_file_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.py"):
        get_objective(f"{tmp_path}/nope.py:MyObjective")


def test_plugin_file_without_the_class_lists_its_objectives(isolated_registry, tmp_path):
    path = tmp_path / "my_obj2.py"
    path.write_text(PLUGIN)
    with pytest.raises(AttributeError, match="defines no 'Missing'.*MyObjective"):
        get_objective(f"{path}:Missing")
    with pytest.raises(TypeError, match="not a subclass"):
        get_objective(f"{path}:NotAnObjective")


def test_file_without_class_name_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match=r"my_obj\.py:ClassName"):
        get_objective("my_obj.py")


def test_module_spec_loads_by_import():
    assert get_objective("alignkit.algorithms.simpo:SimPO") is SimPO
    with pytest.raises(ImportError, match="no_such_module_xyz"):
        get_objective("no_such_module_xyz:Thing")


def _fake_entry_points(monkeypatch, eps):
    real = importlib.metadata.entry_points

    def fake(**kw):
        if kw.get("group") == registry.ENTRY_POINT_GROUP:
            return importlib.metadata.EntryPoints(eps)
        return real(**kw)

    monkeypatch.setattr(importlib.metadata, "entry_points", fake)


def test_entry_points_are_discovered(isolated_registry, tmp_path, monkeypatch):
    (tmp_path / "ak_test_ep_pkg.py").write_text(PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "ak_test_ep_pkg", raising=False)
    group = registry.ENTRY_POINT_GROUP
    _fake_entry_points(
        monkeypatch,
        [
            importlib.metadata.EntryPoint(name="toy_ep", value="ak_test_ep_pkg:MyObjective", group=group),
            importlib.metadata.EntryPoint(name="toy_broken", value="ak_test_missing_pkg:Nope", group=group),
        ],
    )
    cls = get_objective("toy_ep")
    assert cls.__name__ == "MyObjective" and cls.name == "toy_ep"
    with pytest.warns(UserWarning, match="toy_broken"):
        objs = list_objectives()
    assert objs["toy_ep"] is cls and "dpo" in objs and "toy_broken" not in objs
    with pytest.raises(ImportError, match="toy_broken"):
        get_objective("toy_broken")
    with pytest.raises(KeyError, match="toy_ep"):  # the unknown-name message includes entry points
        get_objective("toy_nothing")


def test_plugin_file_can_import_a_helper_module_beside_it(tmp_path):
    from alignkit.algorithms import get_objective

    (tmp_path / "my_helpers.py").write_text("SCALE = 3.0\n")
    (tmp_path / "plugin_with_helper.py").write_text(
        "from dataclasses import dataclass\n"
        "from my_helpers import SCALE\n"
        "from alignkit.algorithms import Needs, Objective\n"
        "class Scaled(Objective):\n"
        "    needs = Needs(data='sft')\n"
        "    scale = SCALE\n"
    )
    cls = get_objective(f"{tmp_path / 'plugin_with_helper.py'}:Scaled")
    assert cls.scale == 3.0
