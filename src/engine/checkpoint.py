"""A stage's checkpoint files: crash-safe saving and damage-tolerant loading.

Files in the stage folder while it trains:

    checkpoint_latest.pt    the newest full training state (what a resume continues from)
    checkpoint_previous.pt  the latest before it, kept so a damaged latest is not the end
    checkpoint_best.pt      the state with the best monitored validation value (a hard link to
                            latest when that is the best, so it costs no space)

A finished stage's best weights are in model.safetensors (the engine ends on them). ``prune``
then keeps at most ``keep`` full states (``train.keep_checkpoints``, default 1: latest), and
checkpoint_best.pt only as a full state of its own within that limit: anything less would store
the best weights a second time. ``load_best`` reads model.safetensors when checkpoint_best.pt is gone.

State contract: a checkpoint is a dict holding only data ``torch.load(weights_only=True)``
accepts: tensors, numbers, strings, bools, None, lists, tuples and dicts of these (model,
optimizer, scheduler and scaler ``state_dict()``s qualify). Anything else (numpy arrays,
custom classes, ``torch.__version__`` objects) must be converted first, e.g. a numpy RNG state
to a tensor or list. Loading never unpickles arbitrary objects, so a checkpoint file cannot run
code.

Saving order (``save_latest``): the new state is written to a temporary file and fsynced; only
after that succeeded is the old latest renamed to previous, then the new file is renamed to
latest (``src.utils.atomic``). At every moment a complete checkpoint exists under one of the two
names. If a resume had to fall back to previous because latest was damaged, the damaged latest
is never rotated over it: the file resumed from survives until a newer one is on disk.
"""
from __future__ import annotations

import logging
import os
import platform
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import timm
import torch
import torchvision
from safetensors import SafetensorError
from safetensors.torch import load_file

from src.errors import UserError
from src.utils.atomic import atomic_link_or_copy, atomic_write_with, remove_temp_files
from src.utils.weights import WEIGHTS_FILE

LATEST = "checkpoint_latest.pt"
PREVIOUS = "checkpoint_previous.pt"
BEST = "checkpoint_best.pt"
CHECKPOINT_FILES = "checkpoint_*.pt"  # the three above, as a glob (their temporary files' names)

log = logging.getLogger("kd_pipeline.checkpoint")  # under the pipeline logger: lands in pipeline.log


def library_versions() -> dict[str, str]:
    """Versions that produced a checkpoint, as plain strings (torch's version object is not
    weights_only-safe)."""
    return {
        "torch": str(torch.__version__),
        "torchvision": str(torchvision.__version__),
        "timm": str(timm.__version__),
        "python": platform.python_version(),
    }


class CheckpointStore:
    """Reads and writes one stage folder's checkpoints. ``required_keys``: what a usable state must hold."""

    def __init__(self, stage_dir: Path, required_keys: Iterable[str] = ("model",)) -> None:
        self.stage_dir = Path(stage_dir)
        self.required_keys = tuple(required_keys)
        self.latest_path = self.stage_dir / LATEST
        self.previous_path = self.stage_dir / PREVIOUS
        self.best_path = self.stage_dir / BEST
        self.weights_path = self.stage_dir / WEIGHTS_FILE  # a finished stage's best weights
        self._latest_damaged = False  # set when a load found latest unusable: never rotate it

    def save_latest(self, state: dict[str, Any]) -> Path:
        """Write ``state`` as the new latest; the old latest (if sound) becomes previous.

        Temporary files a killed process left behind (each as big as a checkpoint) are removed
        first: only the saving process (rank 0) writes here, so none can be in use.
        """
        remove_temp_files(self.stage_dir, CHECKPOINT_FILES)

        def write(tmp: Path) -> None:
            _save(state, tmp)
            # Rotate only once the new state is complete and on disk.
            if self.latest_path.exists() and not self._latest_damaged:
                os.replace(self.latest_path, self.previous_path)

        atomic_write_with(self.latest_path, write)
        self._latest_damaged = False
        return self.latest_path

    def link_best(self, source: Path) -> Path:
        """Make checkpoint_best.pt the state already saved in ``source``: a hard link instead
        of a second checkpoint-sized write (these files are only ever replaced by a rename,
        never rewritten in place, so the link keeps the state); a copy where links fail."""
        return atomic_link_or_copy(source, self.best_path)

    def load_latest(self, map_location: str | torch.device = "cpu") -> tuple[dict[str, Any], Path] | None:
        """The newest loadable state and its file, or None when the stage has no checkpoint yet.

        A missing or damaged latest falls back to previous with a warning; when files exist but
        none loads, a UserError says so (silently starting over would discard the run).
        """
        problems: list[str] = []
        for path in (self.latest_path, self.previous_path):
            if not path.exists():
                if path == self.latest_path and self.previous_path.exists():
                    problems.append(f"{path} is missing")
                    log.warning("%s is missing (interrupted save?); trying %s", path, self.previous_path.name)
                continue
            try:
                state = self._read(path, map_location)
            except _Damaged as err:
                problems.append(f"{path}: {err}")
                if path == self.latest_path:
                    self._latest_damaged = True
                    log.warning("checkpoint %s is unusable (%s); trying %s", path, err, PREVIOUS)
                else:
                    log.warning("checkpoint %s is unusable (%s)", path, err)
                continue
            if path == self.previous_path:
                log.warning("resuming from %s", path)
            return state, path
        if not problems:
            return None
        raise UserError(
            f"no usable checkpoint in {self.stage_dir}: " + "; ".join(problems)
            + f" (delete {self.stage_dir} to train the stage again)"
        )

    def load(self, path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
        """An explicitly named checkpoint (``--resume PATH``); any problem is a UserError."""
        path = Path(path)
        if not path.is_file():
            raise UserError(f"checkpoint {path} does not exist")
        try:
            return self._read(path, map_location)
        except _Damaged as err:
            raise UserError(f"cannot load checkpoint {path}: {err}") from None

    def load_best(self, map_location: str | torch.device = "cpu") -> dict[str, Any]:
        """The best epoch's state (``{"model": ...}`` at least): checkpoint_best.pt, or once the
        stage has finished and ``prune`` removed it, the best weights in model.safetensors."""
        if self.best_path.is_file():
            try:
                return self._read(self.best_path, map_location, required=("model",))
            except _Damaged as err:
                raise UserError(f"cannot load checkpoint {self.best_path}: {err}") from None
        if not self.weights_path.is_file():
            raise UserError(f"checkpoint {self.best_path} does not exist, nor does {self.weights_path}: the "
                            f"best weights are lost (delete {self.stage_dir} to train the stage again)")
        try:
            return {"model": load_file(str(self.weights_path), device=str(map_location))}
        except (OSError, SafetensorError) as err:
            raise UserError(f"cannot load {self.weights_path}: {type(err).__name__}: {err}") from None

    def prune(self, keep: int) -> list[Path]:
        """Once the stage is finished (its best weights in model.safetensors): keep at most ``keep``
        full training states (largest files of a run), preferring latest (the stage can be
        continued with more epochs), then best, then previous. checkpoint_best.pt goes unless it
        is such a state of its own: as a second name of latest, or as weights alone (what runs made
        before this rule kept), it would only repeat model.safetensors. Without model.safetensors
        it stays: it may be the only copy of the best weights. Temporary files a killed save left
        are removed too. Returns what it deleted."""
        removed = remove_temp_files(self.stage_dir, CHECKPOINT_FILES)
        keep_latest = keep >= 1 and self.latest_path.is_file()
        budget = keep - int(keep_latest)
        if self.best_path.is_file() and self.weights_path.is_file():
            if budget >= 1 and not _same_file(self.best_path, self.latest_path) and self._full_best():
                budget -= 1
            else:
                removed.append(self.best_path)
        if budget < 1 and self.previous_path.is_file():
            removed.append(self.previous_path)
        if not keep_latest and self.latest_path.is_file():
            removed.append(self.latest_path)
        for path in removed:
            path.unlink(missing_ok=True)
        return removed

    def _full_best(self) -> bool:
        """Whether checkpoint_best.pt is a full training state (not the weights alone, not damaged).
        Mapped, not read: the runner prunes every finished stage on every run."""
        try:
            return "optimizer" in self._read(self.best_path, "cpu", required=("model",), mmap=True)
        except _Damaged as err:  # nothing to gain from it; the stage's weights are in model.safetensors
            log.warning("checkpoint %s is unusable (%s); removing it", self.best_path, err)
            return False

    def _read(self, path: Path, map_location: str | torch.device,
              required: Iterable[str] | None = None, *, mmap: bool = False) -> dict[str, Any]:
        try:
            state = _load(path, map_location, mmap)
        except Exception as err:  # truncated zip, garbage bytes, unsafe pickle: all mean "damaged"
            raise _Damaged(_reason(err)) from err
        if not isinstance(state, dict):
            raise _Damaged(f"holds a {type(state).__name__}, not a checkpoint dict")
        missing = [key for key in (self.required_keys if required is None else required) if key not in state]
        if missing:
            raise _Damaged(f"missing keys {missing}")
        return state


def _load(path: Path, map_location: str | torch.device, mmap: bool) -> Any:
    """``torch.load`` with weights_only. ``mmap``: tensors stay in the file until used, so looking
    at a checkpoint's keys costs milliseconds, not a read of the whole file; a file that cannot be
    mapped (torch's pre-zip format) is judged by a plain read, so mapping never changes what counts
    as damaged."""
    if mmap:
        try:
            return torch.load(path, map_location=map_location, weights_only=True, mmap=True)
        except Exception:  # the plain read below reports the real problem
            pass
    return torch.load(path, map_location=map_location, weights_only=True)


def _same_file(a: Path, b: Path) -> bool:
    return a.is_file() and b.is_file() and os.path.samefile(a, b)


def _save(state: dict[str, Any], tmp: Path) -> None:
    """torch.save through a Python file object, fsynced: a full disk then keeps its OSError in the
    exception chain (torch.save on a path reports only "file write failed"), see src.utils.atomic."""
    with open(tmp, "wb") as handle:
        torch.save(state, handle)
        handle.flush()
        os.fsync(handle.fileno())


def _reason(err: Exception) -> str:
    """One short line for a failed ``torch.load`` (torch's weights_only message is a page long)."""
    text = str(err)
    marker = "WeightsUnpickler error:"
    if marker in text:  # keep torch's actual finding, e.g. "Unsupported global: GLOBAL numpy..."
        text = text.split(marker, 1)[1].split(" was not an allowed global", 1)[0]
    lines = text.strip().splitlines()
    return f"{type(err).__name__}: {lines[0] if lines else 'unreadable'}"[:300]


class _Damaged(Exception):
    """Internal: a checkpoint file that exists but cannot be used, with the reason."""
