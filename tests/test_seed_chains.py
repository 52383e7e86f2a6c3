"""The seed chains' layout and the resume rules of a run with several seeds (no training here)."""
from __future__ import annotations

from pathlib import Path

import pytest

from src.cli.train import build_parser
from src.config.loader import load_config
from src.errors import IncompatibleResumeError, UserError
from src.rundirs.rundir import RunDirectory, prepare_run_directory
from src.rundirs.seeds import seed_chains


def test_one_chain_per_seed_in_its_own_folder_and_one_seed_keeps_the_layout(tmp_path: Path) -> None:
    top = RunDirectory(tmp_path)
    chains = seed_chains(load_config(None, ["runtime.seeds=[43, 42]", "runtime.seed=7"]), top)
    assert [(c.seed, c.run_dir.root, c.cfg.runtime.seed, c.cfg.runtime.seeds) for c in chains] == \
        [(43, tmp_path / "seed-43", 43, None), (42, tmp_path / "seed-42", 42, None)]
    (single,) = seed_chains(load_config(None, ["runtime.seed=7"]), top)
    assert (single.seed, single.run_dir) == (7, top)


def test_seeds_flag_and_its_validation() -> None:
    assert build_parser("cnn").parse_args(["--seeds", "42,43,44"]).seeds == [42, 43, 44]
    with pytest.raises(SystemExit):
        build_parser("cnn").parse_args(["--seeds", "42,x"])
    for bad in ("runtime.seeds=[42, 42]", "runtime.seeds=[-1]", "runtime.seeds=[]"):
        with pytest.raises(UserError, match="runtime.seeds"):
            load_config(None, [bad])


def test_a_change_is_breaking_when_any_seeds_chain_started_and_adding_a_seed_is_not(tmp_path: Path) -> None:
    run = RunDirectory(tmp_path / "run")
    prepare_run_directory(run, load_config(None, ["runtime.seeds=[42, 43]"]), "auto", write=True)
    run.split_path.write_text("{}")  # the chains train on the run's one split
    started = run.root / "seed-43" / "teacher"
    started.mkdir(parents=True)
    (started / "checkpoint_latest.pt").write_bytes(b"state")
    assert run.stage_statuses()["teacher"] == "trained"  # what seed-43 holds counts for the run
    assert {status for stage, status in run.stage_statuses().items() if stage != "teacher"} == {"fresh"}
    with pytest.raises(IncompatibleResumeError, match="train.lr.*stage teacher already trained"):
        prepare_run_directory(run, load_config(None, ["runtime.seeds=[42, 43]", "train.lr=0.5"]), "auto",
                              write=False)
    notes = prepare_run_directory(run, load_config(None, ["runtime.seeds=[42, 43, 44]"]), "auto", write=False)
    assert notes == ["runtime.seeds: [42, 43] -> [42, 43, 44]"]
