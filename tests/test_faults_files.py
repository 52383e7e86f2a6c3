"""Files of a run that are valid JSON of the wrong shape, or not UTF-8, end in one line before
anything trains (result.json, metrics.jsonl) or are measured again with a warning (cost.json)."""
from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest

from src.cli.train import main
from src.deploy.cost import COST_FILE, _cached
from src.rundirs.rundir import RunDirectory

# timm's smallest ResNet as the baseline stage: a run takes seconds
QUICK = ["--subset", "30", "--epochs", "1", "--image-size", "8", "--device", "cpu", "--stages", "baseline",
         "--set", "models.student=test_resnet", "--set", "models.small_input=false"]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("finished") / "run"
    assert main("cnn", [*QUICK, "--output-dir", str(out), "--set", "report.benchmark=false"]) == 0
    return out


def _error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.splitlines()
    assert not any("Traceback" in line for line in err), err
    (line,) = [line for line in err if line.startswith("error:")]
    return line


@pytest.mark.slow
@pytest.mark.parametrize("content", [b"null", b"[]", b'{"stage": "baseline"}', b'{"test": null}',
                                     b'{"test": {"accuracy": 0.5}} \xff'])
def test_a_result_json_of_the_wrong_shape_is_one_line_naming_it_and_the_fix(
        finished_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], content: bytes) -> None:
    out = tmp_path / "run"
    shutil.copytree(finished_run, out)
    result = out / "baseline" / "result.json"
    result.write_bytes(content)
    weights = (out / "baseline" / "model.safetensors").stat().st_mtime_ns
    assert main("cnn", [*QUICK, "--output-dir", str(out), "--set", "report.benchmark=false"]) == 2
    line = _error(capsys)
    assert str(result) in line and "delete" in line and "to train" in line
    assert (out / "baseline" / "model.safetensors").stat().st_mtime_ns == weights  # nothing trained


@pytest.mark.parametrize("content", [b"null", b"[]", b'{"stages": []}', b"\xff\xfe"])
def test_a_cost_json_of_the_wrong_shape_is_measured_again_with_a_warning(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, content: bytes) -> None:
    (tmp_path / COST_FILE).write_bytes(content)
    with caplog.at_level(logging.WARNING, logger="kd_pipeline"):
        assert _cached(RunDirectory(tmp_path), {"any": "key"}) is None
    assert "is not a cost table" in caplog.text and "measuring the costs again" in caplog.text


@pytest.mark.slow
def test_a_metrics_log_that_is_not_utf8_is_one_line(finished_run: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    shutil.copytree(finished_run, out)
    (out / "baseline" / "result.json").unlink()  # interrupted at an epoch end: the log is read on resume
    (out / "baseline" / "metrics.jsonl").write_bytes(b'{"step": 1}\n\xff\xfe\n')
    assert main("cnn", [*QUICK, "--output-dir", str(out), "--epochs", "2",
                        "--set", "report.benchmark=false"]) == 2
    line = _error(capsys)
    assert "metrics.jsonl is not UTF-8" in line and "delete the file" in line
