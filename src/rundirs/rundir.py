"""The run directory: where a run's files live, and whether a re-run may continue it.

Re-running the same command continues the run (docs/CONTRACTS.md); the saved ``config.yaml`` is the
record of what the finished work was trained with, so a new config is compared with it and a
change that would make the finished stages and the new ones incomparable is refused by name.
Nothing here ever deletes user data.
"""
from __future__ import annotations

import copy
import json
import logging
import os
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from src.config.change_rules import STATUS_ORDER, StageStatus, compare_configs
from src.config.loader import config_from_dict, dump_config, read_yaml, retired_notes
from src.config.schema import RunConfig
from src.config.stages import STAGES
from src.data.split import SPLIT_FILE
from src.engine.checkpoint import LATEST, PREVIOUS
from src.engine.divergence import has_diverged
from src.errors import IncompatibleResumeError, UserError, error_detail
from src.rundirs.lock import LOCK_FILE
from src.utils.atomic import atomic_write_text, is_temp_file, remove_temp_files
from src.utils.weights import WEIGHTS_FILE

LOGGER = logging.getLogger("kd_pipeline.rundir")
# What the product itself puts in a run directory before config.yaml exists (a crash between
# writing split.json and config.yaml); any other entry means the folder is not a run.
OWN_ENTRIES = frozenset({SPLIT_FILE, "pipeline.log", LOCK_FILE})
RESULT_SCORES = ("accuracy", "f1_score")  # what every report reads of a finished stage
SEED_PREFIX = "seed-"  # a seed's chain folder: <run>/seed-<n>/ (src/rundirs/seeds.py)


@dataclass(frozen=True)
class RunDirectory:
    """Paths of the run-directory contract (docs/CONTRACTS.md, "The run directory") rooted at ``root``."""

    root: Path

    @property
    def config_path(self) -> Path:
        return self.root / "config.yaml"

    @property
    def split_path(self) -> Path:
        return self.root / SPLIT_FILE

    @property
    def log_path(self) -> Path:
        return self.root / "pipeline.log"

    def stage_dir(self, stage: str) -> Path:
        return self.root / stage

    def result_path(self, stage: str) -> Path:
        return self.stage_dir(stage) / "result.json"

    def weights_path(self, stage: str) -> Path:
        return self.stage_dir(stage) / WEIGHTS_FILE

    def read_result(self, stage: str) -> dict[str, Any]:
        """A finished stage's result.json; unreadable means the user must retrain that stage."""
        path = self.result_path(stage)
        try:
            result = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:  # ValueError: not JSON, or not UTF-8
            raise UserError(f"cannot read {path} ({error_detail(exc, 120)}); delete that stage folder to "
                            "train it again") from None
        test = result.get("test") if isinstance(result, dict) else None
        scored = isinstance(test, dict) and all(isinstance(test.get(k), (int, float)) for k in RESULT_SCORES)
        if not scored:
            raise UserError(f"{path} is not a stage result (no test {', '.join(RESULT_SCORES)}); delete "
                            f"{self.stage_dir(stage)} to train that stage again")
        return result

    def predictions_path(self, stage: str, split: str = "test") -> Path:
        """The stage's labels and predictions on ``split``: test (the verdict, the confusion
        matrix) or val (choices made without the test images, e.g. bench/kd_study.py)."""
        return self.stage_dir(stage) / f"{split}_predictions.csv"

    def finished_stages(self) -> list[str]:
        """Stages whose result.json exists (their work is reused, never redone)."""
        return [s for s in STAGES if self.result_path(s).is_file()]

    def stage_status(self, stage: str) -> StageStatus:
        """finished (result.json), diverged or trained (a checkpoint), or fresh: nothing learned yet,
        whatever else its folder holds (an epochs.csv header, the log of a crashed first epoch)."""
        folder = self.stage_dir(stage)
        if self.result_path(stage).is_file():
            return "finished"
        if any((folder / name).is_file() for name in (LATEST, PREVIOUS)):
            return "diverged" if has_diverged(folder) else "trained"
        return "fresh"

    def seed_chain(self, seed: int) -> RunDirectory:
        """The chain folder of ``seed`` in a run with several seeds."""
        return RunDirectory(self.root / f"{SEED_PREFIX}{seed}")

    def chain_dirs(self) -> list[RunDirectory]:
        """This run directory and its seeds' chains (``seed-<n>/``, src/rundirs/seeds.py)."""
        chains = sorted(folder for folder in self.root.glob(f"{SEED_PREFIX}*") if folder.is_dir())
        return [self, *(RunDirectory(folder) for folder in chains)]

    def stage_statuses(self) -> dict[str, StageStatus]:
        """Each stage's most advanced status over every chain of the run: one config.yaml governs
        them all, so a stage that holds trained state in any chain holds it for the run."""
        return {stage: max((chain.stage_status(stage) for chain in self.chain_dirs()), key=STATUS_ORDER.index)
                for stage in STAGES}

    def is_empty(self) -> bool:
        """Nothing in it but this process's lock (or no folder at all)."""
        return not self.root.exists() or all(entry.name == LOCK_FILE for entry in self.root.iterdir())

    def remove_temp_files(self) -> None:
        """Temporary files of writes a killed run left (one may be as big as a checkpoint); only
        ever called under the run lock, so no other process is writing them."""
        for chain in self.chain_dirs():
            for folder in (chain.root, *(chain.stage_dir(stage) for stage in STAGES)):
                remove_temp_files(folder)

    def retired_notes(self) -> list[str]:
        """A line per retired key its config.yaml still holds (a run made by an earlier version)."""
        if not self.config_path.is_file():
            return []
        return retired_notes(read_yaml(self.config_path), str(self.config_path))

    def saved_config(self) -> RunConfig | None:
        """The config the run was started with, or None for a new run directory."""
        if not self.config_path.is_file():
            return None
        try:
            return config_from_dict(read_yaml(self.config_path))
        except UserError as exc:
            raise UserError(f"the saved {self.config_path} cannot be read ({exc}); fix or restore it, "
                            "or choose a new --output-dir") from None


def open_run(root: Path, option: str = "--run-dir",
             data_dir: str | Path | None = None) -> tuple[RunDirectory, RunConfig]:
    """A run directory whose config.yaml and split.json can rebuild its data exactly (evaluate.py,
    export.py, --teacher-from); ``option`` is the flag that named it, for the advice. ``data_dir``
    says where the data is now (``--data-dir``: moved since training); split.json's identity check
    proves it is the same data. A relative data_dir saved by older versions resolves against the cwd."""
    run = RunDirectory(root)
    cfg = run.saved_config()
    if cfg is not None and data_dir is not None:
        cfg.data.data_dir = str(data_dir)
    if cfg is None:
        raise UserError(f"{root} is not a run directory (no config.yaml); pass a training run's "
                        f"--output-dir as {option}")
    if not run.split_path.is_file():
        raise UserError(f"{root} has no {SPLIT_FILE}: the run never got as far as splitting its data; "
                        f"re-run its training command, or pass another run's --output-dir as {option}")
    return run, cfg


def check_stage_plan(stages: list[str], finished: list[str]) -> None:
    """Every KD stage's teacher must be run in this invocation or already finished."""
    for stage in stages:
        teacher = STAGES[stage].teacher_stage
        if teacher is not None and teacher not in stages and teacher not in finished:
            raise UserError(
                f"stage '{stage}' distils from '{teacher}', which is neither in --stages nor finished "
                f"in this run directory; add it (e.g. --stages {teacher},{stage})"
            )


def _check_not_foreign(run_dir: RunDirectory, trained: list[str]) -> None:
    """A folder without config.yaml is a new run only if it holds nothing but what a run writes
    before config.yaml: anything else is the user's (summary.md would be overwritten) or a run
    whose record is gone (its stages would be reused under a config nobody can check)."""
    if not run_dir.root.is_dir():
        return
    foreign = sorted(entry.name for entry in run_dir.root.iterdir()
                     if entry.name not in OWN_ENTRIES and not is_temp_file(entry))
    if trained:
        raise UserError(
            f"{run_dir.root} holds trained stages ({', '.join(trained)}) but no config.yaml: restore "
            "config.yaml to continue that run, or choose another --output-dir for a new one"
        )
    if foreign:
        shown = ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "")
        raise UserError(
            f"--output-dir {run_dir.root} already holds files ({shown}) and is not a kd-pipeline run "
            "(no config.yaml); choose a new or empty folder, so nothing of yours is overwritten"
        )


def check_output_dir(root: Path) -> None:
    """Refuse a run directory that could never be made, before anything is written for it."""
    try:
        _check_output_dir(root)
    except OSError as exc:  # a name too long for the file system, a folder that cannot be read
        raise UserError(f"cannot create --output-dir {root}: {exc.strerror}") from None


def _check_output_dir(root: Path) -> None:
    if root.exists() and not root.is_dir():
        raise UserError(f"--output-dir {root} exists and is not a directory")
    parent = root.absolute()
    while not parent.exists():
        parent = parent.parent
    if parent != root.absolute() and not parent.is_dir():
        raise UserError(f"cannot create --output-dir {root}: {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"cannot write to --output-dir {root}: {parent} is not writable")


def _with_absolute_data_dir(cfg: RunConfig) -> RunConfig:
    """``cfg`` with ``data.data_dir`` as an absolute path (as this process sees it), for config.yaml."""
    absolute = copy.deepcopy(cfg)
    absolute.data.data_dir = os.path.abspath(cfg.data.data_dir)
    return absolute


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
    check_output_dir(run_dir.root)
    cfg = _with_absolute_data_dir(cfg)  # evaluate.py and export.py find the data from any directory
    saved = run_dir.saved_config()
    statuses = run_dir.stage_statuses()
    trained = [stage for stage, status in statuses.items() if status != "fresh"]
    if saved is None:
        _check_not_foreign(run_dir, trained)
    elif trained and not run_dir.split_path.is_file():
        raise UserError(
            f"{run_dir.split_path} is missing, but stage {', '.join(trained)} trained on the split it "
            "recorded: restore split.json, or choose another --output-dir for a new run"
        )
    notes: list[str] = []
    if saved is not None:
        breaking, allowed = compare_configs(saved, cfg, statuses, split_exists=run_dir.split_path.is_file())
        if breaking:
            stages_named = any("already trained with the old value" in line for line in breaking)
            raise IncompatibleResumeError(
                f"cannot continue the run in {run_dir.root}: its config.yaml differs in "
                + "; ".join(breaking)
                + ". Use the old values, "
                + ("delete the folders of the stages named to train them again, " if stages_named else "")
                + "or choose another --output-dir for a new run"
            )
        notes = allowed
    if write and (saved is None or notes):
        stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
        header = f"# kd-pipeline run configuration, written {stamp}\n"
        if notes:
            header += "".join(f"# changed on resume: {note}\n" for note in notes)
        atomic_write_text(run_dir.config_path, header + dump_config(cfg))
    return notes
