"""Two CPU processes under torchrun (gloo): the run trains end to end, resumes, and only
rank 0 writes files, with metrics computed over both ranks' samples; an out-of-memory error on
one rank makes both redo the window with the same smaller micro-batch; a NaN loss on one rank
stops both with the same error line and exit code 3."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from engine_fixtures import PlainEval, tiny_cnn

from src.engine.evaluation import evaluate_model

REPO = Path(__file__).resolve().parents[1]


def _torchrun(stage_dir: Path, epochs: int, *extra: str) -> subprocess.CompletedProcess[str]:
    config = json.dumps({"epochs": epochs, "batch_size": 8, "accumulation_steps": 2,
                         "checkpoint_every_steps": 3})
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone",
               "-m", "engine_fixtures", str(stage_dir), "--ddp", "--train", "100", "--val", "30",
               "--config", config, *extra]
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{REPO / 'tests'}", "OMP_NUM_THREADS": "1"}
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)


@pytest.mark.slow
def test_two_process_gloo_run_trains_resumes_and_only_rank0_writes(tmp_path: Path) -> None:
    stage = tmp_path / "stage"
    first = _torchrun(stage, epochs=1)
    assert first.returncode == 0, first.stderr[-3000:]
    second = _torchrun(stage, epochs=2)  # more epochs: a harmless change, so the run continues
    assert second.returncode == 0, second.stderr[-3000:]

    table = pd.read_csv(stage / "epochs.csv")
    assert table["epoch"].tolist() == [1, 2]
    state = torch.load(stage / "checkpoint_latest.pt", weights_only=True)
    # 100 samples over 2 ranks = 50 each, windows of 16 per rank: 4 updates per epoch
    assert (state["world_size"], state["epoch"], state["global_step"]) == (2, 3, 8)
    result = json.loads((stage / "result.json").read_text())
    # validation metrics gathered from both ranks equal one process scoring the whole set
    model = tiny_cnn()
    model.load_state_dict(torch.load(stage / "final.pt", weights_only=True))
    single = evaluate_model(model, PlainEval(30), device=torch.device("cpu"), batch_size=8, num_workers=0,
                            seed=0, num_classes=10)
    best = table[table["epoch"] == int(result["best_epoch"])].iloc[0]
    assert (best["val_loss"], best["val_accuracy"]) == pytest.approx((single.loss, single.accuracy), rel=1e-5)
    assert result["resumed_from"].endswith("checkpoint_latest.pt") and result["epochs_run"] == "2"
    assert json.loads((tmp_path / "writes_rank1.json").read_text()) == []
    assert not (tmp_path / "writes_rank0.json").exists()


@pytest.mark.slow
def test_out_of_memory_on_one_rank_makes_every_rank_redo_the_window_alike(tmp_path: Path) -> None:
    """Per rank: 50 samples, windows of 16 (2 micro-batches of 8). Rank 1 runs out of memory in
    window 2's first micro-batch (rank 0 has computed all of window 2 by then); later rank 0 runs
    out in the last micro-batch of window 3 (the backward where DDP would all-reduce). Both ranks
    must halve together twice, apply every window exactly once, and end with identical weights.
    Before the fix, rank 1 halved alone and trained on with micro-batch 4 against rank 0's 8."""
    stage = tmp_path / "stage"
    run = _torchrun(stage, 1, "--oom", "1:3,0:12", "--dump-ranks")
    assert run.returncode == 0, run.stderr[-3000:]
    ranks = [json.loads((stage / f"rank{r}.json").read_text()) for r in (0, 1)]
    for rank in ranks:
        assert (rank["micro_batch"], rank["accumulation_steps"]) == (2, 8)  # 8 -> 4 -> 2, window kept
        assert rank["global_step"] == rank["updates"] == 4  # 16, 16, 16, 2 per rank: none lost, none twice
    assert ranks[0]["oom_history"] == ["micro-batch 8 on another rank", "micro-batch 4"]
    assert ranks[1]["oom_history"] == ["micro-batch 8", "micro-batch 4 on another rank"]
    weights = [torch.load(stage / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


@pytest.mark.slow
def test_a_nan_loss_on_one_rank_stops_every_rank_with_one_line_and_exit_code_3(tmp_path: Path) -> None:
    """Rank 1's loss is NaN in update 2 (its 3rd micro-batch); rank 0's is finite. Each rank
    prints the same error line and exits 3. torchrun itself then exits 1 with its own failure
    summary (a ChildFailedError traceback of the launcher, listing each rank's exit code), which
    no program it starts can change; before the fix rank 0 trained on and failed in a collective
    that rank 1 had left (a gloo error, another exit code)."""
    run = _torchrun(tmp_path / "stage", 1, "--nan", "1:3")
    output = run.stdout + run.stderr
    errors = [line for line in output.splitlines() if line.startswith("error: ")]
    assert len(errors) == 2 and errors[0] == errors[1], output[-3000:]
    assert errors[0].startswith("error: non-finite loss at step 2: nan. Likely causes: ")
    assert run.returncode == 1  # torchrun's own code when a worker fails
    codes = dict(re.findall(r"rank\s*: (\d) \(local_rank: \d\)\s+exitcode\s*: (-?\d+)", output))
    assert codes == {"0": "3", "1": "3"}, output[-3000:]  # torchrun's summary, per rank
    assert output.count("Traceback (most recent call last)") == 1  # torchrun's; none from a rank
    assert "ChildFailedError" in output


def test_a_rank_torchrun_stops_while_it_ends_with_the_agreed_error_reports_that_error(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """The slower rank is still cleaning up after the NaN when torchrun, seeing the other rank's
    exit, sends it SIGTERM: outside training that raises CommandInterrupted over the error. The
    command still ends with the error's line and exit code 3, and ignores later SIGTERMs."""
    import signal

    from src.cli import train
    from src.engine.divergence import NonFiniteLossError
    from src.engine.signals import CommandInterrupted

    def diverged_then_stopped(preset: str, argv: object) -> None:
        try:
            raise NonFiniteLossError(2, float("nan"))
        finally:
            raise CommandInterrupted(signal.SIGTERM)  # torchrun's SIGTERM, during the clean-up

    monkeypatch.setattr(train, "run", diverged_then_stopped)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    previous = signal.getsignal(signal.SIGTERM)
    try:
        assert train.main("cnn", []) == 3
        assert signal.getsignal(signal.SIGTERM) == signal.SIG_IGN
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert capsys.readouterr().err.startswith("error: non-finite loss at step 2: nan. ")
    monkeypatch.delenv("WORLD_SIZE")  # a single process stopped by SIGTERM is an interruption
    monkeypatch.setattr(train, "run", diverged_then_stopped)
    assert train.main("cnn", []) == 143
    assert capsys.readouterr().err.startswith("interrupted: stopped by SIGTERM")
