"""A stage's checkpoint files: crash-safe saving and damage-tolerant loading.

Files in the stage folder while it trains:

    checkpoint_latest.pt    the newest full training state (what a resume continues from)
    checkpoint_previous.pt  the latest before it, kept so a damaged latest is not the end
    checkpoint_best.pt      the state with the best monitored validation value (a hard link to
                            latest when that is the best, so it costs no space)

Once the stage has finished, ``prune`` keeps at most ``keep`` full states (``train.keep_checkpoints``,
default 1: latest); checkpoint_best.pt stays, reduced to the best weights when it is not latest.

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

from src.errors import UserError
from src.utils.atomic import atomic_link_or_copy, atomic_write_with, remove_temp_files

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
        """The best epoch's state; of a finished stage it may hold only the weights (see ``prune``)."""
        if not self.best_path.is_file():
            raise UserError(f"checkpoint {self.best_path} does not exist")
        try:
            return self._read(self.best_path, map_location, required=("model",))
        except _Damaged as err:
            raise UserError(f"cannot load checkpoint {self.best_path}: {err}") from None

    def prune(self, keep: int) -> list[Path]:
        """Once the stage is finished: keep at most ``keep`` full training states (largest files of a
        run), preferring latest (the stage can be continued with more epochs), then best, then
        previous. checkpoint_best.pt itself always stays, as a hard link to latest or, beyond the
        limit, as the best weights alone: evaluate.py and the best-weights restore of an extended
        stage read it. Temporary files a killed save left are removed too. Returns what it deleted."""
        removed = remove_temp_files(self.stage_dir, CHECKPOINT_FILES)
        keep_latest = keep >= 1 and self.latest_path.is_file()
        budget = keep - int(keep_latest)
        if self.best_path.is_file() and not (keep_latest and _same_file(self.best_path, self.latest_path)):
            try:  # mapped, not read: every run looks only at its keys (weights alone after the first prune)
                best = self._read(self.best_path, "cpu", required=("model",), mmap=True)
            except _Damaged as err:  # nothing to gain from it; the stage's weights are in model.safetensors
                log.warning("checkpoint %s is unusable (%s); removing it", self.best_path, err)
                removed.append(self.best_path)
            else:
                if budget >= 1 and "optimizer" in best:
                    budget -= 1
                elif "optimizer" in best:
                    weights = {key: best[key] for key in ("model", "epoch", "best_metric") if key in best}
                    atomic_write_with(self.best_path, lambda tmp: _save(weights, tmp))
        if budget < 1 and self.previous_path.is_file():
            removed.append(self.previous_path)
        if not keep_latest and self.latest_path.is_file():
            removed.append(self.latest_path)
        for path in removed:
            path.unlink(missing_ok=True)
        return removed

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
