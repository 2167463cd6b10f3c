"""Training configuration: OmegaConf structured configs, YAML recipes and dotted CLI overrides.

    cfg = load_config("recipe.yaml", ["train.lr=1e-4", "algo.name=dpo", "algo.beta=0.1"])

Every section is a dataclass below; a key that is not a field is rejected with the list of the
valid keys at that level. The `algo` section holds `name` (a registered objective, or
`file.py:Class` / `module:Class`) beside that objective's own options, which are validated
against its `Config` dataclass and filled in with its defaults. `algo=dpo` is shorthand for
`algo.name=dpo`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException


class ConfigError(ValueError):
    """A configuration the user wrote is invalid; the message names the key and the fix."""


@dataclass
class ModelConfig:
    """Which checkpoints to load and how."""

    path: Optional[str] = None  # required: local HF directory (or hub name) of the policy
    ref_path: Optional[str] = None  # None => model.path (objectives with needs.reference)
    reward_path: Optional[str] = None  # objectives with needs.reward_model
    value_path: Optional[str] = None  # None => a fresh value head on the policy trunk
    dtype: str = "float32"  # float32 | bfloat16 | float16 | auto
    device: str = "auto"  # auto | cpu | cuda | cuda:<i>
    trust_remote_code: bool = False


@dataclass
class DataConfig:
    """Where the rows come from, how they are cut, and what to do with bad rows."""

    train: Optional[str] = None  # JSONL file | datasets.save_to_disk dir | datasets hub name
    eval: Optional[str] = None
    eval_fraction: float = 0.0  # held-out split taken from train when eval is None
    max_length: int = 512  # prompt + completion tokens
    max_prompt_length: int = 256  # prompts are cut from the left to this many tokens
    on_error: str = "fail"  # fail | skip
    shuffle: bool = True


@dataclass
class OptimConfig:
    """Optimisation schedule."""

    batch_size: int = 8  # rows per micro-batch per rank
    grad_accum: int = 1
    lr: float = 1e-5
    weight_decay: float = 0.0
    warmup_steps: int = 0
    warmup_ratio: float = 0.0  # used when warmup_steps == 0
    schedule: str = "cosine"  # cosine | linear | constant
    max_steps: int = -1  # -1 => run `epochs` epochs
    epochs: int = 1
    max_grad_norm: float = 1.0  # <= 0 disables clipping
    seed: int = 42
    mixed_precision: str = "auto"  # auto (bf16 on CUDA with bf16 support) | bf16 | no
    eval_every: int = 0  # optimizer steps between evaluations; 0 => only at the end
    eval_batch_size: int = 16


@dataclass
class OutputConfig:
    """Logging and checkpointing."""

    dir: str = "runs/alignkit"
    log_every: int = 10
    tensorboard: bool = True
    wandb: bool = False
    progress: bool = True
    save_every: int = 0  # optimizer steps between checkpoints; 0 => none
    keep_last: int = 2
    save_final: bool = True
    resume: Optional[str] = None  # None | "auto" | path to a checkpoint-<step> dir


@dataclass
class RolloutConfig:
    """Sampling settings for online objectives (group size comes from the objective's Needs)."""

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    max_new_tokens: int = 128
    max_prompt_length: int = 256


@dataclass
class TrainConfig:
    """The whole training recipe."""

    algo: dict[str, Any] = field(default_factory=lambda: {"name": "dpo"})
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: OptimConfig = field(default_factory=OptimConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)


SECTIONS: dict[str, type] = {f.name: f.type for f in dataclasses.fields(TrainConfig)}
_SECTION_TYPES = {"model": ModelConfig, "data": DataConfig, "train": OptimConfig,
                  "output": OutputConfig, "rollout": RolloutConfig}
_CHOICES = {
    ("model", "dtype"): ("float32", "bfloat16", "float16", "auto"),
    ("data", "on_error"): ("fail", "skip"),
    ("train", "schedule"): ("cosine", "linear", "constant"),
    ("train", "mixed_precision"): ("auto", "bf16", "no"),
}


def load_config(yaml_path: str | Path | None = None, overrides: list[str] | None = None) -> DictConfig:
    """Build a validated config from an optional YAML recipe plus dotted `key=value` overrides."""
    user: dict[str, Any] = {}
    if yaml_path is not None:
        path = Path(yaml_path)
        if not path.is_file():
            raise ConfigError(f"config file {str(path)!r} does not exist")
        loaded = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{path}: expected a mapping of sections at the top level")
        user = _normalise_algo(loaded or {}, str(path))
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value (e.g. train.lr=1e-4)")
        try:
            parsed = OmegaConf.to_container(OmegaConf.from_dotlist([item]))
        except OmegaConfBaseException as exc:
            raise ConfigError(f"cannot parse override {item!r}: {exc}") from None
        user = _deep_merge(user, _normalise_algo(parsed, f"override {item!r}"))
    return build_config(user)


def build_config(user: dict[str, Any] | DictConfig | TrainConfig) -> DictConfig:
    """Validate a plain mapping (or a TrainConfig / DictConfig) and return the full typed config."""
    if isinstance(user, TrainConfig):
        user = OmegaConf.to_container(OmegaConf.structured(user))
    elif isinstance(user, DictConfig):
        user = OmegaConf.to_container(user, resolve=True)
    user = _normalise_algo(dict(user), "config")
    _check_keys(user)
    algo_user = user.pop("algo", {})
    try:
        cfg = OmegaConf.merge(OmegaConf.structured(TrainConfig), user)
    except OmegaConfBaseException as exc:
        raise ConfigError(f"invalid value for {_key_of(exc)}: {_first_line(exc)}") from None
    for (section, key), choices in _CHOICES.items():
        value = cfg[section][key]
        if value == "False" and "no" in choices:
            # YAML 1.1 reads a bare `no` as false (`train.mixed_precision=no`): take the user's word.
            cfg[section][key] = value = "no"
        if value not in choices:
            raise ConfigError(f"{section}.{key}={value!r}: expected one of {', '.join(choices)}")
    if cfg.data.max_prompt_length < 1:
        raise ConfigError(f"data.max_prompt_length={cfg.data.max_prompt_length}: must be >= 1")
    if cfg.data.max_prompt_length >= cfg.data.max_length:
        raise ConfigError(f"data.max_prompt_length ({cfg.data.max_prompt_length}) must be smaller than "
                          f"data.max_length ({cfg.data.max_length}) so completions keep at least one token")
    if not 0.0 <= cfg.data.eval_fraction < 1.0:
        raise ConfigError(f"data.eval_fraction={cfg.data.eval_fraction}: expected a value in [0, 1)")
    for key in ("batch_size", "grad_accum", "eval_batch_size", "epochs"):
        if cfg.train[key] < 1:
            raise ConfigError(f"train.{key}={cfg.train[key]}: must be >= 1")
    cfg.algo = _validate_algo(algo_user)
    return cfg


def objective_from_config(cfg: DictConfig) -> Any:
    """Instantiate the objective named by `cfg.algo.name` with the options under `algo`."""
    cls = _get_objective(cfg.algo.name)
    opts = {k: v for k, v in OmegaConf.to_container(cfg.algo, resolve=True).items() if k != "name"}
    return cls(cls.Config(**opts))


def to_yaml(cfg: DictConfig) -> str:
    """The config as YAML text (what checkpoints and run directories record)."""
    return OmegaConf.to_yaml(cfg)


def _get_objective(name: str) -> type:
    try:
        from alignkit.algorithms import get_objective
    except ImportError as exc:  # the registry is a separate module; say so instead of a bare ImportError
        raise ConfigError(f"cannot resolve algo.name={name!r}: alignkit.algorithms has no registry ({exc})") from None
    try:
        return get_objective(name)
    except (KeyError, ValueError) as exc:
        raise ConfigError(f"algo.name={name!r}: {exc.args[0] if exc.args else exc}") from None


def _validate_algo(algo_user: dict[str, Any]) -> DictConfig:
    opts = dict(algo_user)
    name = opts.pop("name", "dpo")
    if not isinstance(name, str) or not name:
        raise ConfigError("algo.name must be a non-empty string (a registered objective or file.py:Class)")
    cls = _get_objective(name)
    fields = {f.name: f for f in dataclasses.fields(cls.Config)}
    unknown = sorted(set(opts) - set(fields))
    if unknown:
        valid = ", ".join(["name", *fields]) or "name"
        raise ConfigError(f"unknown key(s) {', '.join('algo.' + k for k in unknown)} for objective {name!r}; "
                          f"valid keys in 'algo': {valid}")
    try:
        schema = OmegaConf.structured(cls.Config)
    except (OmegaConfBaseException, ValueError):  # a field type OmegaConf cannot express: no conversion
        schema = None
    if schema is None:
        values = {k: opts.get(k, _default(f)) for k, f in fields.items()}
    else:
        try:
            values = OmegaConf.to_container(OmegaConf.merge(schema, opts), resolve=True)
        except OmegaConfBaseException as exc:
            raise ConfigError(f"invalid value for algo.{_key_of(exc)} (objective {name!r}): {_first_line(exc)}") from None
    try:
        cls.Config(**values)  # the dataclass's own __post_init__ checks run here
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"invalid option for objective {name!r}: {exc}") from None
    return OmegaConf.create({"name": name, **values})


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


def _check_keys(user: dict[str, Any]) -> None:
    unknown = sorted(set(user) - set(SECTIONS))
    if unknown:
        raise ConfigError(f"unknown config section(s) {', '.join(unknown)}; valid sections: {', '.join(SECTIONS)}")
    for section, values in user.items():
        if section == "algo":
            continue
        if not isinstance(values, dict):
            raise ConfigError(f"section {section!r} must be a mapping of keys, got {values!r}")
        valid = [f.name for f in dataclasses.fields(_SECTION_TYPES[section])]
        bad = sorted(set(values) - set(valid))
        if bad:
            raise ConfigError(f"unknown key(s) {', '.join(section + '.' + k for k in bad)}; "
                              f"valid keys in {section!r}: {', '.join(valid)}")


def _normalise_algo(user: dict[str, Any], where: str) -> dict[str, Any]:
    """Accept `algo: dpo` (a bare name) as `algo: {name: dpo}`."""
    user = dict(user)
    algo = user.get("algo")
    if isinstance(algo, str):
        user["algo"] = {"name": algo}
    elif algo is not None and not isinstance(algo, dict):
        raise ConfigError(f"{where}: 'algo' must be a name or a mapping, got {algo!r}")
    return user


def _deep_merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out = dict(a)
    for k, v in b.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def _key_of(exc: OmegaConfBaseException) -> str:
    return str(getattr(exc, "full_key", None) or "?")
