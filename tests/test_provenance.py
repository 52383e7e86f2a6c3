"""Provenance: a finished stage is reused only while what it was made from (the split, the
weights of the stage that taught it) is what this run would use now; through the real command."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from src.cli.train import main

pytestmark = pytest.mark.slow

# timm's smallest ResNet in every role: a stage trains in a second or two
QUICK = ["--subset", "30", "--epochs", "1", "--image-size", "8", "--device", "cpu",
         "--set", "models.small_input=false", "--set", "report.benchmark=false",
         *(f"--set=models.{role}=test_resnet" for role in ("teacher", "assistant", "student"))]


def _error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.splitlines()
    assert not any("Traceback" in line for line in err), err
    (line,) = [line for line in err if line.startswith("error:")]
    return line


def _result(run: Path, stage: str) -> dict:
    return json.loads((run / stage / "result.json").read_text())


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("provenance") / "run"
    assert main("cnn", [*QUICK, "--output-dir", str(out), "--stages", "teacher,assistant"]) == 0
    return out


def test_every_result_records_what_it_was_made_from(chain: Path) -> None:
    split = json.loads((chain / "split.json").read_text())["hash"]
    teacher, assistant = _result(chain, "teacher"), _result(chain, "assistant")
    assert teacher["provenance"]["split_sha256"] == assistant["provenance"]["split_sha256"] == split
    assert "teacher_sha256" not in teacher["provenance"]
    assert assistant["provenance"]["teacher_sha256"] == teacher["weights_sha256"]
    assert assistant["provenance"]["budget"] == {"epochs": 1, "patience": 10, "min_delta": 0.0}
    assert assistant["provenance"]["config"]["models.assistant"] == "test_resnet"


def _retrain_teacher(run: Path) -> dict:
    """The teacher trained again to other weights, as a CUDA run that is not bit-reproducible
    does with the same command (here: the assistant's weights, which have its architecture)."""
    shutil.copyfile(run / "assistant" / "model.safetensors", run / "teacher" / "model.safetensors")
    teacher = _result(run, "teacher")
    teacher["weights_sha256"] = _result(run, "assistant")["weights_sha256"]
    (run / "teacher" / "result.json").write_text(json.dumps(teacher))
    return teacher


def test_a_retrained_teacher_makes_exactly_the_stages_it_taught_stale(
        chain: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The assistant distilled from the teacher's old weights was reused without a word."""
    run = tmp_path / "run"
    shutil.copytree(chain, run)
    old_assistant = _result(run, "assistant")
    teacher = _retrain_teacher(run)
    # the student needs the stale assistant, which is not asked for: the fix, exit 2, nothing trained
    asked = [*QUICK, "--output-dir", str(run)]
    assert main("cnn", [*asked, "--stages", "teacher,student"]) == 2
    assert _error(capsys) == ("error: assistant is stale: distilled from other teacher weights than the "
                              "teacher finished now (it was retrained); add assistant to --stages "
                              "(e.g. --stages teacher,assistant,student)")
    assert not (run / "student").exists() and _result(run, "assistant") == old_assistant
    assert main("cnn", [*asked, "--stages", "teacher,assistant,student"]) == 0
    (aside,) = run.glob("assistant.stale-*")
    assert json.loads((aside / "result.json").read_text()) == old_assistant  # moved, never deleted
    assert _result(run, "teacher") == teacher  # not stale itself
    assert _result(run, "assistant")["provenance"]["teacher_sha256"] == teacher["weights_sha256"]
    student = _result(run, "student")
    assert student["provenance"]["teacher_sha256"] == _result(run, "assistant")["weights_sha256"]
    log = (run / "pipeline.log").read_text()
    assert f"stage assistant is stale (distilled from other teacher weights than the teacher finished now " \
           f"(it was retrained)): moved to {aside}, training it again" in log
    assert "stage teacher: finished earlier" in log


def test_a_stale_stage_is_never_retrained_under_resume_path(chain: Path, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    shutil.copytree(chain, run)
    result = _result(run, "assistant")
    result["provenance"]["split_sha256"] = "0" * 64
    (run / "assistant" / "result.json").write_text(json.dumps(result))
    checkpoint = next((run / "assistant").glob("checkpoint_*.pt"))
    argv = [*QUICK, "--output-dir", str(run), "--stages", "teacher,assistant"]
    assert main("cnn", [*argv, "--resume", str(checkpoint)]) == 2
    assert _error(capsys) == ("error: assistant is stale: trained on another split; re-run with --resume "
                              "auto, which moves it aside and trains it again")
    assert _result(run, "assistant") == result


def test_results_of_earlier_versions_are_reused_as_they_are(chain: Path, tmp_path: Path) -> None:
    """An upgrade must never retrain a finished run: without provenance its history is unknown."""
    run = tmp_path / "run"
    shutil.copytree(chain, run)
    for stage in ("teacher", "assistant"):
        result = _result(run, stage)
        del result["provenance"]
        (run / stage / "result.json").write_text(json.dumps(result))
    assert main("cnn", [*QUICK, "--output-dir", str(run), "--stages", "teacher,assistant"]) == 0
    log = (run / "pipeline.log").read_text()
    assert "stage assistant: finished earlier" in log and "recorded no provenance (history unknown)" in log
    assert "stale" not in log and "provenance" not in _result(run, "assistant")


def test_teacher_from_trains_a_baseline_of_another_budget_here(chain: Path, tmp_path: Path) -> None:
    """Epochs and patience are free keys on resume, so a 1-epoch baseline was paired with 2-epoch
    students as if they had the same budget."""
    source = tmp_path / "source"
    shutil.copytree(chain, source)
    assert main("cnn", [*QUICK, "--output-dir", str(source), "--stages", "teacher,baseline"]) == 0
    run = tmp_path / "run"
    assert main("cnn", [*QUICK, "--output-dir", str(run), "--teacher-from", str(source), "--epochs", "2",
                        "--stages", "baseline"]) == 0
    assert "reused_from" in _result(run, "teacher")  # the teacher's budget does not pair with anything
    baseline = _result(run, "baseline")
    assert "reused_from" not in baseline and baseline["epochs_run"] == 2
    assert baseline["provenance"]["budget"]["epochs"] == 2
    assert (f"baseline (seed 42) is not reused from {source / 'baseline'}: it was trained with another "
            "budget (epochs 1 -> 2), so it would not pair with this run's students; it is trained here"
            ) in (run / "pipeline.log").read_text()


def test_seeds_in_a_finished_one_seed_run_reuse_it_as_the_first_seed_chain(
        chain: Path, tmp_path: Path) -> None:
    """The README suggests --seeds after make run; the root chain, which is seed 42's, was retrained."""
    run = tmp_path / "run"
    shutil.copytree(chain, run)
    before = {stage: _result(run, stage) for stage in ("teacher", "assistant")}
    assert main("cnn", [*QUICK, "--output-dir", str(run), "--stages", "teacher", "--seeds", "42,43"]) == 0
    for stage, result in before.items():
        assert _result(run, stage) == result  # the one-seed run's files stay
        assert _result(run / "seed-42", stage) == result  # the same training, not a new one
        assert (run / "seed-42" / stage / "model.safetensors").samefile(run / stage / "model.safetensors")
    assert _result(run / "seed-43", "teacher")["seed"] == 43
    log = (run / "pipeline.log").read_text()
    assert (f"seed 42: the one-seed run's finished teacher, assistant are its chain's, linked into "
            f"{run / 'seed-42'} (the files in {run} stay)") in log
