"""The KD study: on digits, on the CPU, does distillation help, and with which loss?

It writes docs/RESULTS.md whatever the numbers say. Three ordinary run directories are made
through the real entry point (each resumable like any run; re-running this script continues):

    OUT/kd     teacher, assistant, student (TAKD), baseline, direct; distillation.loss=kd; --seeds
    OUT/dkd    the same stages with dkd, --teacher-from OUT/kd
    OUT/dist   the same stages with dist, --teacher-from OUT/kd

--teacher-from reuses each seed's teacher and baseline from OUT/kd (they do not depend on the
loss); the assistant, the student and the direct student are trained per loss. The verdicts
come from each run's evidence.json (paired on the same test images, 95% interval over seeds
and test images). The regime (``regime_why`` below) is chosen for what the study can show within
about 40 minutes on 2 cores.

    .venv/bin/python bench/kd_study.py                          # the study (the lead runs it)
    .venv/bin/python bench/kd_study.py --epochs 1 --teacher-epochs 1 --subset 60 \\
        --seeds 42,43 --out /tmp/kd-smoke --results /tmp/RESULTS.md   # a smoke test
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from _common import machine_line  # puts src on the path

from src.config.stages import STAGES
from src.evidence.stats import mean_and_std
from src.runs.rundir import SEED_PREFIX, RunDirectory
from src.utils.atomic import atomic_write_json, atomic_write_text

REPO = Path(__file__).resolve().parents[1]
TRAIN = REPO / "cnn_distillation" / "train.py"
STAGE_LIST = "teacher,assistant,student,baseline,direct"


def regime_why(args: argparse.Namespace, test_images: object) -> str:
    """Why this regime (the defaults were chosen for these reasons; the numbers are this run's)."""
    seeds = len(args.seeds.split(","))
    return f"""\
- **{args.test_fraction:.0%} of the digits are the test split** (`data.test_fraction`, with
  `val_fraction` {args.val_fraction}): {test_images} test images, so one image is
  {_per_image(test_images)} points (0.37 with `make run`'s 270). The test split decides how small
  a difference the interval can resolve; the few training images left are where soft targets
  are expected to matter most.
- **The teacher trains {args.teacher_epochs} epochs, the other stages {args.epochs}**
  (`stage_overrides.teacher.epochs`): a teacher is trained once per seed and reused by every
  loss (`--teacher-from`), while the students get the short budget `make run` can afford. "A
  better student for the same small budget" is the claim KD makes; a teacher no better than the
  baseline could not support it.
- **{args.image_size} px, AdamW, batch 32** (`configs/digits.yaml`): the digits are 8x8 scans;
  upsampling would multiply every stage's cost for no new information.
- **{seeds} seeds**: each seed trains its own teacher, assistant and students, so the interval
  covers seed-to-seed variation, not only which images are in the test split.
- Cost of the defaults: 3 teachers, 3 baselines and 27 assistant/student/direct stages on about
  720 training images: about 15 minutes on an idle 2-core machine, estimated from `make run`'s
  measured stage times (docs/PERFORMANCE.md) scaled by images and epochs, and within 40 on one
  2.5x slower.
"""


def _per_image(test_images: object) -> str:
    return f"{100 / test_images:.2f}" if isinstance(test_images, int) and test_images else "?"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--out", type=Path, default=REPO / "runs" / "kd-study", help="folder of the three run directories")
    add("--results", type=Path, default=REPO / "docs" / "RESULTS.md", help="the report to write")
    add("--losses", default="kd,dkd,dist", help="comma list; the first trains the teachers")
    add("--seeds", default="42,43,44")
    add("--epochs", type=int, default=5, help="epochs of every stage but the teacher")
    add("--teacher-epochs", type=int, default=15)
    add("--test-fraction", type=float, default=0.5)
    add("--val-fraction", type=float, default=0.1)
    add("--image-size", type=int, default=8)
    add("--subset", type=int, help="at most N images per split (smoke tests only)")
    add("--device", default="cpu")
    return parser.parse_args(argv)


def regime(args: argparse.Namespace) -> list[str]:
    """The flags every run of the study shares."""
    flags = ["--epochs", str(args.epochs), "--image-size", str(args.image_size), "--device", args.device,
             "--stages", STAGE_LIST, "--seeds", args.seeds,
             "--set", f"stage_overrides.teacher.epochs={args.teacher_epochs}",
             "--set", f"data.test_fraction={args.test_fraction}",
             "--set", f"data.val_fraction={args.val_fraction}"]
    return flags + (["--subset", str(args.subset)] if args.subset else [])


def run_commands(args: argparse.Namespace) -> dict[str, list[str]]:
    """loss -> the train.py command of its run directory (the first loss trains the teachers)."""
    losses = [loss.strip() for loss in args.losses.split(",") if loss.strip()]
    commands = {}
    for index, loss in enumerate(losses):
        command = [sys.executable, str(TRAIN), "--output-dir", str(args.out / loss), *regime(args),
                   "--set", f"distillation.loss={loss}"]
        if index > 0:
            command += ["--teacher-from", str(args.out / losses[0])]
        commands[loss] = command
    return commands


def _load(path: Path, default: Any) -> Any:
    return json.loads(path.read_text()) if path.is_file() else default


def run_study(args: argparse.Namespace, commands: dict[str, list[str]]) -> list[dict[str, Any]]:
    """Run (or continue) each run directory; every session's wall time goes to OUT/study.json."""
    args.out.mkdir(parents=True, exist_ok=True)
    log_path = args.out / "study.json"
    sessions = _load(log_path, [])
    for loss, command in commands.items():
        print(f"kd_study: {loss}: {shlex.join(command)}", flush=True)
        started = time.perf_counter()
        try:
            done = subprocess.run(command, cwd=REPO)
        finally:  # an interrupted session's time still counts
            sessions.append({"run": loss, "seconds": round(time.perf_counter() - started, 1),
                             "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                             "load_average": os.getloadavg()[0]})
            atomic_write_json(log_path, sessions)
        if done.returncode != 0:
            raise SystemExit(f"kd_study: the {loss} run stopped (exit {done.returncode}); fix what it said "
                             "and re-run this command to continue where it stopped")
    return sessions


def _results(run: Path) -> dict[int, dict[str, dict[str, Any]]]:
    """seed -> stage -> result.json of one run directory."""
    chains = RunDirectory(run).chain_dirs()[1:]  # the seed-<n> folders
    return {int(chain.root.name.removeprefix(SEED_PREFIX)): {stage: chain.read_result(stage)
                                                             for stage in chain.finished_stages()}
            for chain in chains}


def _cell(values: list[float]) -> str:
    if not values:
        return "n/a"
    mean, std = mean_and_std(values)
    return f"{100 * mean:.2f} ± {100 * std:.2f}" if len(values) > 1 else f"{100 * mean:.2f}"


def _trained_seconds(results: dict[int, dict[str, dict[str, Any]]]) -> float:
    """Training time of the stages this run trained itself (reused ones were paid for elsewhere)."""
    return sum(r.get("train_time_sec") or 0.0 for stages in results.values() for r in stages.values()
               if "reused_from" not in r)


def report(args: argparse.Namespace, commands: dict[str, list[str]], sessions: list[dict[str, Any]],
           argv: list[str]) -> str:
    runs = {loss: _results(args.out / loss) for loss in commands}
    evidence = {loss: _load(args.out / loss / "evidence.json", {"comparisons": []})["comparisons"]
                for loss in commands}
    images = next((c["test_images"] for cs in evidence.values() for c in cs), "?")
    wall = sum(s["seconds"] for s in sessions)
    training = sum(_trained_seconds(r) for r in runs.values())
    loads = [s.get("load_average", 0.0) for s in sessions]
    seeds = len(args.seeds.split(","))
    lines = [
        "# Results: does distillation help?",
        "",
        f"Written by `bench/kd_study.py` on {datetime.now(timezone.utc):%Y-%m-%d} and published whatever it "
        "shows. CNN family (ResNet-50 -> ResNet-34 -> ResNet-18, baseline ResNet-18, direct ResNet-18) on "
        "scikit-learn's digits, on the CPU.",
        "",
        "## Command, time and machine",
        "",
        "    " + shlex.join(["python", "bench/kd_study.py", *argv]),
        "",
        f"- Took **{wall / 60:.1f} min** of wall time (summed over {len(sessions)} session(s) of the "
        f"runs; {training / 60:.1f} min of it training stages). Load average while it ran: "
        f"{min(loads, default=0):.1f} to {max(loads, default=0):.1f}.",
        f"- {machine_line(torch.device('cpu'))}.",
        "- The runs it made (each an ordinary run directory; re-running continues):",
        "",
        *[f"      {shlex.join(['python', *map(_relative, command[1:])])}" for command in commands.values()],
        "",
        "## The regime, and why",
        "",
        f"Teacher {args.teacher_epochs} epochs, every other stage {args.epochs}; {args.image_size} px; "
        f"test fraction {args.test_fraction}, validation {args.val_fraction}"
        + (f"; at most {args.subset} images per split" if args.subset else "") + f"; seeds {args.seeds}.",
        "",
        regime_why(args, images),
        f"## Test accuracy per stage (%, mean ± std over {seeds} seeds; {images} test images)",
        "",
        "| loss | teacher | assistant | student (TAKD) | baseline | direct |",
        "|---|---|---|---|---|---|",
    ]
    for loss, results in runs.items():
        cells = [_cell([r[s]["test"]["accuracy"] for r in results.values() if s in r]) for s in STAGES]
        lines.append(f"| {loss} | " + " | ".join(cells) + " |")
    lines += ["", "Teacher and baseline are the same models in every row (reused from the first run).", "",
              "## Did distillation help? (paired, 95% interval over seeds and test images)", "",
              "| loss | comparison | difference (points) | 95% CI | exact McNemar p per seed | verdict |",
              "|---|---|---|---|---|---|"]
    for loss, comparisons in evidence.items():
        for c in comparisons:
            d = c["difference"]
            p_values = ", ".join(f"{seed}: {t['p_value']:.3g}" for seed, t in c["mcnemar"].items())
            lines.append(f"| {loss} | {c['stage']} vs {c['reference']} | {100 * d['estimate']:+.2f} | "
                         f"{100 * d['low']:+.2f} to {100 * d['high']:+.2f} | {p_values} | {c['verdict']} |")
    lines += ["", *proposal(runs, evidence, args), ""]
    return "\n".join(lines)


def _relative(part: str) -> str:
    try:
        return str(Path(part).relative_to(REPO))
    except ValueError:
        return part


def proposal(runs: dict[str, Any], evidence: dict[str, list[dict[str, Any]]],
             args: argparse.Namespace) -> list[str]:
    """The loss whose TAKD student shows the clearest signal (highest lower bound of its interval)
    and what `make run` would cost with it, from this study's own stage times (first seed)."""
    takd = {loss: c for loss, cs in evidence.items() for c in cs if c["stage"] == "student"}
    if not takd:
        return ["## Proposed `make run` default", "", "No student-baseline comparison finished."]
    best = max(takd, key=lambda loss: takd[loss]["difference"]["low"])
    first = runs[best][min(runs[best])] if runs[best] else {}
    make_run = [first[s] for s in ("teacher", "assistant", "student", "baseline") if s in first]
    seconds = sum(result.get("train_time_sec") or 0.0 for result in make_run)
    return [
        "## Proposed `make run` default",
        "",
        f"The clearest signal for the TAKD student (the highest lower bound of its interval) came from "
        f"**{best}**: {takd[best]['verdict']}. For `make run` (one seed, four stages) the proposal is this "
        "regime with that loss, i.e. in `cnn_distillation/configs/digits.yaml`:",
        "",
        f"    data: {{val_fraction: {args.val_fraction}, test_fraction: {args.test_fraction}}}",
        f"    distillation: {{loss: {best}}}",
        f"    train: {{epochs: {args.epochs}}}",
        f"    stage_overrides: {{teacher: {{epochs: {args.teacher_epochs}}}}}",
        "",
        f"Its four stages trained for {seconds / 60:.1f} min in this study's first seed (plus about half a "
        "minute of start-up and testing), which is the figure to hold against the 5-minute budget on an "
        "idle 2-core machine. One seed's verdict comes from the image-level interval only.",
    ]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    commands = run_commands(args)
    sessions = run_study(args, commands)
    text = report(args, commands, sessions, argv)
    atomic_write_text(args.results, text)
    print(f"kd_study: wrote {args.results}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
