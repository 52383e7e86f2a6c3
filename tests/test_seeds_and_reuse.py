"""``--seeds`` (one chain per seed on one split, the aggregate verdict) and ``--teacher-from``
(new students from another run's teacher, fingerprints checked), through the real entry point."""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from src.cli.evaluate import main as evaluate_main
from src.cli.export import main as export_main
from src.cli.train import main
from src.data.datasets import ImageStore
from src.errors import UserError
from src.pipeline.teacher_from import plan_reuse
from src.rundirs.rundir import RunDirectory
from src.rundirs.seeds import seed_chains

pytestmark = pytest.mark.slow

# every role a resnet18: this is about seeds and reuse, not capacity; the teacher trains with
# its own overrides (2 epochs at another rate)
TINY = ["--epochs", "1", "--subset", "40", "--image-size", "8", "--device", "cpu",
        "--set", "models.teacher=resnet18", "--set", "models.assistant=resnet18",
        "--set", "stage_overrides.teacher.epochs=2", "--set", "stage_overrides.teacher.lr=0.004",
        "--set", "distillation.loss=kd"]  # not make run's dist: the reuse test trains dist as the new loss
STAGES = ["--stages", "teacher,baseline,direct"]


@pytest.fixture(scope="module")
def stores_made() -> list[int]:
    """How many images each ImageStore of the ``source`` run decoded or held."""
    return []


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory, stores_made: list[int]) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("seeds") / "run"
    make_store = ImageStore.__init__

    def counted(store: ImageStore, *args: Any, **kwargs: Any) -> None:
        make_store(store, *args, **kwargs)
        stores_made.append(len(store))

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ImageStore, "__init__", counted)
        assert main("cnn", ["--output-dir", str(out), *TINY, *STAGES, "--seeds", "42,43"]) == 0
    return out, (out / "summary.md").read_text()


def test_every_seed_chain_trains_on_the_one_set_of_images(stores_made: list[int],
                                                           source: tuple[Path, str]) -> None:
    assert len(stores_made) == 3  # train, val, test once: seed 43 reuses seed 42's images


def test_seeds_run_one_chain_per_seed_on_one_split_and_report_the_verdict(source: tuple[Path, str]) -> None:
    out, summary = source
    assert (out / "split.json").is_file() and (out / "config.yaml").is_file()
    for seed in (42, 43):
        chain = out / f"seed-{seed}"
        assert not (chain / "split.json").exists() and not (chain / "config.yaml").exists()
        results = {stage: json.loads((chain / stage / "result.json").read_text())
                   for stage in ("teacher", "baseline", "direct")}
        assert {result["seed"] for result in results.values()} == {seed}
        # stage_overrides.teacher: its own epochs and base rate (resnet18: 0.5x); the others keep train.*
        assert [results[s]["epochs_run"] for s in ("teacher", "baseline", "direct")] == [2, 1, 1]
        assert results["teacher"]["lr"] == pytest.approx(0.004 * 0.5)
        assert results["baseline"]["lr"] == pytest.approx(0.002 * 0.5)  # digits.yaml's train.lr
    labels = [pd.read_csv(out / f"seed-{s}" / "baseline" / "test_predictions.csv")["y_true"]
              for s in (42, 43)]
    assert labels[0].equals(labels[1])  # the same test images in every chain
    different = load_file(str(out / "seed-42" / "baseline" / "model.safetensors"))
    other = load_file(str(out / "seed-43" / "baseline" / "model.safetensors"))
    assert not all(torch.equal(different[k], other[k]) for k in different)  # the seed reached the weights
    assert "# Run summary over 2 seeds" in summary and "## Verdict" in summary
    assert "direct KD vs baseline: " in summary and "2 seeds)" in summary
    table = pd.read_csv(out / "summary.csv")
    assert list(table["stage"]) == ["teacher", "baseline", "direct"] and set(table["seeds"]) == {2}
    evidence = json.loads((out / "evidence.json").read_text())["comparisons"]
    assert [c["stage"] for c in evidence] == ["direct"] and set(evidence[0]["mcnemar"]) == {"42", "43"}
    assert (out / "comparison.png").stat().st_size > 0
    assert (out / "seed-42" / "summary.md").is_file()  # each chain keeps its own one-seed report
    # what the student buys, measured once for the run and read at the mean accuracies
    # (no share of the teacher's accuracy where a stage of this tiny run is at chance)
    assert re.search(r"The direct (keeps [\d.]+% of the teacher's accuracy with|\(no share of the teacher's "
                     r"accuracy is claimed: the \w+ is at chance\) has) ", summary)
    assert (out / "seed-42" / "cost.json").is_file() and not (out / "seed-43" / "cost.json").exists()


def test_evaluate_finds_the_run_of_a_seed_chains_file(source: tuple[Path, str],
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    out, _ = source
    weights = out / "seed-43" / "direct" / "model.safetensors"
    assert evaluate_main(["--checkpoint", str(weights), "--device", "cpu"]) == 0
    scored = json.loads(capsys.readouterr().out)
    expected = json.loads((out / "seed-43" / "direct" / "result.json").read_text())["test"]
    assert scored["accuracy"] == pytest.approx(expected["accuracy"])


def test_export_takes_a_seed_chains_stage(source: tuple[Path, str],
                                          capsys: pytest.CaptureFixture[str]) -> None:
    out, _ = source
    args = ["--run-dir", str(out), "--stage", "direct", "--format", "torchscript", "--images", "8"]
    assert export_main([*args, "--seed", "43"]) == 0
    assert (out / "seed-43" / "direct" / "model.torchscript.pt").is_file()
    assert not (out / "seed-42" / "direct" / "model.torchscript.pt").exists()
    capsys.readouterr()
    assert export_main([*args, "--seed", "7"]) == 2
    assert capsys.readouterr().err.strip() == (f"error: seed 7 is not a seed of the run in {out} (42, 43); "
                                               "pass one of those with --seed")


def test_teacher_from_reuses_teacher_and_baseline_and_trains_the_new_loss(
        source: tuple[Path, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src, _ = source
    out = tmp_path / "dist"
    args = ["--output-dir", str(out), *TINY, *STAGES, "--seeds", "42,43", "--teacher-from", str(src),
            "--set", "distillation.loss=dist", "--set", "train.log_interval=1"]
    assert main("cnn", args) == 0
    stdout = capsys.readouterr().out
    assert "direct KD vs baseline: " in stdout  # the verdict is printed at the end of the run
    for seed in (42, 43):
        for stage in ("teacher", "baseline"):
            result = json.loads((out / f"seed-{seed}" / stage / "result.json").read_text())
            assert result["reused_from"] == str((src / f"seed-{seed}" / stage).resolve())
            assert not (out / f"seed-{seed}" / stage / "checkpoint_latest.pt").exists()  # not retrained
        direct = json.loads((out / f"seed-{seed}" / "direct" / "result.json").read_text())
        assert "reused_from" not in direct
        log = (out / f"seed-{seed}" / "direct" / "metrics.jsonl").read_text().splitlines()
        records = [json.loads(line) for line in log]
        assert any({"inter", "intra", "kd", "ce"} <= set(record) for record in records), "DIST's parts logged"
    assert (out / "split.json").read_bytes() == (src / "split.json").read_bytes()


def test_a_kd_stage_retrained_from_a_reused_teacher_equals_the_original(source: tuple[Path, str],
                                                                        tmp_path: Path) -> None:
    src, _ = source
    out = tmp_path / "again"
    assert main("cnn", ["--output-dir", str(out), *TINY, "--stages", "direct", "--seeds", "42",
                        "--teacher-from", str(src)]) == 0
    again = load_file(str(out / "seed-42" / "direct" / "model.safetensors"))
    original = load_file(str(src / "seed-42" / "direct" / "model.safetensors"))
    assert again.keys() == original.keys() and all(torch.equal(again[k], original[k]) for k in again)


def _refused(args: list[str], capsys: pytest.CaptureFixture[str], out: Path) -> str:
    assert main("cnn", ["--output-dir", str(out), *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --teacher-from") and err.count("\n") == 1, err
    assert not out.exists()  # nothing written for the refused command
    return err


def test_teacher_from_mismatches_are_one_line_errors_that_write_nothing(
        source: tuple[Path, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src, _ = source
    out = tmp_path / "refused"
    base = [*TINY, *STAGES, "--teacher-from"]
    assert "not a run directory" in _refused([*base, str(tmp_path)], capsys, out)
    assert "data.image_size: 8 -> 16" in _refused([*base, str(src), "--seeds", "42", "--image-size", "16"],
                                                  capsys, out)
    assert "no chain for seed 44" in _refused([*base, str(src), "--seeds", "42,44"], capsys, out)
    assert "models.teacher: 'resnet18' -> 'resnet34'" in _refused(
        [*base, str(src), "--seeds", "42", "--set", "models.teacher=resnet34"], capsys, out)
    assert "stage_overrides.teacher.lr: 0.004 -> 0.001" in _refused(
        [*base, str(src), "--seeds", "42", "--set", "stage_overrides.teacher.lr=0.001"], capsys, out)
    tampered = tmp_path / "tampered"
    shutil.copytree(src, tampered)
    weights = tampered / "seed-42" / "teacher" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-4] + b"\0\0\0\0")
    assert "do not match the hash" in _refused([*base, str(tampered), "--seeds", "42"], capsys, out)
    shutil.copy(src / "seed-42" / "teacher" / "model.safetensors", weights)
    result = tampered / "seed-42" / "teacher" / "result.json"
    result.write_text(json.dumps({**json.loads(result.read_text()), "num_classes": 11}))
    assert "num_classes 11 (this run: 10)" in _refused([*base, str(tampered), "--seeds", "42"], capsys, out)


def test_teacher_from_refuses_a_stage_this_run_already_started(source: tuple[Path, str],
                                                              tmp_path: Path) -> None:
    """A stage holding any checkpoint (here only checkpoint_previous.pt: a save was interrupted
    between its two renames) has trained here; reusing another run's would discard that work."""
    src, _ = source
    cfg = RunDirectory(src).saved_config()
    top = RunDirectory(tmp_path / "started")
    chains = seed_chains(cfg, top)
    started = top.root / "seed-42" / "teacher"
    started.mkdir(parents=True)
    shutil.copy(src / "seed-42" / "teacher" / "checkpoint_latest.pt", started / "checkpoint_previous.pt")
    with pytest.raises(UserError, match="seed-42/teacher was already started in this run"):
        plan_reuse(cfg, top, chains, src)


def test_teacher_from_a_run_without_its_split_says_what_to_pass(source: tuple[Path, str],
                                                                tmp_path: Path) -> None:
    src, _ = source
    copy = tmp_path / "unsplit"
    copy.mkdir()
    shutil.copy(src / "config.yaml", copy / "config.yaml")
    cfg = RunDirectory(src).saved_config()
    top = RunDirectory(tmp_path / "new")
    advice = r"re-run its training command, or pass another run's --output-dir as --teacher-from$"
    with pytest.raises(UserError, match=r"^--teacher-from: .*unsplit has no split.json: .*" + advice):
        plan_reuse(cfg, top, seed_chains(cfg, top), copy)
