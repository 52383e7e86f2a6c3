"""Can a saved run be continued with the settings asked for now? The one table that says so.

A resume that silently mixes two different runs (another model, another split, another
learning rate) produces numbers that mean nothing, so those are refused by name; settings
that only change how long or how visibly the run goes on are allowed and recorded.

``ENGINE_RULES`` classifies every ``TrainConfig`` field once. The pipeline's rules for its
dotted ``train.*`` keys are read from here (``src.config.change_rules``), so the run directory
check and the engine's checkpoint check can never disagree about a training setting again.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Literal

from src.engine.settings import TrainConfig
from src.errors import IncompatibleResumeError

Rule = Literal["free", "batch_split", "warmup_share", "recovery", "training"]
FREE: Rule = "free"  # how long, how visibly, where: never changes what an update does
BATCH_SPLIT: Rule = "batch_split"  # free while the effective batch (batch_size x accumulation) stays
WARMUP_SHARE: Rule = "warmup_share"  # free while the warm-up keeps its share of the epochs (--epochs N)
RECOVERY: Rule = "recovery"  # may change after a divergence (src.engine.divergence), else like training
TRAINING: Rule = "training"  # what an update does: a stage that has trained must keep it

ENGINE_RULES: dict[str, Rule] = {
    "epochs": FREE, "patience": FREE, "min_delta": FREE, "log_interval": FREE,
    "checkpoint_every_steps": FREE, "checkpoint_every_minutes": FREE, "keep_checkpoints": FREE,
    "nonfinite_policy": FREE, "max_oom_retries": FREE, "num_workers": FREE, "tensorboard": FREE,
    "progress": FREE, "channels_last": FREE, "grad_checkpointing": FREE,
    "batch_size": BATCH_SPLIT, "accumulation_steps": BATCH_SPLIT,
    "lr": RECOVERY, "grad_clip": RECOVERY, "amp": RECOVERY,
    "optimizer": TRAINING, "momentum": TRAINING, "nesterov": TRAINING, "weight_decay": TRAINING,
    "scheduler": TRAINING, "warmup_epochs": WARMUP_SHARE, "min_lr": TRAINING, "step_size": TRAINING,
    "gamma": TRAINING, "monitor": TRAINING, "mode": TRAINING, "label_smoothing": TRAINING,
}  # fmt: skip
assert set(ENGINE_RULES) == {f.name for f in dataclasses.fields(TrainConfig)}, "classify every field"


def effective_batch(engine: dict[str, Any]) -> int:
    return int(engine.get("batch_size", 0)) * int(engine.get("accumulation_steps", 0))


def same_warmup_share(saved: dict[str, Any], current: dict[str, Any]) -> bool:
    """Whether the warm-up is the same share of the run on both sides: what a warm-up fitted to
    ``--epochs`` keeps (0.025 of 1 epoch, then 0.05 of 2), so continuing a short try with more
    epochs is a longer run, like any change of ``epochs``, not another schedule."""
    def share(engine: dict[str, Any]) -> float:
        epochs = float(engine.get("epochs") or 0)
        return float(engine.get("warmup_epochs") or 0) / epochs if epochs > 0 else math.inf
    return math.isclose(share(saved), share(current), rel_tol=1e-9)


def allowed_change(field: str, saved: dict[str, Any], current: dict[str, Any], *, diverged: bool) -> bool:
    """Whether changing engine ``field`` from ``saved`` to ``current`` keeps a started stage's meaning."""
    rule = ENGINE_RULES.get(field, TRAINING)
    if rule == BATCH_SPLIT:
        return effective_batch(saved) == effective_batch(current)
    if rule == WARMUP_SHARE:
        return same_warmup_share(saved, current)
    return rule == FREE or (rule == RECOVERY and diverged)


def _differing(saved: dict[str, Any], current: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    return {key: (saved.get(key), current.get(key)) for key in sorted(set(saved) | set(current))
            if saved.get(key) != current.get(key)}


def _describe(changes: dict[str, tuple[Any, Any]]) -> str:
    return ", ".join(f"{key} ({old!r} -> {new!r})" for key, (old, new) in changes.items())


def _shared_changes(saved: dict[str, Any], current: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """The settings both sides record that differ. Settings that only one side records are
    skipped: which settings identify a run may change between versions of the product (a loss
    registered since adds its section), and an upgrade must not strand a run that is half done."""
    return {key: (saved[key], current[key]) for key in sorted(set(saved) & set(current))
            if saved[key] != current[key]}


def _leaves(node: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested settings as dotted keys (an empty mapping is a value of its own)."""
    out: dict[str, Any] = {}
    for key, value in node.items():
        if isinstance(value, dict) and value:
            out.update(_leaves(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _run_changes(saved: dict[str, Any], current: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """The run identity, compared setting by setting; its config's settings where both record them."""
    changes = _differing({k: v for k, v in saved.items() if k != "config"},
                         {k: v for k, v in current.items() if k != "config"})
    changes.update({f"config.{key}": change for key, change in
                    _shared_changes(saved.get("config", {}), current.get("config", {})).items()})
    return changes


DEFAULT_ADVICE = ("Re-run with the old values to continue it, or delete the stage's folder to train "
                  "the stage from scratch")


def check_resume(saved: dict[str, Any], current: dict[str, Any], source: str, *,
                 diverged: bool = False, advice: str = DEFAULT_ADVICE) -> dict[str, tuple[Any, Any]]:
    """Compare the ``run``, ``objective``, ``engine`` and ``world_size`` facts of a checkpoint
    with the current ones. Raises IncompatibleResumeError naming every breaking difference;
    returns the allowed engine changes (key -> (saved, current)) for the run log. ``diverged``:
    the stage stopped on a non-finite loss, so the recovery settings may change too."""
    breaking = {f"run.{key}": change for key, change in _run_changes(saved["run"], current["run"]).items()}
    breaking.update({f"objective.{key}": change for key, change in
                     _shared_changes(_leaves(saved["objective"]), _leaves(current["objective"])).items()})
    if saved["world_size"] != current["world_size"]:
        breaking["world_size"] = (saved["world_size"], current["world_size"])
    engine = _differing(saved["engine"], current["engine"])
    allowed = {key: change for key, change in engine.items()
               if allowed_change(key, saved["engine"], current["engine"], diverged=diverged)}
    breaking.update({f"engine.{k}": v for k, v in engine.items() if k not in allowed})
    if breaking:
        recovery = [k for k, rule in ENGINE_RULES.items() if rule == RECOVERY]
        raise IncompatibleResumeError(
            f"cannot resume from {source}: it was trained with different settings: {_describe(breaking)}. "
            f"{advice} ({', '.join(recovery)} may change only after training diverged)"
        )
    return allowed
