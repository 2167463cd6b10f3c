"""Objective registry: names, plugin files, importable modules and entry points -> Objective classes.

An objective is found by one spec string:

    "dpo"                          a registered name (built-ins register on import of alignkit.algorithms)
    "path/to/my_loss.py:MyLoss"    a Python file, imported by path (the class need not be registered)
    "my_pkg.losses:MyLoss"         an importable module
    entry point                    a name published by an installed package in group "alignkit.objectives"
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.machinery
import importlib.metadata
import importlib.util
import sys
import warnings
from pathlib import Path
from typing import Callable, TypeVar

from .base import Needs, Objective

ENTRY_POINT_GROUP = "alignkit.objectives"

_REGISTRY: dict[str, type[Objective]] = {}
# Plugin files already imported, by resolved path: a file is executed once per process, so
# naming it twice (CLI + resume, two tests) does not re-run its @register and clash with itself.
_FILE_MODULES: dict[Path, object] = {}

T = TypeVar("T", bound=type[Objective])


def register(name: str) -> Callable[[T], T]:
    """Class decorator: register an Objective subclass under `name` and set `cls.name`."""
    if not isinstance(name, str) or not name or ":" in name:
        raise ValueError(f"objective name {name!r}: expected a non-empty string without ':'")

    def deco(cls: T) -> T:
        _check_objective_class(cls, f"@register({name!r})")
        old = _REGISTRY.get(name)
        if old is not None and old is not cls:
            raise ValueError(
                f"objective name {name!r} is already registered to {_describe(old)}; "
                f"cannot register {_describe(cls)} under the same name. Pick another name."
            )
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return deco


def get_objective(spec: str | type[Objective]) -> type[Objective]:
    """Resolve a name, `file.py:Class`, `package.module:Class` or entry point to an Objective class."""
    if isinstance(spec, type):
        _check_objective_class(spec, repr(spec))
        return spec
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"objective spec {spec!r}: expected a name like 'dpo' or 'path/to/file.py:Class'")
    spec = spec.strip()
    if ":" in spec:
        return _load_qualified(spec)
    if spec.endswith(".py"):
        raise ValueError(f"objective spec {spec!r} names a file but not a class: write '{spec}:ClassName'")
    if spec in _REGISTRY:
        return _REGISTRY[spec]
    for ep in _entry_points():
        if ep.name == spec:
            return _load_entry_point(ep)
    known = sorted(set(_REGISTRY) | {ep.name for ep in _entry_points()})
    raise KeyError(
        f"unknown objective {spec!r}. Known objectives: {', '.join(known) or '(none)'}. "
        "A custom objective can be named as 'path/to/file.py:ClassName' or 'package.module:ClassName'."
    )


def list_objectives() -> dict[str, type[Objective]]:
    """All objectives by name: the registered ones plus those published through entry points."""
    found = dict(_REGISTRY)
    for ep in _entry_points():
        if ep.name in found:
            continue
        try:
            found[ep.name] = _load_entry_point(ep)
        except Exception as exc:  # one broken third-party package must not hide the others
            warnings.warn(f"skipping objective entry point {ep.name!r} ({ep.value}): {exc}", stacklevel=2)
    return dict(sorted(found.items()))


def _entry_points() -> list[importlib.metadata.EntryPoint]:
    """Entry points in our group (looked up each time, so packages installed later are seen)."""
    return list(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP))


def _load_entry_point(ep: importlib.metadata.EntryPoint) -> type[Objective]:
    """Load one entry point and register its class under the entry point's name."""
    try:
        cls = ep.load()
    except Exception as exc:
        raise ImportError(
            f"objective entry point {ep.name!r} = {ep.value!r} (group {ENTRY_POINT_GROUP!r}) failed to load: {exc}"
        ) from exc
    _check_objective_class(cls, f"entry point {ep.name!r} = {ep.value!r}")
    if _REGISTRY.get(ep.name) is not cls:
        register(ep.name)(cls)
    return cls


def _load_qualified(spec: str) -> type[Objective]:
    """Load `file.py:Class` (by path) or `package.module:Class` (by import)."""
    where, _, attr = spec.rpartition(":")
    if not where or not attr.isidentifier():
        raise ValueError(f"objective spec {spec!r}: expected 'path/to/file.py:ClassName' or 'package.module:ClassName'")
    if where.endswith(".py") or "/" in where or "\\" in where:
        module = _import_file(Path(where), spec)
    else:
        try:
            module = importlib.import_module(where)
        except ImportError as exc:
            raise ImportError(f"objective spec {spec!r}: cannot import module {where!r}: {exc}") from exc
    try:
        cls = getattr(module, attr)
    except AttributeError:
        defined = sorted(
            n for n, v in vars(module).items() if isinstance(v, type) and issubclass(v, Objective) and v is not Objective
        )
        raise AttributeError(
            f"objective spec {spec!r}: {where!r} defines no {attr!r}. "
            f"Objective classes it defines: {', '.join(defined) or '(none)'}"
        ) from None
    _check_objective_class(cls, spec)
    if "name" not in vars(cls) or not cls.name:
        # Unregistered plugin class: give it a readable name for logs and checkpoints.
        cls.name = cls.__name__
    return cls


def _import_file(path: Path, spec: str) -> object:
    """Import a Python file by path, once per resolved path."""
    path = path.expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"objective spec {spec!r}: file {str(path)!r} does not exist")
    path = path.resolve()
    if path in _FILE_MODULES:
        return _FILE_MODULES[path]
    digest = hashlib.sha1(str(path).encode()).hexdigest()[:10]
    mod_name = f"alignkit_plugin_{path.stem}_{digest}"
    loader = importlib.machinery.SourceFileLoader(mod_name, str(path))
    mod_spec = importlib.util.spec_from_file_location(mod_name, path, loader=loader)
    assert mod_spec is not None
    module = importlib.util.module_from_spec(mod_spec)
    # dataclasses (and pickling) look the module up in sys.modules while the file executes.
    sys.modules[mod_name] = module
    # A plugin may import helper modules that sit beside it, as a script run from there could.
    if str(path.parent) not in sys.path:
        sys.path.append(str(path.parent))
    try:
        loader.exec_module(module)
    except BaseException:
        del sys.modules[mod_name]
        raise
    _FILE_MODULES[path] = module
    return module


def _check_objective_class(cls: object, where: str) -> None:
    """Raise a clear error unless `cls` is a usable Objective subclass."""
    if not (isinstance(cls, type) and issubclass(cls, Objective)):
        raise TypeError(f"{where}: {cls!r} is not a subclass of alignkit.algorithms.Objective")
    needs = getattr(cls, "needs", None)
    if not isinstance(needs, Needs):
        raise TypeError(f"{where}: {cls.__name__} must set a class attribute `needs = Needs(...)`")


def _describe(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"
