"""The KD study: on digits, on the CPU, does distillation help, does the assistant help, and
with which loss?

It writes docs/RESULTS.md whatever the numbers say. Three ordinary run directories are made
through the real entry point (each resumable like any run; re-running this script continues):

    OUT/kd     teacher, assistant, student (TAKD), baseline, direct; distillation.loss=kd; --seeds
    OUT/dkd    the same stages with dkd, --teacher-from OUT/kd
    OUT/dist   the same stages with dist, --teacher-from OUT/kd

--teacher-from reuses each seed's teacher and baseline from OUT/kd (they do not depend on the
loss); the assistant, the student and the direct student are trained per loss. The loss proposed
for `make run` is chosen on the **validation** split (each stage's val_predictions.csv); the test
predictions are read only for the final tables, through each run's evidence.json (paired on the
same test images, 95% intervals over seeds and test images, McNemar p-values Holm-adjusted over
the whole study). The regime (``regime_why`` below) is fixed beforehand, not chosen on any data.

    .venv/bin/python bench/kd_study.py                          # the study (make study)
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
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from _common import machine_line

from src.config.loader import read_yaml
from src.config.stages import STAGES
from src.evidence.stats import holm, mean_and_std
from src.evidence.verdict import QUESTIONS, RULE, Comparison, compare_stages
from src.rundirs.rundir import SEED_PREFIX, RunDirectory
from src.utils.atomic import atomic_write_json, atomic_write_text

REPO = Path(__file__).resolve().parents[1]
TRAIN = REPO / "cnn_distillation" / "train.py"
MAKE_RUN_CONFIG = REPO / "cnn_distillation" / "configs" / "digits.yaml"
STAGE_LIST = "teacher,assistant,student,baseline,direct"
TAKD_VS_BASELINE = QUESTIONS[0]  # the comparison the loss is chosen by (on validation)


def regime_why(args: argparse.Namespace, test_images: object) -> str:
    """Why this regime (the defaults were chosen for these reasons; the numbers are this run's)."""
    seeds = len(args.seeds.split(","))
    return f"""\
- **{args.test_fraction:.0%} of the digits are the test split** (`data.test_fraction`, with
  `val_fraction` {args.val_fraction}; `make run` splits the same way): {test_images} test images.
  One image moves an accuracy by {_per_image(test_images)} points: that is the step size, not the
  precision; how precisely a difference is known is the width of its interval below. The test
  split decides how small a difference the interval can resolve; the few training images left
  are where soft targets are expected to matter most.
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


def _chains(run: Path) -> dict[int, RunDirectory]:
    """seed -> its chain (the ``seed-<n>`` folders) of one run directory."""
    chains = RunDirectory(run).chain_dirs()[1:]
    return {int(chain.root.name.removeprefix(SEED_PREFIX)): chain for chain in chains}


def _results(run: Path) -> dict[int, dict[str, dict[str, Any]]]:
    """seed -> stage -> result.json of one run directory."""
    return {seed: {stage: chain.read_result(stage) for stage in chain.finished_stages()}
            for seed, chain in _chains(run).items()}


@dataclass(frozen=True)
class Choice:
    """The loss proposed for `make run`, and the validation comparisons it was chosen by."""

    loss: str
    validation: dict[str, Comparison]  # loss -> TAKD student vs baseline on the validation split


def choose_on_validation(out: Path, losses: list[str]) -> Choice:
    """The loss whose TAKD student gains most over the baseline on the validation split (the mean
    over seeds; every run holds the same baselines, so this is the best student's validation
    accuracy). Reads each stage's val_predictions.csv, never the test predictions."""
    validation = {}
    for loss in losses:
        comparison = compare_stages(_chains(out / loss), TAKD_VS_BASELINE, split="val")
        if comparison is None:
            raise SystemExit(f"kd_study: {out / loss} has no val_predictions.csv for its student and "
                             "baseline (stages finished before stages wrote them); delete "
                             f"{out} and run the study again")
        validation[loss] = comparison
    return Choice(max(losses, key=lambda loss: validation[loss].interval.estimate), validation)


def study_holm(evidence: dict[str, list[dict[str, Any]]]) -> dict[tuple[str, str, str], float]:
    """(loss, comparison, seed) -> its McNemar p-value Holm-adjusted over every test of the study."""
    keys = [(loss, c["name"], seed) for loss, cs in evidence.items() for c in cs for seed in c["mcnemar"]]
    raw = [c["mcnemar"][seed]["p_value"] for cs in evidence.values() for c in cs for seed in c["mcnemar"]]
    return dict(zip(keys, holm(raw), strict=True))


def _cell(values: list[float]) -> str:
    if not values:
        return "n/a"
    mean, std = mean_and_std(values)
    return f"{100 * mean:.2f} ± {100 * std:.2f}" if len(values) > 1 else f"{100 * mean:.2f}"


def _trained_seconds(results: dict[int, dict[str, dict[str, Any]]]) -> float:
    """Training time of the stages this run trained itself (reused ones were paid for elsewhere)."""
    return sum(r.get("train_time_sec") or 0.0 for stages in results.values() for r in stages.values()
               if "reused_from" not in r)


def _points(difference: dict[str, Any]) -> tuple[str, str, str]:
    """(difference, interval, per-seed differences) in points."""
    per_seed = ", ".join(f"{100 * d:+.2f}" for d in difference.get("per_seed", ()))
    return (f"{100 * difference['estimate']:+.2f}",
            f"{100 * difference['low']:+.2f} to {100 * difference['high']:+.2f}", per_seed)


def _find(comparisons: list[dict[str, Any]], stage: str, reference: str) -> dict[str, Any] | None:
    return next((c for c in comparisons if (c["stage"], c["reference"]) == (stage, reference)), None)


def answers(choice: Choice, evidence: dict[str, list[dict[str, Any]]], images: object) -> list[str]:
    """Both questions a TAKD user asks, answered on the test split for the loss chosen on validation."""
    chosen = evidence[choice.loss]
    lines = ["## The answers", "",
             f"The loss was chosen on the validation split (below): **{choice.loss}**. With it, on {images} "
             "test images:", ""]
    asked: dict[str, list[str]] = {}
    for question in QUESTIONS:
        found = _find(chosen, question.stage, question.reference)
        verdict = found["verdict"] if found else "not measured"
        asked.setdefault(question.asks, []).append(f"{question.name}: {verdict}")
    lines += [f"- **{asks}** " + "; ".join(verdicts) + "." for asks, verdicts in asked.items()]
    lines += ["", "Every loss's comparisons are in the last table; each verdict follows the rule under "
              "\"Method\"."]
    return lines


def method(evidence: dict[str, list[dict[str, Any]]]) -> list[str]:
    """How the numbers were made, and how many there are."""
    intervals = sum(len(cs) for cs in evidence.values())
    tests = sum(len(c["mcnemar"]) for cs in evidence.values() for c in cs)
    return [
        "## Method", "",
        "- **Paired.** Every stage of a seed is tested on the same images, and student, direct and baseline "
        "start from the same seed-derived weights and batches, so two stages are compared image by image.",
        "- **The interval** of a difference over seeds treats seeds and test images as crossed random "
        "effects (every seed is scored on the same images): the per-seed differences' squared standard "
        "error plus the part the shared test images add (two-way mean squares), with Student's t at "
        "Satterthwaite's degrees of freedom, and never narrower than a t-interval with seeds - 1 degrees "
        "of freedom over the per-seed differences. README.md, \"How to read the verdict\", gives its "
        "assumptions; tests/test_evidence_coverage.py checks by simulation that it covers the truth "
        "93-97% of the time.",
        "- **The exact McNemar test** per seed counts the images only one of the two models got right.",
        f"- **Multiplicity.** {intervals} intervals and {tests} McNemar tests: each interval is a 95% "
        "interval for its own comparison, not adjusted for their number; the McNemar p-values are given "
        f"raw and Holm-adjusted over all {tests} tests of the study (the chance of any false rejection "
        "among them stays at 5%).",
        f"- {RULE}",
        "- **Choices without the test images.** The regime was fixed beforehand; the loss is chosen on the "
        "validation split (each stage's `val_predictions.csv`); the test predictions are read only for the "
        "tables of test accuracy and paired comparisons.",
        "",
    ]


def validation_table(choice: Choice) -> list[str]:
    first = next(iter(choice.validation.values()))
    lines = [f"## Choosing the loss on the validation split ({first.test_images} images)", "",
             "The rule: the loss whose TAKD student beats the baseline by most on the validation split "
             "(mean over seeds). Its interval is shown for context; it is not the test.", "",
             "| loss | student (TAKD) vs baseline on validation (points) | 95% CI | per-seed differences |",
             "|---|---|---|---|"]
    for loss, comparison in choice.validation.items():
        estimate, interval, per_seed = _points(asdict(comparison.interval))
        mark = " (chosen)" if loss == choice.loss else ""
        lines.append(f"| {loss}{mark} | {estimate} | {interval} | {per_seed} |")
    return [*lines, ""]


def comparison_table(evidence: dict[str, list[dict[str, Any]]]) -> list[str]:
    adjusted = study_holm(evidence)
    tests = len(adjusted)
    lines = ["## Paired comparisons on the test split (95% intervals over seeds and test images)", "",
             "| loss | comparison | difference (points) | 95% CI | per-seed differences | exact McNemar p "
             f"per seed (Holm over the study's {tests} tests) | verdict |",
             "|---|---|---|---|---|---|---|"]
    for loss, comparisons in evidence.items():
        for c in comparisons:
            estimate, interval, per_seed = _points(c["difference"])
            p_values = ", ".join(f"{seed}: {t['p_value']:.3g} ({adjusted[(loss, c['name'], seed)]:.3g})"
                                 for seed, t in c["mcnemar"].items())
            lines.append(f"| {loss} | {c['name']} | {estimate} | {interval} | {per_seed} | {p_values} | "
                         f"{c['verdict']} |")
    return [*lines, ""]


def report(args: argparse.Namespace, commands: dict[str, list[str]], sessions: list[dict[str, Any]],
           argv: list[str], choice: Choice) -> str:
    runs = {loss: _results(args.out / loss) for loss in commands}
    evidence = {loss: _load(args.out / loss / "evidence.json", {"comparisons": []})["comparisons"]
                for loss in commands}
    images = next((c["test_images"] for cs in evidence.values() for c in cs), "?")
    wall = sum(s["seconds"] for s in sessions)
    training = sum(_trained_seconds(r) for r in runs.values())
    loads = [s.get("load_average", 0.0) for s in sessions]
    seeds = len(args.seeds.split(","))
    lines = [
        "# Results: does distillation help, and does the assistant?",
        "",
        f"Written by `bench/kd_study.py` on {datetime.now(timezone.utc):%Y-%m-%d} and published whatever it "
        "shows. CNN family (ResNet-50 -> ResNet-34 -> ResNet-18, baseline ResNet-18, direct ResNet-18) on "
        "scikit-learn's digits, on the CPU.",
        "",
        *answers(choice, evidence, images),
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
        *method(evidence),
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
              *validation_table(choice), *comparison_table(evidence),
              *make_run_default(runs, choice, args), ""]
    return "\n".join(lines)


def _relative(part: str) -> str:
    try:
        return str(Path(part).relative_to(REPO))
    except ValueError:
        return part


def make_run_default(runs: dict[str, Any], choice: Choice, args: argparse.Namespace) -> list[str]:
    """What `make run` uses, whether this run's validation choice agrees, and what the chosen
    loss's four stages cost here (first seed)."""
    configured = (read_yaml(MAKE_RUN_CONFIG).get("distillation") or {}).get("loss", "kd")
    first = runs[choice.loss][min(runs[choice.loss])] if runs[choice.loss] else {}
    make_run_stages = ("teacher", "assistant", "student", "baseline")
    seconds = sum(first[s].get("train_time_sec") or 0.0 for s in make_run_stages if s in first)
    agreement = ("The validation choice agrees with it." if configured == choice.loss else
                 f"The validation choice differs: `make run` keeps {configured} until the config is changed, "
                 "which is a decision for the maintainers.")
    return [
        "## Where `make run`'s default comes from",
        "",
        f"`make run` runs this regime with one seed and four stages, with the loss **{configured}** "
        f"(`cnn_distillation/configs/digits.yaml`). {agreement} The regime with the chosen loss would be:",
        "",
        f"    data: {{val_fraction: {args.val_fraction}, test_fraction: {args.test_fraction}}}",
        f"    distillation: {{loss: {choice.loss}}}",
        f"    train: {{epochs: {args.epochs}}}",
        f"    stage_overrides: {{teacher: {{epochs: {args.teacher_epochs}}}}}",
        "",
        f"Its four stages trained for {seconds / 60:.1f} min in this study's first seed (plus about half a "
        "minute of start-up and testing), which is the figure to hold against the 5-minute budget on an "
        "idle 2-core machine. One seed's verdict covers the test images only, not seed-to-seed variation.",
    ]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    commands = run_commands(args)
    sessions = run_study(args, commands)
    choice = choose_on_validation(args.out, list(commands))
    text = report(args, commands, sessions, argv, choice)
    atomic_write_text(args.results, text)
    print(f"kd_study: wrote {args.results}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
