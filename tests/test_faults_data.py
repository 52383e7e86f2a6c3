"""Image folders as users have them: GIFs beside PNGs, a Latin-1 folder name from a zip, a class
too small to reach the test split. Each ends in the right result with a word in the log, or in one
error line; the report never crashes on a name or scores a class the split lacks as 0."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from src.cli.train import main
from src.data.build import build_datasets
from src.data.imagefolder import ScannedImageFolder
from src.data.settings import DataConfig
from src.errors import UserError
from src.pipeline.report import write_confusion
from src.rundirs.rundir import RunDirectory

LATIN1 = b"caf\xe9"  # "café" as a Latin-1 zip stores it: not valid UTF-8


def _images(folder: Path, count: int, colour: tuple[int, int, int], kind: str = "png") -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        Image.new("RGB", (10, 10), colour).save(folder / f"{kind}{i}.{kind}")


def test_gifs_are_counted_and_named_with_the_fix(tmp_path: Path) -> None:
    _images(tmp_path / "train" / "cat", 8, (200, 0, 0))
    _images(tmp_path / "train" / "dog", 8, (0, 200, 0))
    _images(tmp_path / "train" / "dog", 7, (0, 0, 200), "gif")
    bundle = build_datasets(DataConfig(name="imagefolder", data_dir=str(tmp_path), image_size=8), None, 0)
    assert len(bundle.train) + len(bundle.val) + len(bundle.test) == 16  # the PNGs, as ImageFolder takes
    # held for the run to log once pipeline.log exists (the end-to-end test below reads it there)
    warning = next(m for m in bundle.warnings if "formats ImageFolder does not take" in m)
    assert "7 image(s)" in warning and "convert them to PNG" in warning and "gif0.gif" in warning
    assert "gif5.gif" not in warning and "..." in warning  # the first five named


def test_a_class_of_gifs_only_is_refused_with_the_count(tmp_path: Path) -> None:
    _images(tmp_path / "train" / "cat", 8, (200, 0, 0))
    _images(tmp_path / "train" / "dog", 3, (0, 0, 200), "gif")
    with pytest.raises(UserError, match=r"holds only 3 image\(s\) in formats .* convert them to PNG"):
        build_datasets(DataConfig(name="imagefolder", data_dir=str(tmp_path), image_size=8), None, 0)


def test_two_class_names_that_read_the_same_are_refused(tmp_path: Path) -> None:
    _images(tmp_path / "train" / "cat", 4, (200, 0, 0))
    _images(Path(os.fsdecode(bytes(tmp_path / "train") + b"/" + LATIN1)), 4, (0, 200, 0))
    _images(tmp_path / "train" / "caf\\xe9", 4, (0, 0, 200))
    with pytest.raises(UserError, match=r"read the same \(caf\\xe9\).*rename one of them"):
        build_datasets(DataConfig(name="imagefolder", data_dir=str(tmp_path), image_size=8), None, 0)


@pytest.mark.slow
def test_a_latin1_class_name_and_a_class_missing_from_test_reach_a_readable_report(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "data"
    _images(data / "train" / "cat", 12, (200, 0, 0))
    latin1 = Path(os.fsdecode(bytes(data / "train") + b"/" + LATIN1))
    _images(latin1, 12, (0, 200, 0))
    _images(data / "train" / "owl", 2, (0, 0, 200))  # too few to reach every split
    _images(data / "train" / "cat", 1, (0, 0, 0), "gif")
    out = tmp_path / "run"
    args = ["--dataset", "imagefolder", "--data-dir", str(data), "--output-dir", str(out), "--epochs", "1",
            "--image-size", "8", "--device", "cpu", "--stages", "teacher", "--set", "train.warmup_epochs=0",
            "--set", "report.benchmark=false", "--set", "data.val_fraction=0.2",
            "--set", "data.test_fraction=0.2", "--set", "models.teacher=resnet18"]
    assert main("cnn", args) == 0
    err = capsys.readouterr().err
    lacks = [line for line in err.splitlines() if "the test split holds no image of 1 of 3 classes" in line]
    assert lacks and "'owl' (2 images in the data)" in lacks[0] and "data.test_fraction" in lacks[0]
    log = (out / "pipeline.log").read_text()
    assert "the test split holds no image of 1 of 3 classes" in log
    assert "gif0.gif); convert them to PNG" in log
    assert "the test split holds no image of 1 of 3 classes" in (out / "summary.md").read_text()
    # the per-class table and the confusion plot take the Latin-1 name, shown with \\xe9
    run = RunDirectory(out)
    files = write_confusion(run, "teacher", ["caf\udce9", "cat", "owl"])
    per_class = pd.read_csv(files[1], index_col="class")
    assert list(per_class.index[:3]) == ["caf\\xe9", "cat", "owl"]
    assert per_class.at["owl", "support"] == 0 and pd.isna(per_class.at["owl", "recall"])
    result = json.loads((out / "teacher" / "result.json").read_text())
    held = per_class.loc[["caf\\xe9", "cat"], "recall"].mean()
    assert result["test"]["recall"] == pytest.approx(held, abs=1e-6)  # over the classes the split holds
    assert main("cnn", args) == 0  # the same command again: the finished run is reused, not refused
    assert "finished earlier" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize("workers", [1])  # a worker process: its error reaches the command as one line
def test_a_broken_image_met_mid_run_keeps_the_updates_and_a_readable_copy_continues(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], workers: int) -> None:
    data = tmp_path / "data"
    for name, colour in (("cat", (200, 0, 0)), ("dog", (0, 200, 0))):
        _images(data / "train" / name, 12, colour)
    out = tmp_path / "run"
    # streamed (device_cache_gb=0): every batch is decoded from the files, as for a folder too big to cache
    args = ["--dataset", "imagefolder", "--data-dir", str(data), "--output-dir", str(out),
            "--image-size", "8", "--device", "cpu", "--stages", "baseline", "--batch-size", "4",
            "--num-workers", str(workers),
            "--set", "models.student=test_resnet", "--set", "models.small_input=false",
            "--set", "data.device_cache_gb=0", "--set", "train.warmup_epochs=0",
            "--set", "report.benchmark=false"]
    assert main("cnn", [*args, "--epochs", "1"]) == 0
    (out / "baseline" / "result.json").unlink()  # continued with more epochs: the files are read again
    image = data / "train" / "dog" / "png3.png"
    readable = image.read_bytes()
    image.write_bytes(b"\0" * len(readable))  # broken in place, same name and size
    capsys.readouterr()
    assert main("cnn", [*args, "--epochs", "2"]) == 2
    (line,) = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert f"cannot read image {image}" in line and "Traceback" not in line and "worker" not in line
    assert "the updates so far are saved" in line
    assert "replace it with a readable copy under the same name and re-run the same command" in line
    assert (out / "baseline" / "checkpoint_latest.pt").is_file()
    image.write_bytes(readable)  # what the advice says
    assert main("cnn", [*args, "--epochs", "2"]) == 0
    assert pd.read_csv(out / "baseline" / "epochs.csv")["epoch"].tolist() == [1, 2]


@pytest.mark.slow
def test_a_broken_validation_image_keeps_the_epochs_updates_and_a_readable_copy_continues(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "data"
    for name, colour in (("cat", (200, 0, 0)), ("dog", (0, 200, 0))):
        _images(data / "train" / name, 12, colour)
    out = tmp_path / "run"
    args = ["--dataset", "imagefolder", "--data-dir", str(data), "--output-dir", str(out),
            "--image-size", "8", "--device", "cpu", "--stages", "baseline", "--batch-size", "2",
            "--num-workers", "0", "--set", "data.val_fraction=0.25", "--set", "models.student=test_resnet",
            "--set", "models.small_input=false",
            "--set", "data.device_cache_gb=0", "--set", "train.warmup_epochs=0",
            "--set", "report.benchmark=false"]
    assert main("cnn", [*args, "--epochs", "1"]) == 0
    (out / "baseline" / "result.json").unlink()
    val = json.loads((out / "split.json").read_text())["splits"]["val"]
    # the last validation image: the memory planner reads only the first micro-batch before training
    image = Path(ScannedImageFolder(str(data / val["part"])).samples[val["indices"][-1]][0])
    readable = image.read_bytes()
    image.write_bytes(b"\0" * len(readable))
    capsys.readouterr()
    assert main("cnn", [*args, "--epochs", "2"]) == 2
    (line,) = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert f"cannot read image {image}" in line and "the updates so far are saved" in line
    image.write_bytes(readable)
    assert main("cnn", [*args, "--epochs", "2"]) == 0
    assert pd.read_csv(out / "baseline" / "epochs.csv")["epoch"].tolist() == [1, 2]
    resumed = [json.loads(line) for line in (out / "baseline" / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in resumed if r.get("event") == "resume"]
    assert steps and steps[-1] == 2 * steps[0]  # the re-run started after epoch 2's updates, not before
