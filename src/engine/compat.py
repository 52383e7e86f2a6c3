"""Can a saved run be continued with the settings asked for now?

A resume that silently mixes two different runs (another model, another split, another
learning rate) produces numbers that mean nothing, so those are refused by name; settings
that only change how long or how visibly the run goes on are allowed and recorded.
"""
from __future__ import annotations

from typing import Any

from src.errors import IncompatibleResumeError

# EngineConfig fields that change neither the data seen so far nor the meaning of an update.
HARMLESS_FIELDS = frozenset({
    "epochs", "patience", "log_interval", "checkpoint_every_steps", "checkpoint_every_minutes",
    "progress", "num_workers", "tensorboard", "max_oom_retries",
})


def _differing(saved: dict[str, Any], current: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    return {key: (saved.get(key), current.get(key)) for key in sorted(set(saved) | set(current))
            if saved.get(key) != current.get(key)}


def _describe(changes: dict[str, tuple[Any, Any]]) -> str:
    return ", ".join(f"{key} ({old!r} -> {new!r})" for key, (old, new) in changes.items())


def check_resume(saved: dict[str, Any], current: dict[str, Any], source: str) -> dict[str, tuple[Any, Any]]:
    """Compare the ``run``, ``objective``, ``engine`` and ``world_size`` facts of a checkpoint
    with the current ones. Raises IncompatibleResumeError naming every breaking difference;
    returns the harmless engine changes (key -> (saved, current)) for the run log."""
    breaking: dict[str, tuple[Any, Any]] = {}
    for section in ("run", "objective"):
        changed = _differing(saved[section], current[section])
        breaking.update({f"{section}.{key}": change for key, change in changed.items()})
    if saved["world_size"] != current["world_size"]:
        breaking["world_size"] = (saved["world_size"], current["world_size"])
    engine = _differing(saved["engine"], current["engine"])
    old, new = saved["engine"], current["engine"]
    same_effective_batch = (old.get("batch_size", 0) * old.get("accumulation_steps", 0)
                            == new.get("batch_size", 0) * new.get("accumulation_steps", 0))
    split_only = {"batch_size", "accumulation_steps"} if same_effective_batch else set()
    harmless = {key: change for key, change in engine.items() if key in HARMLESS_FIELDS | split_only}
    breaking.update({f"engine.{k}": v for k, v in engine.items() if k not in harmless})
    if breaking:
        raise IncompatibleResumeError(
            f"cannot resume from {source}: it was trained with different settings: {_describe(breaking)}; "
            "use --resume never (or another --output-dir) to start this stage again"
        )
    return harmless
