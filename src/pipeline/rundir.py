"""The run directory: where a run's files live, and whether a re-run may continue it.

Re-running the same command continues the run (DESIGN.md); the saved ``config.yaml`` is the
record of what the finished work was trained with, so a new config is compared with it and a
change that would make the finished stages and the new ones incomparable is refused by name.
Nothing here ever deletes user data.
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from src.config.loader import config_from_dict, dump_config, flatten, read_yaml
from src.config.schema import RunConfig
from src.config.stage_overrides import override_target
from src.errors import IncompatibleResumeError, UserError
from src.pipeline.stages import KD_STAGES, STAGES
from src.utils.atomic import atomic_write_text

LOGGER = logging.getLogger("kd_pipeline.rundir")

# Keys that may change between runs of one run directory without touching what was learned.
HARMLESS_KEYS = frozenset({
    # data.data_dir: a moved dataset is still the same data; split.json checks its identity
    "stages", "data.download", "data.data_dir",
    "runtime.seeds",  # each seed's chain keeps its own folder; adding a seed leaves the others as they are
    "runtime.device", "runtime.vram_budget_gb", "runtime.attention_every",
    "runtime.deterministic", "train.epochs", "train.patience", "train.min_delta", "train.log_interval",
    "train.checkpoint_every_steps", "train.checkpoint_every_minutes", "train.num_workers",
    "train.tensorboard", "train.progress", "train.max_oom_retries", "train.nonfinite_policy",
    "report.benchmark",  # what the report measures after training, never what was trained
})
# Keys that change the data: split.json was made with them even before any stage has started.
_ALWAYS_BREAKING_PREFIXES = ("data.", "runtime.seed")


@dataclass(frozen=True)
class RunDirectory:
    """Paths of the run-directory contract (DESIGN.md) rooted at ``root``."""

    root: Path

    @property
    def config_path(self) -> Path:
        return self.root / "config.yaml"

    @property
    def log_path(self) -> Path:
        return self.root / "pipeline.log"

    def stage_dir(self, stage: str) -> Path:
        return self.root / stage

    def result_path(self, stage: str) -> Path:
        return self.stage_dir(stage) / "result.json"

    def weights_path(self, stage: str) -> Path:
        return self.stage_dir(stage) / "model.safetensors"

    def read_result(self, stage: str) -> dict[str, Any]:
        """A finished stage's result.json; unreadable means the user must retrain that stage."""
        path = self.result_path(stage)
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise UserError(f"cannot read {path} ({exc}); delete that stage folder to train it again"
                            ) from None

    def predictions_path(self, stage: str) -> Path:
        """The stage's test-split labels and predictions (the report's confusion matrix)."""
        return self.stage_dir(stage) / "test_predictions.csv"

    def finished_stages(self) -> list[str]:
        """Stages whose result.json exists (their work is reused, never redone)."""
        return [s for s in STAGES if self.result_path(s).is_file()]

    def started_stages(self) -> list[str]:
        """Stages with any file in their folder (finished or in progress), here or in any seed's
        chain (``seed-<n>/``, see src/pipeline/seeds.py): one config.yaml governs them all."""
        folders = [self.root, *sorted(self.root.glob("seed-*"))]
        return [s for s in STAGES if any((f / s).is_dir() and any((f / s).iterdir()) for f in folders)]

    def is_empty(self) -> bool:
        return not self.root.exists() or not any(self.root.iterdir())

    def saved_config(self) -> RunConfig | None:
        """The config the run was started with, or None for a new run directory."""
        if not self.config_path.is_file():
            return None
        try:
            return config_from_dict(read_yaml(self.config_path))
        except UserError as exc:
            raise UserError(f"the saved {self.config_path} cannot be read ({exc}); "
                            "choose a new --output-dir") from None


def _stages_depending_on(key: str) -> tuple[str, ...]:
    """The stages whose results a change of ``key`` would invalidate."""
    if (target := override_target(key)) is not None:
        return (target[0],)
    if key.startswith("distillation."):
        return KD_STAGES
    return tuple(STAGES)


def compare_configs(saved: RunConfig, new: RunConfig, started: list[str]) -> tuple[list[str], list[str]]:
    """(breaking, harmless) descriptions of the changes from ``saved`` to ``new``.

    A change is breaking when it alters the data, or the architectures or a training setting of a
    stage that has already started; until a stage starts, a model that failed to build (a typo,
    an offline pretrained download) may still be corrected in the same run directory.
    """
    old, cur = flatten(saved), flatten(new)
    breaking, harmless = [], []
    for key in sorted(set(old) | set(cur)):
        if old.get(key) == cur.get(key):
            continue
        change = f"{key}: {old.get(key)!r} -> {cur.get(key)!r}"
        rule_key = target[1] if (target := override_target(key)) else key  # an override follows its train key
        if rule_key in HARMLESS_KEYS:
            harmless.append(change)
        elif key.startswith(_ALWAYS_BREAKING_PREFIXES):
            breaking.append(change)
        elif touched := [s for s in _stages_depending_on(key) if s in started]:
            breaking.append(f"{change} (stage {', '.join(touched)} already trained with the old value)")
        else:
            harmless.append(change)
    return breaking, harmless


def check_stage_plan(stages: list[str], finished: list[str]) -> None:
    """Every KD stage's teacher must be run in this invocation or already finished."""
    for stage in stages:
        teacher = STAGES[stage].teacher_stage
        if teacher is not None and teacher not in stages and teacher not in finished:
            raise UserError(
                f"stage '{stage}' distils from '{teacher}', which is neither in --stages nor finished "
                f"in this run directory; add it (e.g. --stages {teacher},{stage})"
            )


def _check_creatable(root: Path) -> None:
    """Refuse a run directory that could never be made, before anything is written for it."""
    parent = root.absolute()
    while not parent.exists():
        parent = parent.parent
    if parent != root.absolute() and not parent.is_dir():
        raise UserError(f"cannot create --output-dir {root}: {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"cannot write to --output-dir {root}: {parent} is not writable")


def prepare_run_directory(run_dir: RunDirectory, cfg: RunConfig, resume: str, *, write: bool) -> list[str]:
    """Decide whether ``cfg`` may run in ``run_dir``; write or update config.yaml (when ``write``).

    Returns notes about accepted changes (for pipeline.log). Raises UserError for
    ``--resume never`` on a non-empty folder and IncompatibleResumeError for breaking changes.
    Whether each KD stage has its teacher is checked per seed's chain by the runner
    (``check_stage_plan``), after ``--teacher-from`` has said what it brings.
    """
    if resume == "never" and not run_dir.is_empty():
        raise UserError(
            f"run directory {run_dir.root} is not empty and --resume never was given; "
            "choose another --output-dir (or --resume auto to continue that run)"
        )
    if run_dir.root.exists() and not run_dir.root.is_dir():
        raise UserError(f"--output-dir {run_dir.root} exists and is not a directory")
    _check_creatable(run_dir.root)
    saved = run_dir.saved_config()
    notes: list[str] = []
    if saved is not None:
        breaking, harmless = compare_configs(saved, cfg, run_dir.started_stages())
        if breaking:
            raise IncompatibleResumeError(
                f"cannot continue the run in {run_dir.root}: its config.yaml differs in "
                + "; ".join(breaking)
                + ". Use the old values, or choose another --output-dir for a new run"
            )
        notes = harmless
    if write and (saved is None or notes):
        stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
        header = f"# kd-pipeline run configuration, written {stamp}\n"
        if notes:
            header += "".join(f"# changed on resume: {note}\n" for note in notes)
        atomic_write_text(run_dir.config_path, header + dump_config(cfg))
    return notes
