"""A config a user wrote by hand, or a size no run can mean, ends in one `error:` line and exit 2
before anything is written: a key given twice, a non-UTF-8 byte, an absurd image or batch size."""
from __future__ import annotations

from pathlib import Path

import pytest

from src.cli.train import main

QUICK = ["--subset", "20", "--epochs", "1", "--image-size", "8", "--device", "cpu", "--stages", "teacher"]


def _error_line(capsys: pytest.CaptureFixture[str]) -> str:
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip() and " INFO " not in line]
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


def test_a_key_given_twice_is_refused_with_both_lines(tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("train:\n  epochs: 1\ndata:\n  subset: 20\ntrain:\n  epochs: 10\n")
    out = tmp_path / "run"
    assert main("cnn", [*QUICK[4:], "--config", str(config), "--output-dir", str(out)]) == 2
    line = _error_line(capsys)
    assert "'train' is given twice (lines 1 and 5)" in line and str(config) in line
    assert not out.exists()


def test_a_nested_key_given_twice_is_named_by_its_dotted_key(tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("train:\n  epochs: 1\n  lr: 0.1\n  epochs: 3\n")
    assert main("cnn", [*QUICK, "--config", str(config), "--output-dir", str(tmp_path / "run")]) == 2
    assert "'train.epochs' is given twice (lines 2 and 4)" in _error_line(capsys)


def test_a_latin1_comment_names_the_byte_and_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "c.yaml"
    config.write_bytes(b"train:\n  epochs: 1  # caf\xe9\n")
    assert main("cnn", [*QUICK, "--config", str(config), "--output-dir", str(tmp_path / "run")]) == 2
    line = _error_line(capsys)
    assert "is not UTF-8" in line and "line 2" in line and "0xe9" in line


@pytest.mark.parametrize(("flags", "names"), [
    (["--image-size", "100000"], "'data.image_size': at most 4096 px"),
    (["--set", "models.image_size.student=5000"], "'models.image_size.student': at most 4096 px"),
    (["--batch-size", "100000"], "'train.batch_size': at most 65,536"),
    (["--batch-size", "60000", "--set", "models.image_size.teacher=512"], "GiB of float inputs"),
    (["--set", "train.accumulation_steps=100000"], "at most 1,048,576 images per update"),
    (["--set", "stage_overrides.teacher.batch_size=70000"], "'stage_overrides.teacher.batch_size'"),
    (["--set", "train.num_workers=1000"], "'train.num_workers': at most 256"),
])
def test_an_absurd_size_is_refused_before_anything_is_written(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: list[str], names: str) -> None:
    out = tmp_path / "run"
    assert main("cnn", [*QUICK, *flags, "--output-dir", str(out)]) == 2
    assert names in _error_line(capsys)
    assert not out.exists()
