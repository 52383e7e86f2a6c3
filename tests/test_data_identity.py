"""An image folder's split is stored by file identity: a changed folder is refused by name, a broken
image replaced under its own name keeps the split, and a folder read per batch is decode-checked
before split.json is saved."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from PIL import Image

from src.cli.evaluate import main as evaluate_main
from src.cli.export import main as export_main
from src.cli.train import main
from src.data.build import build_datasets
from src.data.settings import DataConfig
from src.data.split import split_hash
from src.errors import IncompatibleResumeError, UserError


def _folder(root: Path, per_class: int = 6) -> Path:
    for label, colour in (("a", (200, 0, 0)), ("b", (0, 0, 200))):
        (root / "train" / label).mkdir(parents=True)
        for i in range(per_class):
            Image.new("RGB", (10, 10), colour).save(root / "train" / label / f"{i}.png")
    return root


def _cfg(root: Path, **kwargs: object) -> DataConfig:
    return DataConfig(name="imagefolder", data_dir=str(root), image_size=8, **kwargs)  # type: ignore[arg-type]


def _train_argv(data: Path | str, out: Path | str) -> list[str]:
    return ["--dataset", "imagefolder", "--data-dir", str(data), "--output-dir", str(out), "--epochs", "1",
            "--image-size", "8", "--device", "cpu", "--stages", "baseline", "--set", "report.benchmark=false",
            "--set", "models.student=test_resnet", "--set", "models.small_input=false",
            "--set", "train.warmup_epochs=0"]


@pytest.mark.slow
def test_a_deleted_and_an_added_image_with_the_same_counts_are_refused_by_name(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """split.json stored indices: the swap kept every count, so the old split was reused by index."""
    data = _folder(tmp_path / "data")
    out = tmp_path / "run"
    argv = _train_argv(data, out)
    assert main("cnn", argv) == 0
    split = json.loads((out / "split.json").read_text())
    assert split["format"] == 2 and "train/a/0.png" in split["identity"]["files"]["train"]
    (data / "train" / "a" / "3.png").unlink()
    Image.new("RGB", (10, 10), (0, 200, 0)).save(data / "train" / "a" / "new.png")
    assert main("cnn", argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert f"error: the data changed since {out / 'split.json'} was made: train/a/3.png is gone" in err
    (data / "train" / "a" / "new.png").rename(data / "train" / "a" / "3.png")  # a renamed image, put back
    assert main("cnn", argv) == 0


def test_an_added_image_is_named(tmp_path: Path) -> None:
    data = _folder(tmp_path / "data")
    build_datasets(_cfg(data), tmp_path / "run", seed=0)
    Image.new("RGB", (10, 10), (0, 200, 0)).save(data / "train" / "b" / "extra.png")
    with pytest.raises(IncompatibleResumeError, match="train/b/extra.png was added"):
        build_datasets(_cfg(data), tmp_path / "run", seed=0)


def test_a_renamed_class_folder_is_refused_with_both_names(tmp_path: Path) -> None:
    """The message once showed the same part sizes on both sides and no class names."""
    data = _folder(tmp_path / "data")
    build_datasets(_cfg(data), tmp_path / "run", seed=0)
    (data / "train" / "b").rename(data / "train" / "c")
    with pytest.raises(IncompatibleResumeError, match=r"class names \['a', 'b'\] then, \['a', 'c'\] now"):
        build_datasets(_cfg(data), tmp_path / "run", seed=0)


def test_a_broken_image_replaced_under_its_own_name_keeps_the_split(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The advice for a broken file mid-run is to replace it: the identity must agree."""
    data = _folder(tmp_path / "data")
    first = build_datasets(_cfg(data), tmp_path / "run", seed=0)
    Image.new("RGB", (30, 30), (90, 90, 90)).save(data / "train" / "b" / "2.png")  # another size on disk
    with caplog.at_level(logging.INFO, logger="kd_pipeline.data"):
        again = build_datasets(_cfg(data), tmp_path / "run", seed=0)
    assert again.split.hash == first.split.hash and again.split.reused
    assert "1 image file(s) changed size since" in caplog.text and "train/b/2.png" in caplog.text


def test_a_split_json_of_format_1_still_loads(tmp_path: Path) -> None:
    data = _folder(tmp_path / "data")
    build_datasets(_cfg(data), tmp_path / "run", seed=0)
    path = tmp_path / "run" / "split.json"
    record = json.loads(path.read_text())
    del record["identity"]["files"], record["file_sizes"]
    record["format"], record["hash"] = 1, split_hash(record["identity"], record["splits"])
    path.write_text(json.dumps(record))
    bundle = build_datasets(_cfg(data), tmp_path / "run", seed=0)
    assert bundle.split.reused and bundle.split.hash == record["hash"]


def test_a_broken_image_of_a_folder_read_per_batch_is_named_before_split_json(tmp_path: Path) -> None:
    """Streamed folders decoded each image only when a batch needed it: a broken one ended the run
    mid-stage, after split.json had been saved with it."""
    data = _folder(tmp_path / "data")
    broken = data / "train" / "b" / "4.png"
    broken.write_bytes(broken.read_bytes()[:40])  # truncated
    with pytest.raises(UserError, match=f"cannot read image {broken}"):
        build_datasets(_cfg(data, device_cache_gb=0.0), tmp_path / "run", seed=0)
    assert not (tmp_path / "run" / "split.json").exists()
    Image.new("RGB", (10, 10), (0, 0, 200)).save(broken)  # the advised fix
    assert not build_datasets(_cfg(data, device_cache_gb=0.0), tmp_path / "run", seed=0).train.store.resident
    assert (tmp_path / "run" / "split.json").is_file()


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
def test_evaluate_and_export_find_the_data_from_anywhere_and_after_it_moved(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """A relative --data-dir was stored, and neither tool could be told where the data is now."""
    monkeypatch.chdir(tmp_path)
    _folder(tmp_path / "data")
    assert main("cnn", _train_argv("data", "run")) == 0
    capsys.readouterr()  # the run's summary
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    score = ["--checkpoint", str(tmp_path / "run" / "baseline" / "model.safetensors"), "--device", "cpu"]
    assert evaluate_main(score) == 0
    accuracy = json.loads(capsys.readouterr().out)["accuracy"]
    moved = tmp_path / "moved"
    (tmp_path / "data").rename(moved)
    assert evaluate_main(score) == 2
    assert "no train/ folder under" in capsys.readouterr().err
    assert evaluate_main([*score, "--data-dir", str(moved)]) == 0
    assert json.loads(capsys.readouterr().out)["accuracy"] == accuracy
    assert export_main(["--run-dir", str(tmp_path / "run"), "--stage", "baseline", "--format", "torchscript",
                        "--data-dir", str(moved)]) == 0
    (moved / "train" / "b" / "5.png").unlink()  # not the data it was trained on: refused by name
    assert evaluate_main([*score, "--data-dir", str(moved)]) == 2
    assert "train/b/5.png is gone" in capsys.readouterr().err
