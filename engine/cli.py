"""`tools/train` / `alignkit-train`: train from a YAML recipe plus dotted overrides.

    tools/train [CONFIG.yaml] [key=value ...]    train with a recipe (e.g. algo.name=dpo train.lr=1e-5)
    tools/train                                  the built-in task recipe
    tools/train task.<opt>=... ...               the built-in task with overrides
    tools/train --help                           config sections/options and every registered algorithm
"""

from __future__ import annotations

import dataclasses
import logging
import sys
from typing import Sequence

USAGE = "usage: tools/train [CONFIG.yaml] [section.key=value ...] | tools/train task.<opt>=... | tools/train --help"


def _first_doc_line(obj: object) -> str:
    doc = (getattr(obj, "__doc__", None) or "").strip()
    return doc.splitlines()[0] if doc else ""


def _field_default(f: dataclasses.Field) -> object:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return "(required)"


def help_text() -> str:
    """The `--help` text: usage, every config section with defaults, every registered objective."""
    from alignkit.engine.config import _SECTION_TYPES

    lines = [USAGE, "", "Config sections (set with section.key=value; YAML recipes use the same nesting):"]
    for section, cls in _SECTION_TYPES.items():
        lines.append(f"  {section}:  {_first_doc_line(cls)}")
        for f in dataclasses.fields(cls):
            lines.append(f"    {section}.{f.name} = {_field_default(f)!r}")
    lines += ["", "Algorithms (algo.name=<name>, or algo.name=path/to/file.py:Class; options as algo.<option>=...):"]
    try:
        from alignkit.algorithms import list_objectives

        objectives = list_objectives()
    except ImportError as exc:
        objectives = {}
        lines.append(f"  (cannot import alignkit.algorithms: {exc})")
    for name, cls in objectives.items():
        needs = cls.needs
        extra = [k for k in ("reference", "reward_model", "value_model") if getattr(needs, k)]
        lines.append(f"  {name}:  {_first_doc_line(cls)}")
        model = "" if needs.model == "causal_lm" else f", model={needs.model}"
        lines.append(f"    needs: data={needs.data}{model}, logps={needs.logps}" + (f", {', '.join(extra)}" if extra else "")
                     + (f", rollouts(group_size={needs.rollouts.group_size})" if needs.rollouts else ""))
        for f in dataclasses.fields(cls.Config):
            lines.append(f"    algo.{f.name} = {_field_default(f)!r}")
    lines += ["", "Built-in task: tools/train with no arguments, or task.<option>=... overrides."]
    return "\n".join(lines)


def _run_task(overrides: list[str]) -> int:
    try:
        from alignkit.engine.task.recipe import main as task_main
    except ImportError as exc:
        print(f"error: the built-in task (alignkit.engine.task.recipe) is not available: {exc}", file=sys.stderr)
        return 2
    return int(task_main(overrides) or 0)


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the command line, train, print where the results went; returns the exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in args):
        print(help_text())
        return 0
    if not args or any(a.startswith("task.") for a in args):
        return _run_task(args)
    yaml_path = None
    if "=" not in args[0]:
        yaml_path = args.pop(0)
    bad = [a for a in args if "=" not in a]
    if bad:
        print(f"error: expected key=value overrides, got {' '.join(bad)}\n{USAGE}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # per-file load/save bars would interleave with the training bar
    from alignkit.engine.config import ConfigError, load_config
    from alignkit.engine.data import DataError

    try:
        cfg = load_config(yaml_path, args)
        from alignkit.engine.trainer import train

        result = train(cfg)
    except (ConfigError, DataError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"done: {result.steps} steps; output in {result.output_dir}"
          + (f"; final model in {result.final_dir}" if result.final_dir else ""))
    if result.eval_metrics:
        print("eval: " + ", ".join(f"{k}={v:.4g}" for k, v in sorted(result.eval_metrics.items())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
