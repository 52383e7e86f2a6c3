"""The train/val/test split: made once per run, persisted as ``split.json``, reused exactly.

The file holds, for each split, which part of the source it comes from and its sorted indices
into that part, with the source's identity and a sha256 over both. For an image folder (format 2)
the identity lists every file of every part by its path relative to the data folder, so a deleted,
added or renamed image is refused by name whatever the counts, while a broken image replaced under
its own name keeps the split; each file's size is kept beside the identity (not hashed) and a
changed one is logged. A format-1 file (digits, CIFAR, and image folders split by earlier versions)
identifies the data by its part sizes. Rebuilding from an existing
file never re-splits (changed fractions or subset do not move a sample between splits: a resumed
run must evaluate on the same test images), and a file that is damaged or was made for other
data is refused with a UserError instead of silently mixing splits.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sklearn.model_selection import train_test_split

from src.data.settings import DataConfig
from src.data.sources import Source
from src.errors import IncompatibleResumeError, UserError
from src.utils.atomic import atomic_write_json
from src.utils.reproducibility import derive_seed

SPLIT_FILE = "split.json"
SPLITS = ("train", "val", "test")
FORMAT = 1  # part sizes identify the data
FILES_FORMAT = 2  # every file of an image folder identifies it

log = logging.getLogger("kd_pipeline.data")  # under the pipeline logger: lands in pipeline.log


@dataclass(frozen=True)
class SplitInfo:
    """What a caller needs to know about the split in use (recorded in results and fingerprints)."""

    hash: str
    sizes: dict[str, int]
    path: Path | None  # the split.json used or written; None when nothing was persisted
    reused: bool  # True when an existing split.json was loaded

    def to_dict(self) -> dict[str, Any]:
        return {
            "hash": self.hash,
            "sizes": dict(self.sizes),
            "path": str(self.path) if self.path else None,
            "reused": self.reused,
        }


def split_hash(identity: dict[str, Any], splits: dict[str, Any]) -> str:
    canonical = json.dumps({"identity": identity, "splits": splits}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def _carve(
    indices: list[int], labels: list[int], size: float | int, seed: int
) -> tuple[list[int], list[int]]:
    """Take ``size`` (a fraction or a count) of ``indices`` out, stratified by label when possible.

    Stratification needs at least two samples per class and room for every class; tiny or very
    unbalanced data falls back to a plain random draw rather than failing.
    """
    state = seed % (2**32)
    try:
        rest, taken = train_test_split(indices, test_size=size, stratify=labels, random_state=state)
    except ValueError:
        log.warning("cannot stratify %d samples for a split of %s: drawing at random", len(indices), size)
        try:
            rest, taken = train_test_split(indices, test_size=size, random_state=state)
        except ValueError as exc:
            raise UserError(f"too few images ({len(indices)}) to take {size} of them for a split") from exc
    return sorted(int(i) for i in taken), sorted(int(i) for i in rest)


def _settings(cfg: DataConfig) -> dict[str, Any]:
    """The settings a split was made with: recorded for people, not verified on reuse."""
    return {"val_fraction": cfg.val_fraction, "test_fraction": cfg.test_fraction, "subset": cfg.subset}


def make_split(source: Source, cfg: DataConfig, seed: int) -> dict[str, Any]:
    """A fresh split record: official parts where the source has them, stratified carving otherwise."""
    pool_part = "all" if "all" in source.parts else "train"
    pool = list(range(len(source.parts[pool_part].targets)))
    labels_of = source.parts[pool_part].targets
    splits: dict[str, dict[str, Any]] = {}
    carved = 0.0  # fraction of the pool already taken, so val_fraction stays "of the whole pool"
    for name, fraction in (("test", cfg.test_fraction), ("val", cfg.val_fraction)):
        if name in source.parts:
            splits[name] = {"part": name, "indices": list(range(len(source.parts[name].targets)))}
            continue
        taken, pool = _carve(
            pool, [labels_of[i] for i in pool], fraction / (1.0 - carved), derive_seed(seed, "split", name)
        )
        carved += fraction
        splits[name] = {"part": pool_part, "indices": taken}
    splits["train"] = {"part": pool_part, "indices": pool}
    if cfg.subset is not None:
        for name, entry in splits.items():
            if len(entry["indices"]) > cfg.subset:
                targets = source.parts[entry["part"]].targets
                entry["indices"], _ = _carve(
                    entry["indices"],
                    [targets[i] for i in entry["indices"]],
                    cfg.subset,
                    derive_seed(seed, "subset", name),
                )
    ordered = {name: splits[name] for name in SPLITS}
    identity = source.identity
    record = {
        "format": FORMAT if source.files is None else FILES_FORMAT,
        "identity": identity,
        "seed": seed,
        "settings": _settings(cfg),
        "splits": ordered,
        "hash": split_hash(identity, ordered),
    }
    if source.files is not None:
        record["file_sizes"] = source.file_sizes()
    return record


def _changed_files(path: Path, recorded: dict[str, list[str]], source: Source) -> str | None:
    """The first file gone from (or, failing that, added to) the data since ``path`` was made."""
    now = source.identity.get("files", {})
    parts = sorted(set(recorded) | set(now))
    before = {part: set(recorded.get(part, [])) for part in parts}
    after = {part: set(now.get(part, [])) for part in parts}
    for part in parts:
        gone = next((name for name in recorded.get(part, []) if name not in after[part]), None)
        if gone is not None:
            return (f"the data changed since {path} was made: {gone} is gone (restore it; replace a "
                    "broken image under its own name), or use a new --output-dir for the data as it is now")
    for part in parts:
        added = next((name for name in now.get(part, []) if name not in before[part]), None)
        if added is not None:
            return (f"the data changed since {path} was made: {added} was added (move it out of the data "
                    "folder), or use a new --output-dir for the data as it is now")
    return None


def _log_size_changes(path: Path, record: dict[str, Any], source: Source) -> None:
    """Sizes are not identity (a broken file replaced under its name), but a change is worth a line."""
    recorded, now = record.get("file_sizes"), source.file_sizes()
    if not isinstance(recorded, dict) or now is None:
        return
    changed = [(name, old, new) for part, sizes in now.items()
               for name, old, new in zip(record["identity"]["files"][part], recorded.get(part, []), sizes,
                                         strict=False)  # sizes are not hashed: may be short
               if old != new]
    if changed:
        name, old, new = changed[0]
        log.info("%d image file(s) changed size since %s was made (first: %s, %d -> %d bytes); each is "
                 "read as it is now", len(changed), path, name, old, new)


def _damaged(path: Path, why: str) -> UserError:
    return UserError(f"{path} is damaged ({why}); restore it, or use a new --output-dir to start a new run")


def _describe(stored: dict[str, Any], now: dict[str, Any]) -> str:
    """What differs between a split's stored data identity and the data found now, e.g.
    "class names ['cat', 'eel'] then, ['cat', 'fish'] now"."""
    labels = {"dataset": "dataset", "class_names": "class names", "part_sizes": "parts"}
    differ = [f"{label} {stored.get(key)} then, {now.get(key)} now" for key, label in labels.items()
              if stored.get(key) != now.get(key)]
    return "; ".join(differ) or "its files differ"


def read_split(path: Path, source: Source) -> dict[str, Any]:
    """Load and verify a persisted split against the data now on disk."""
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        identity, splits, stored = record["identity"], record["splits"], record["hash"]
        entries = {
            name: (str(splits[name]["part"]), [int(i) for i in splits[name]["indices"]]) for name in SPLITS
        }
        if not isinstance(identity, dict):
            raise TypeError("identity is not a mapping")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise _damaged(path, f"unreadable: {exc!r}") from exc
    if split_hash(identity, splits) != stored:
        raise _damaged(path, "its hash does not match its contents")
    expected = source.identity if "files" in identity else source.part_identity  # format 1: part sizes
    if identity != expected and "files" in identity and identity["class_names"] == source.class_names:
        changed = _changed_files(path, identity["files"], source)
        if changed is not None:
            raise IncompatibleResumeError(changed)
    if identity != expected:
        raise IncompatibleResumeError(
            f"{path} was made for other data ({_describe(identity, expected)}); use a new --output-dir "
            "for this data, or put the data back as it was"
        )
    seen: dict[str, set[int]] = {}
    for name, (part, indices) in entries.items():
        size = source.identity["part_sizes"].get(part)
        if size is None or any(not 0 <= i < size for i in indices):
            raise _damaged(path, f"split {name!r} points outside part {part!r}")
        if seen.setdefault(part, set()) & set(indices):
            raise _damaged(path, f"split {name!r} overlaps another split")
        seen[part].update(indices)
    _log_size_changes(path, record, source)
    return record


def check_decodable(source: Source, record: dict[str, Any]) -> None:
    """Decode every image of the split once (threads: Pillow decodes outside the GIL), so a broken
    file of a folder read per batch is named now, before split.json exists, not mid-run; the
    first failure is the loader's one-line UserError naming the file. Parts held in memory
    (digits, CIFAR) have nothing to check."""
    entries = [record["splits"][name] for name in SPLITS]
    jobs = [(decode, index) for entry in entries for index in entry["indices"]
            if (decode := source.parts[entry["part"]].decode) is not None]
    pool = ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1))
    try:
        for _ in pool.map(lambda job: job[0](job[1]), jobs):
            pass
    finally:  # the first broken file ends the check: the images not yet read are not waited for
        pool.shutdown(cancel_futures=True)


def save_split(record: dict[str, Any], run_dir: Path) -> Path:
    """Persist a split record as ``run_dir/split.json``; returns its path."""
    path = Path(run_dir) / SPLIT_FILE
    atomic_write_json(path, record)
    return path


def load_or_create_split(
    source: Source, cfg: DataConfig, seed: int, run_dir: Path | None, write: bool
) -> tuple[dict[str, Any], SplitInfo]:
    """Reuse ``run_dir/split.json`` when it exists; otherwise make a split and (if ``write``) save it."""
    path = Path(run_dir) / SPLIT_FILE if run_dir is not None else None
    if path is not None and path.exists():
        record = read_split(path, source)
        settings = _settings(cfg)
        if record.get("settings") != settings:
            log.info("reusing %s made with %s (config now says %s)", path, record.get("settings"), settings)
        reused = True
    else:
        record = make_split(source, cfg, seed)
        reused = False
        if path is not None and write:
            save_split(record, path.parent)
        else:
            path = None
    sizes = {name: len(record["splits"][name]["indices"]) for name in SPLITS}
    return record, SplitInfo(hash=record["hash"], sizes=sizes, path=path, reused=reused)
