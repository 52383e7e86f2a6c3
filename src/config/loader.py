"""YAML + command-line flags + ``--set`` overrides -> one validated ``RunConfig``.

Precedence is defaults < YAML < flags < ``--set``. Validation is generic over the schema's
dataclass annotations, so a new field is checked the moment it is added to the schema; every
mistake becomes a ``UserError`` that names the dotted key and what is allowed, because a typo
in a config must never silently train the wrong thing for hours.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from src.config.limits import check_limits
from src.config.schema import MAX_SEED, RunConfig
from src.config.stage_overrides import drop_unset
from src.config.stage_settings import check_stage_overrides
from src.config.stages import ROLES, STAGE_NAMES
from src.config.yaml_file import read_yaml_file
from src.data.registry import DATASETS
from src.data.settings import validate_data
from src.distillation.settings import check_distillation
from src.engine.settings import TrainConfig
from src.errors import UserError
from src.models.architecture import embeds_patches, resolve_model_name
from src.models.lr_scale import get_model_specific_lr
from src.models.vit_patches import vit_patch_size
from src.utils.logger import MONITORABLE, better_mode
from src.utils.sections import section_entries, section_keys, settings_dict

_NONE_WORDS = ("none", "null", "~")
# flags that set a train key for every stage, per-stage values of the config included
RUN_WIDE_FLAG_KEYS = frozenset({"train.epochs"})
# Keys an earlier version wrote, which an old YAML or a saved run's config.yaml may still hold:
# accepted and ignored (a note says so in pipeline.log), never written again.
RETIRED_KEYS = {
    "models.family": "any timm model fits any role; the entry script only picks the default config",
}
_ABSENT = object()


def schema_keys(cls: type = RunConfig, prefix: str = "") -> list[str]:
    """Every dotted leaf key of the schema (``train.lr``, ``stages``, ...), the registered
    entries' sections (src/utils/sections.py) included."""
    keys: list[str] = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        key = f"{prefix}{f.name}"
        entries = section_entries(f)
        if entries is not None:
            for name, section in entries().items():
                keys.extend(schema_keys(section.settings, prefix if section.inline else f"{prefix}{name}."))
        elif dataclasses.is_dataclass(hints[f.name]):
            keys.extend(schema_keys(hints[f.name], key + "."))
        else:
            keys.append(key)
    return keys


def _unknown_key(key: str) -> UserError:
    close = difflib.get_close_matches(key, schema_keys(), n=1, cutoff=0.6)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    return UserError(f"unknown config key '{key}'{hint}")


def _describe(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(c) for c in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        inner = [a for a in typing.get_args(tp) if a is not type(None)]
        return " or ".join(_describe(a) for a in inner) + " or null"
    if origin is list:
        return "a list of " + _describe(typing.get_args(tp)[0]) + "s"
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(tp, str(tp))


class _NotFinite(UserError):
    """A number of the right type that is infinite or NaN (reported as such, not as a type error)."""


def _coerce(key: str, value: Any, tp: Any) -> Any:
    """Return ``value`` as type ``tp`` or raise a UserError naming ``key``."""
    origin = typing.get_origin(tp)
    bad = UserError(f"config key '{key}': expected {_describe(tp)}, got {value!r}")
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None or (isinstance(value, str) and value.strip().lower() in _NONE_WORDS):
            if type(None) in args:
                return None
            raise bad
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(key, value, arg)
            except _NotFinite:
                raise
            except UserError:
                continue
        raise bad
    if origin is Literal:
        choices = typing.get_args(tp)
        if isinstance(value, bool):  # YAML 1.1 reads a bare `off`/`on` as a bool
            value = {False: "off", True: "on"}[value]
        if value in choices:
            return value
        raise bad
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if isinstance(value, str):  # "teacher,student" from a flag or --set
            value = [part.strip() for part in value.split(",") if part.strip()]
        if not isinstance(value, list):
            raise bad
        return [_coerce(key, item, item_tp) for item in value]
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise bad
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise bad
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise bad
        try:
            number = float(value)  # a str: YAML 1.1 reads "1e-3" (no dot) as a string
        except (ValueError, OverflowError):
            raise bad from None
        if not math.isfinite(number):  # 1e309 reads as inf; no setting means anything at inf or NaN
            raise _NotFinite(f"config key '{key}': must be a finite number, got {value}")
        return number
    if tp is str:
        if isinstance(value, str):
            return value
        raise bad
    raise TypeError(f"schema type {tp!r} of '{key}' is not supported by the loader")


def _build_section(cls: type, value: Any, key: str) -> Any:
    """Dataclass ``cls`` from the mapping at ``key`` (null: every default)."""
    if value is None:
        value = {}
    if not isinstance(value, Mapping):
        raise UserError(f"config key '{key}': expected a mapping of settings, got {value!r}")
    return _build(cls, value, key + ".")


def _build(cls: type, raw: Mapping[str, Any], prefix: str = "") -> Any:
    """Instantiate dataclass ``cls`` from a (partial) nested mapping, validating every value.
    A registry-backed field (src/utils/sections.py) gets every registered entry's section,
    from the raw keys it owns: ``<name>`` for a section of its own, the fields of an inline one."""
    hints = typing.get_type_hints(cls)
    fields = dataclasses.fields(cls)
    sectioned = {f.name: section_entries(f) for f in fields if section_entries(f) is not None}
    plain = [f.name for f in fields if f.name not in sectioned]
    owners = {field: section_keys(entries, plain) for field, entries in sectioned.items()}
    for key in raw:
        if key not in plain and not any(key in owned for owned in owners.values()) \
                and f"{prefix}{key}" not in RETIRED_KEYS:
            raise _unknown_key(f"{prefix}{key}")
    kwargs: dict[str, Any] = {}
    for name, value in raw.items():
        if name not in plain:
            continue  # a section's key, or a retired key
        key, tp = f"{prefix}{name}", hints[name]
        if dataclasses.is_dataclass(tp):
            kwargs[name] = _build_section(tp, value, key)
        else:
            kwargs[name] = _coerce(key, value, tp)
    for field, entries in sectioned.items():
        kwargs[field] = {}
        for name, section in entries().items():
            if section.inline:
                own = {key: value for key, value in raw.items() if owners[field].get(key) == name}
                kwargs[field][name] = _build(section.settings, own, prefix)
            else:
                kwargs[field][name] = _build_section(section.settings, raw.get(name), f"{prefix}{name}")
    return cls(**kwargs)


def _set_dotted(raw: dict[str, Any], key: str, value: Any) -> None:
    """Set ``a.b.c`` in a nested dict; unknown paths are reported with a suggestion."""
    if key not in schema_keys() and key not in RETIRED_KEYS:
        raise _unknown_key(key)
    node = raw
    *parents, leaf = key.split(".")
    for part in parents:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[leaf] = value


def parse_override(text: str) -> tuple[str, Any]:
    """``"train.lr=0.1"`` -> ``("train.lr", 0.1)``; the value is read as YAML (numbers, bools, lists)."""
    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise UserError(f"--set expects KEY=VALUE (e.g. train.lr=0.01), got {text!r}")
    try:
        parsed = yaml.safe_load(value) if value.strip() else None
    except yaml.YAMLError:
        return key, value
    if isinstance(parsed, bool) and value.strip().lower() not in ("true", "false"):
        return key, value.strip()  # keep "off"/"no"/"on" as words; bool fields want true/false
    return key, parsed


def read_yaml(path: str | Path) -> dict[str, Any]:
    """The YAML mapping in ``path`` ({} for an empty file); unreadable, non-UTF-8, malformed or
    with a key given twice -> UserError (src/config/yaml_file.py)."""
    data = read_yaml_file(path)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"config file {path} must hold a mapping of settings, got {type(data).__name__}")
    return data


def retired_notes(raw: Mapping[str, Any], source: str) -> list[str]:
    """One line per retired key in the nested mapping ``raw`` (read from ``source``), for the log."""
    notes = []
    for key, why in RETIRED_KEYS.items():
        node: Any = raw
        for part in key.split("."):
            node = node.get(part, _ABSENT) if isinstance(node, Mapping) else _ABSENT
        if node is not _ABSENT:
            notes.append(f"{source}: config key '{key}' ({node!r}) is retired and ignored: {why}")
    return notes



def config_from_dict(raw: Mapping[str, Any]) -> RunConfig:
    """Validate a nested mapping (e.g. a saved config.yaml) into a ``RunConfig``; retired keys
    are ignored (``retired_notes`` names them)."""
    cfg = _build(RunConfig, raw)
    validate(cfg)
    return cfg


def load_config(
    path: str | Path | None,
    overrides: Sequence[str] = (),
    cli_values: Mapping[str, Any] | None = None,
    notes: list[str] | None = None,
) -> RunConfig:
    """Defaults < YAML at ``path`` < ``cli_values`` < ``overrides``.

    ``cli_values`` maps dotted keys to flag values; None means the flag was not given. A run-wide
    flag (``--epochs``) also replaces the YAML's per-stage values of its key: ``--epochs 1`` is a
    one-epoch run, whatever epochs a config gives one stage (``--set`` can still set them).
    A warm-up that ``--epochs`` leaves no shorter than the run is shortened (``fit_warmups``).
    Retired keys are ignored; a line per key, and one for fitted warm-ups, is added to ``notes``
    when given (for pipeline.log).
    """
    raw: dict[str, Any] = read_yaml(path) if path is not None else {}
    planned = _configured_epochs(raw)
    for key, value in (cli_values or {}).items():
        if value is not None:
            _set_dotted(raw, key, value)
            if key in RUN_WIDE_FLAG_KEYS:
                _drop_stage_values(raw, key.removeprefix("train."))
    explicit = set()
    for text in overrides:
        key, value = parse_override(text)
        _set_dotted(raw, key, value)
        explicit.add(key)
    shortened = (cli_values or {}).get("train.epochs") is not None
    fitted = fit_warmups(raw, planned, explicit) if shortened else None
    if notes is not None:
        notes.extend(retired_notes(raw, str(path) if path is not None else "--set"))
        notes.extend([fitted] if fitted else [])
    return config_from_dict(raw)


def _configured_epochs(raw: Mapping[str, Any]) -> dict[str, Any]:
    """Epochs of the run as configured (``train``) and of each stage that sets its own, before
    ``--epochs`` replaces them: the length each warm-up was chosen for."""
    train = raw.get("train") if isinstance(raw.get("train"), Mapping) else {}
    planned = {"train": train.get("epochs", TrainConfig.epochs)}
    sections = raw.get("stage_overrides")
    for stage, section in (sections.items() if isinstance(sections, Mapping) else ()):
        if isinstance(section, Mapping) and section.get("epochs") is not None:
            planned[stage] = section["epochs"]
    return planned


def fit_warmups(raw: dict[str, Any], planned: Mapping[str, Any], explicit: set[str]) -> str | None:
    """Shorten each warm-up that is no shorter than its run after ``--epochs`` to the share of
    the run it was configured for (5 of 200 epochs -> 0.05 at ``--epochs 2``), per stage where a
    stage has its own; returns the pipeline.log line saying so (None when nothing changed).

    Why: a quick try of a shipped config with ``--epochs 2`` should train, not be refused. A
    warm-up given with ``--set`` (a key in ``explicit``) is the user's and is never changed; a
    too-long one is still refused by validation, naming its key.
    """
    train = raw.get("train")
    if not isinstance(train, dict):
        return None
    run_epochs = train.get("epochs")
    scopes: list[tuple[str, dict[str, Any], Any]] = [("train", train, planned["train"])]
    sections = raw.get("stage_overrides")
    for stage, section in (sections.items() if isinstance(sections, dict) else ()):
        if isinstance(section, dict) and section.get("warmup_epochs") is not None:
            scopes.append((f"stage_overrides.{stage}", section, planned.get(stage, planned["train"])))
    changes = []
    for prefix, section, configured in scopes:
        key, warmup = f"{prefix}.warmup_epochs", section.get("warmup_epochs", 0.0)
        epochs = section.get("epochs") or run_epochs
        numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool)
                      for v in (warmup, epochs, configured))
        if key in explicit or not numbers or warmup < epochs or configured <= warmup:
            continue  # shorter than the run already, the user's own, or wrong (validation says so)
        section["warmup_epochs"] = round(warmup * epochs / configured, 6)
        changes.append(f"{key} {warmup:g} -> {section['warmup_epochs']:g} ({warmup:g} of the configured "
                       f"{configured:g} epochs)")
    if not changes:
        return None
    return (f"--epochs {run_epochs} is no longer than the configured warm-up, which keeps its share "
            "of the run: " + "; ".join(changes))


def _drop_stage_values(raw: dict[str, Any], name: str) -> None:
    """Remove ``stage_overrides.<stage>.<name>`` from a raw (YAML) config, for every stage."""
    sections = raw.get("stage_overrides")
    if isinstance(sections, dict):
        for section in sections.values():
            if isinstance(section, dict):
                section.pop(name, None)


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise UserError(message)


def _validate_train(t: TrainConfig, stage_lrs: Callable[[], list[float]]) -> None:
    """``stage_lrs`` gives every stage's size-scaled rate (built on demand: it counts each model)."""
    for key, value in (("train.epochs", t.epochs), ("train.batch_size", t.batch_size),
                       ("train.accumulation_steps", t.accumulation_steps),
                       ("train.log_interval", t.log_interval), ("train.step_size", t.step_size)):
        _check(value >= 1, f"config key '{key}': must be at least 1, got {value}")
    for key, value in (("train.num_workers", t.num_workers), ("train.max_oom_retries", t.max_oom_retries),
                       ("train.keep_checkpoints", t.keep_checkpoints), ("train.weight_decay", t.weight_decay),
                       ("train.min_delta", t.min_delta), ("train.min_lr", t.min_lr)):
        _check(value >= 0, f"config key '{key}': must be 0 or more, got {value}")
    _check(t.lr > 0, f"config key 'train.lr': must be positive, got {t.lr}")
    if t.min_lr > 0:  # 0 is below every positive rate: no model needs counting
        lowest = min(stage_lrs())
        _check(t.min_lr < lowest, f"config key 'train.min_lr': must be below every stage's learning rate "
               f"(lowest {lowest:g} after the per-size scaling), got {t.min_lr}")
    _check(t.grad_clip is None or t.grad_clip > 0,  # torch's clip_grad_norm_ flips the sign below 0
           f"config key 'train.grad_clip': must be positive (or null for no clipping), got {t.grad_clip}")
    _check(0.0 <= t.momentum < 1.0, f"config key 'train.momentum': must be in [0, 1), got {t.momentum}")
    _check(not (t.optimizer == "sgd" and t.nesterov and t.momentum == 0),
           "config key 'train.momentum': Nesterov SGD needs a momentum above 0 "
           "(e.g. --set train.momentum=0.9, or --set train.nesterov=false)")
    _check(0.0 < t.gamma < 1.0, f"config key 'train.gamma': a decay factor must be in (0, 1), got {t.gamma}")
    _check(0 <= t.warmup_epochs < t.epochs,
           f"config key 'train.warmup_epochs': must be 0 or more and shorter than train.epochs ({t.epochs}), "
           f"got {t.warmup_epochs} (e.g. --set train.warmup_epochs=0)")
    _check(t.patience is None or t.patience >= 1,
           f"config key 'train.patience': must be at least 1 (or null to disable), got {t.patience}")
    _check(t.checkpoint_every_steps is None or t.checkpoint_every_steps >= 1,
           f"config key 'train.checkpoint_every_steps': must be at least 1 (or null to save at epoch ends "
           f"only), got {t.checkpoint_every_steps}")
    _check(t.checkpoint_every_minutes is None or t.checkpoint_every_minutes > 0,
           f"config key 'train.checkpoint_every_minutes': must be positive (or null), "
           f"got {t.checkpoint_every_minutes}")
    _check(t.monitor in MONITORABLE,
           f"config key 'train.monitor': must be one of {', '.join(MONITORABLE)}, got {t.monitor!r}")
    _check(t.mode == better_mode(t.monitor),
           f"config key 'train.mode': {t.mode!r} would keep the worst epoch of {t.monitor} "
           f"(use --set train.mode={better_mode(t.monitor)})")
    _check(0.0 <= t.label_smoothing < 1.0, "config key 'train.label_smoothing': must be in [0, 1)")


def _validate_models(cfg: RunConfig) -> None:
    """Every role names a timm model (or a short name), sees at least 8 px, and a patch given for
    the patch-embedding models divides each of their sizes."""
    m = cfg.models
    _check(m.patch_size is None or m.patch_size >= 1,
           f"config key 'models.patch_size': must be at least 1, got {m.patch_size}")
    for role in ROLES:
        try:
            timm_name = resolve_model_name(getattr(m, role))
        except UserError as exc:
            raise UserError(f"config key 'models.{role}': {exc}") from None
        size = getattr(m.image_size, role)
        _check(size is None or size >= 8,
               f"config key 'models.image_size.{role}': must be at least 8 (or null for data.image_size), "
               f"got {size}")
        if m.patch_size is not None and embeds_patches(timm_name):
            vit_patch_size(size or cfg.data.image_size, m.patch_size)  # a UserError saying which sizes fit


def validate(cfg: RunConfig) -> None:
    """Cross-field rules the types alone cannot express, checked before anything is written.
    Normalises ``stages`` to pipeline order."""
    unknown = [s for s in cfg.stages if s not in STAGE_NAMES]
    _check(not unknown, f"config key 'stages': unknown stage {', '.join(map(repr, unknown))}; "
           f"allowed: {', '.join(STAGE_NAMES)}")
    _check(bool(cfg.stages), "config key 'stages': at least one stage is needed")
    _check(len(set(cfg.stages)) == len(cfg.stages), "config key 'stages': a stage is listed twice")
    cfg.stages = [s for s in STAGE_NAMES if s in cfg.stages]
    DATASETS.for_key("data.name", cfg.data.name)
    validate_data(cfg.data)
    check_limits(cfg)
    m, r = cfg.models, cfg.runtime
    _validate_models(cfg)
    _check(0.0 <= m.drop_path_rate < 1.0, "config key 'models.drop_path_rate': must be in [0, 1)")
    from src.config.stage_settings import model_name  # the stage table needs timm: imported on use

    _validate_train(cfg.train, lambda: [get_model_specific_lr(model_name(cfg, s), cfg.train.lr)
                                        for s in cfg.stages])
    check_distillation(cfg.distillation)
    _check(r.seeds is None or (bool(r.seeds) and min(r.seeds) >= 0 and len(set(r.seeds)) == len(r.seeds)),
           f"config key 'runtime.seeds': must list distinct seeds, each 0 or more, got {r.seeds} "
           "(e.g. --seeds 42,43,44)")
    _check(r.seeds is None or max(r.seeds) <= MAX_SEED,
           f"config key 'runtime.seeds': each seed must be at most {MAX_SEED}, got {r.seeds}")
    _check(r.seed >= 0, f"config key 'runtime.seed': must be 0 or more, got {r.seed}")
    _check(r.seed <= MAX_SEED, f"config key 'runtime.seed': must be at most {MAX_SEED}, got {r.seed}")
    _check(r.attention_every >= 0,
           f"config key 'runtime.attention_every': must be 0 or more, got {r.attention_every}")
    _check(r.vram_budget_gb is None or r.vram_budget_gb > 0,
           f"config key 'runtime.vram_budget_gb': must be positive (or null to disable), "
           f"got {r.vram_budget_gb}")
    check_stage_overrides(cfg, validate)


def config_to_dict(cfg: RunConfig) -> dict[str, Any]:
    """The nested plain-dict form saved as config.yaml."""
    return drop_unset(settings_dict(cfg))


def dump_config(cfg: RunConfig) -> str:
    """YAML text of ``cfg`` in schema order (what config.yaml holds)."""
    return yaml.safe_dump(config_to_dict(cfg), sort_keys=False, default_flow_style=False)


def flatten(cfg: RunConfig) -> dict[str, Any]:
    """Dotted key -> value, e.g. for comparing a saved run's config with a new one."""
    out: dict[str, Any] = {}

    def walk(node: Mapping[str, Any], prefix: str) -> None:
        for key, value in node.items():
            if isinstance(value, Mapping):
                walk(value, f"{prefix}{key}.")
            else:
                out[f"{prefix}{key}"] = value

    walk(config_to_dict(cfg), "")
    return out
