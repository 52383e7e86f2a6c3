"""The persisted split: disjoint, stratified, written once, reused exactly, refused when wrong."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from src.data.build import build_datasets
from src.data.settings import DataConfig
from src.data.split import SPLIT_FILE, split_hash
from src.errors import IncompatibleResumeError, UserError


def _source_indices(bundle) -> dict[str, list[int]]:
    return {name: list(getattr(bundle, name).store.indices) for name in ("train", "val", "test")}


def test_digits_splits_are_disjoint_stratified_and_cover_everything(tmp_path: Path) -> None:
    bundle = build_datasets(DataConfig(), tmp_path, seed=3)
    idx = _source_indices(bundle)
    train, val, test = (set(idx[n]) for n in ("train", "val", "test"))
    assert not (train & val) and not (train & test) and not (val & test)
    assert train | val | test == set(range(1797))
    assert abs(len(test) / 1797 - 0.15) < 0.01 and abs(len(val) / 1797 - 0.15) < 0.01
    assert bundle.num_classes == 10 and bundle.class_names == [str(c) for c in range(10)]
    overall = Counter(bundle.train.targets + bundle.val.targets + bundle.test.targets)
    for ds in (bundle.train, bundle.val, bundle.test):
        counts = Counter(ds.targets)
        for label, n in overall.items():
            assert abs(counts[label] / len(ds) - n / 1797) < 0.02


def test_split_json_is_written_once_and_reused_when_fractions_change(tmp_path: Path) -> None:
    first = build_datasets(DataConfig(), tmp_path, seed=3)
    path = tmp_path / SPLIT_FILE
    saved = path.read_bytes()
    record = json.loads(saved)
    assert record["hash"] == first.split.hash and not first.split.reused
    assert sorted(record["splits"]["test"]["indices"]) == sorted(_source_indices(first)["test"])

    again = build_datasets(DataConfig(val_fraction=0.3, test_fraction=0.3, subset=20), tmp_path, seed=99)
    assert again.split.reused and again.split.hash == first.split.hash
    assert _source_indices(again) == _source_indices(first)
    assert path.read_bytes() == saved


def test_no_file_without_run_dir_or_with_write_false(tmp_path: Path) -> None:
    a = build_datasets(DataConfig(), None, seed=5)
    b = build_datasets(DataConfig(), tmp_path, seed=5, write=False)
    assert not (tmp_path / SPLIT_FILE).exists()
    assert a.split.path is None and a.split.hash == b.split.hash  # a pure function of the seed
    assert build_datasets(DataConfig(), None, seed=6).split.hash != a.split.hash


def test_damaged_split_json_is_a_user_error(tmp_path: Path) -> None:
    build_datasets(DataConfig(), tmp_path, seed=1)
    path = tmp_path / SPLIT_FILE
    record = json.loads(path.read_text())
    record["splits"]["test"]["indices"][0] = record["splits"]["train"]["indices"][0]  # hash now stale
    path.write_text(json.dumps(record))
    with pytest.raises(UserError, match="damaged"):
        build_datasets(DataConfig(), tmp_path, seed=1)
    for text in ("{not json", '{"identity": {}, "hash": "0"}', "[1, 2]"):
        path.write_text(text)
        with pytest.raises(UserError, match="damaged"):
            build_datasets(DataConfig(), tmp_path, seed=1)


def test_split_json_for_other_data_is_refused(tmp_path: Path) -> None:
    build_datasets(DataConfig(), tmp_path, seed=1)
    path = tmp_path / SPLIT_FILE
    record = json.loads(path.read_text())
    record["identity"]["part_sizes"] = {"all": 1500}  # consistent hash, different data
    record["hash"] = split_hash(record["identity"], record["splits"])
    path.write_text(json.dumps(record))
    with pytest.raises(IncompatibleResumeError, match="other data"):
        build_datasets(DataConfig(), tmp_path, seed=1)


def test_subset_is_stratified_and_persisted(tmp_path: Path) -> None:
    bundle = build_datasets(DataConfig(subset=50), tmp_path, seed=2)
    assert [len(bundle.train), len(bundle.val), len(bundle.test)] == [50, 50, 50]
    assert set(Counter(bundle.train.targets).values()) == {5}
    record = json.loads((tmp_path / SPLIT_FILE).read_text())
    assert record["settings"]["subset"] == 50 and len(record["splits"]["train"]["indices"]) == 50


@pytest.mark.parametrize(
    "bad",
    [
        DataConfig(val_fraction=0.0),
        DataConfig(val_fraction=0.5, test_fraction=0.5),
        DataConfig(subset=0),
        DataConfig(subset=1),  # the config loader's minimum (MIN_SUBSET), once drifted from the split's
        DataConfig(image_size=4),
    ],
)
def test_bad_split_settings_are_user_errors(bad: DataConfig) -> None:
    with pytest.raises(UserError):
        build_datasets(bad, None, seed=0)
