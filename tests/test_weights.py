"""model.safetensors is named by its tensors: the same weights get the same weights_sha256 in
any process, whatever order safetensors writes its metadata in."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from src.errors import UserError
from src.rundirs import stage_models
from src.rundirs.rundir import RunDirectory
from src.rundirs.stage_models import verified_weights
from src.utils.weights import file_sha256, save_weights, tensors_sha256, weights_sha256

REPO = Path(__file__).resolve().parents[1]
METADATA = {"stage": "teacher", "arch": "resnet50", "num_classes": "10", "image_size": "8"}
SAVE = (
    "import sys, torch; from torch import nn; from pathlib import Path;"
    "from src.utils.weights import save_weights;"
    "torch.manual_seed(0); model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4));"
    f"print(save_weights(model, Path(sys.argv[1]), {METADATA!r}))"
)


@pytest.mark.slow
def test_identical_weights_get_one_hash_in_processes_with_different_hash_seeds(tmp_path: Path) -> None:
    runs = {}
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed, "PYTHONPATH": str(REPO)}
        runs[seed] = subprocess.Popen([sys.executable, "-c", SAVE, str(tmp_path / f"{seed}.safetensors")],
                                      env=env, stdout=subprocess.PIPE, text=True)
    hashes = {seed: run.communicate(timeout=120)[0].strip() for seed, run in runs.items()}
    assert len(set(hashes.values())) == 1 and len(hashes["1"]) == 64, hashes
    assert {weights_sha256(tmp_path / f"{seed}.safetensors") for seed in hashes} == set(hashes.values())


def test_the_identity_covers_names_dtypes_shapes_and_values(tmp_path: Path) -> None:
    weights = {"a": torch.arange(6.0).reshape(2, 3), "b": torch.zeros(3, dtype=torch.bfloat16)}
    base = tensors_sha256(weights)
    assert tensors_sha256(dict(reversed(weights.items()))) == base
    assert tensors_sha256({**weights, "a": weights["a"].reshape(3, 2)}) != base
    assert tensors_sha256({**weights, "b": torch.zeros(3, dtype=torch.float16)}) != base
    assert tensors_sha256({"c": weights["a"], "b": weights["b"]}) != base
    changed = weights["a"].clone()
    changed[1, 2] += 1
    assert tensors_sha256({**weights, "a": changed}) != base
    save_file(weights, str(tmp_path / "w.safetensors"), metadata={"x": "1", "y": "2"})
    assert weights_sha256(tmp_path / "w.safetensors") == base


def test_save_weights_returns_the_identity_of_what_it_wrote(tmp_path: Path) -> None:
    model = nn.Linear(2, 2)
    sha = save_weights(model, tmp_path / "model.safetensors", METADATA)
    assert sha == weights_sha256(tmp_path / "model.safetensors") == tensors_sha256(model.state_dict())


def test_a_finished_stage_is_verified_by_its_tensors_or_legacy_file_bytes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = RunDirectory(tmp_path)
    sha = save_weights(nn.Linear(2, 2), run.weights_path("student"), METADATA)
    hashed_files: list[Path] = []
    monkeypatch.setattr(stage_models, "file_sha256",
                        lambda path: hashed_files.append(path) or file_sha256(path))
    path, recorded, tensors = verified_weights(run, "student", {"weights_sha256": sha})
    assert recorded == sha and tensors_sha256(tensors) == sha
    assert hashed_files == []  # the tensor identity matched: the file's bytes are not read again
    legacy = file_sha256(path)  # what runs made before the tensor identity recorded
    assert verified_weights(run, "student", {"weights_sha256": legacy})[1] == legacy
    path.write_bytes(path.read_bytes()[:-4])  # truncated: no longer a safetensors file
    with pytest.raises(UserError, match="do not match the hash in its result.json"):
        verified_weights(run, "student", {"weights_sha256": sha})
