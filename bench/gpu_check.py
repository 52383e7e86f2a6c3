#!/usr/bin/env python3
"""Verify a CUDA machine in one command: ``make gpu-check`` (the same as ``python3 bench/gpu_check.py``).

It needs only a python3 with torch, torchvision, timm, scikit-learn, pandas, PyYAML, safetensors,
tqdm and matplotlib: no virtual environment, no network. In order it

1. writes synthetic CIFAR-10 (32x32 images whose colour depends on the class, so training has
   something to learn) in torchvision's exact on-disk files, into a temporary folder;
2. runs every stage of every preset's GPU config through the real command line (the preset's
   entry script with its configs/cifar10.yaml: ``cnn_distillation/train.py`` at 32 px,
   ``vit_distillation/train.py`` at 224 px; a pretrained teacher is trained from scratch with
   ``models.pretrained=false``, since nothing can be downloaded), 2 epochs of about 100 updates
   each at the configured effective batch, with ``--vram-budget 6`` and the configs' AMP setting,
   on a simulated 6 GB card (``--card-gib``: bench/card_hold.py holds the rest of the GPU, so the
   training process's CUDA context counts). Each command is first read through its entry
   script's parser and the config loader: a refused command is a failed check, not a crash;
3. runs ``pytest -m gpu``;
4. runs the benchmarks, sized by time: bench/data.py, bench/throughput.py (kd/ideal, every preset
   at its GPU config's size and batch) and bench/overhead.py (engine/bare, whose rounds must
   spread by under 5%).

For every stage it prints micro-batch x accumulation steps, whether gradient checkpointing is
on, peak allocated and reserved memory against 5.5 GiB, and images/s; then every target with
its measurement. It writes report.json and report.md (``--out``, default runs/gpu-check) and
exits 1 on any failure, any target missed, or any stage over 5.5 GiB of allocated memory;
0 when everything passed. Without a CUDA GPU it says so in one line and exits 2.

Time: the run should take at most 8 minutes on one current GPU (H100/H200 class); each part's
wall time is in the report, and the total is itself a target. ``--cpu-smoke`` runs the same
orchestration on the CPU with tiny models and images (how the tests check this script).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

REPO = Path(__file__).resolve().parents[1]

if TYPE_CHECKING:
    from src.config.schema import RunConfig

GIB_MIB = 1024.0
LIMIT_MIB = 5.5 * GIB_MIB  # the target: every stage's peak allocated memory under a 6 GiB cap
TIME_LIMIT_S = 8 * 60

GPU_CONFIG = "cifar10"  # each preset's GPU config, run as a user would
# nothing can be downloaded here: a pretrained teacher trains from scratch; attention maps (of the
# models that have them) every 2 epochs, so the 2-epoch run makes them
RUN_SETS = ["models.pretrained=false", "runtime.attention_every=2", "train.progress=plain"]
# --cpu-smoke: the same commands with tiny models and images, to test the orchestration; only
# sizes change (the worker count counted as one), never a training setting such as the warm-up
SMOKE_SETS = ["data.image_size=16", "train.batch_size=16", "train.num_workers=0"]


def preset_names() -> tuple[str, ...]:
    from src.config.presets import PRESETS

    return PRESETS.names()


def preset_sets(preset: str, cpu_smoke: bool) -> list[str]:
    """The --set overrides of a preset's GPU run; the CPU smoke run trains every role with the
    preset's student architecture at 16 px."""
    from src.config.loader import load_config
    from src.config.presets import PRESETS

    sets = list(RUN_SETS)
    if cpu_smoke:
        student = load_config(PRESETS[preset].config_path(GPU_CONFIG)).models.student
        sets += [f"models.teacher={student}", f"models.assistant={student}", *SMOKE_SETS]
    return sets


def preset_command(preset: str, python: str, work: Path, *, epochs: int, vram_budget: float,
                   cpu_smoke: bool, stages: Optional[Sequence[str]] = None) -> list[str]:
    """The training command gpu-check runs for a preset: its entry script and GPU config, as a
    user would type it (every configured stage unless ``stages`` names some)."""
    from src.config.presets import PRESETS

    spec = PRESETS[preset]
    command = [python, f"{spec.package}/train.py", "--config", str(spec.config_path(GPU_CONFIG)),
               "--dataset", "cifar10", "--data-dir", str(work / "data"),
               "--output-dir", str(work / "runs" / preset), "--epochs", str(epochs),
               "--vram-budget", str(vram_budget), "--device", "cpu" if cpu_smoke else "cuda",
               "--resume", "never"]
    if stages:
        command += ["--stages", ",".join(stages)]
    return command + [arg for item in preset_sets(preset, cpu_smoke) for arg in ("--set", item)]


def command_config(command: Sequence[str]) -> RunConfig:
    """The config ``command`` (``python <entry script> ...``) will train with, read through that
    entry script's own argument parser and config loader; raises UserError with the command's
    own message where it would refuse to run."""
    from src.cli.train import build_parser, load_run_config
    from src.config.presets import PRESETS
    from src.errors import UserError

    preset = next(name for name, spec in PRESETS.items() if command[1] == f"{spec.package}/train.py")
    try:
        args = build_parser(preset).parse_args(list(command[2:]))
    except SystemExit as exc:  # the parser has printed its one error line
        raise UserError(f"{command[1]} refused its flags (exit {exc.code})") from None
    return load_run_config(preset, args)

SITECUSTOMIZE = '''"""Written by bench/gpu_check.py for the training commands it starts:
torchvision checks the CIFAR-10 files against the official download's md5 on every load; point
that check at the synthetic files (their checksums are in the JSON file KD_GPU_CHECK_CIFAR names)."""
import json
import os

if os.environ.get("KD_GPU_CHECK_CIFAR"):
    import torchvision.datasets

    with open(os.environ["KD_GPU_CHECK_CIFAR"], encoding="utf-8") as _handle:
        for _name, _value in json.load(_handle).items():
            setattr(torchvision.datasets.CIFAR10, _name, _value)
'''


@dataclass
class StageRow:
    """One trained stage, from its result.json and metrics.jsonl."""

    preset: str
    stage: str
    model: Optional[str] = None
    completed: bool = False
    micro_batch: Optional[int] = None
    accumulation_steps: Optional[int] = None
    final_split: Optional[str] = None  # after out-of-memory fallbacks, when it differs
    effective_batch: Optional[int] = None
    configured_effective_batch: Optional[int] = None
    checkpointing: Optional[bool] = None
    peak_allocated_mib: Optional[float] = None
    peak_reserved_mib: Optional[float] = None
    images_per_s: Optional[float] = None
    test_accuracy: Optional[float] = None
    train_time_s: Optional[float] = None


@dataclass
class Check:
    """One target: ``ok`` None when it could not be measured here (e.g. memory on the CPU)."""

    name: str
    target: str
    measured: str
    ok: Optional[bool]


@dataclass
class Part:
    """One command the check ran."""

    name: str
    command: list[str]
    returncode: Optional[int]
    seconds: float
    log: str
    last_line: str = ""


@dataclass
class Report:
    machine: dict[str, Any]
    parts: list[Part] = field(default_factory=list)
    stages: list[StageRow] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(check.ok is not False for check in self.checks) and bool(self.checks)


# ----------------------------------------------------------------------------- the data


def synthetic_cifar10(root: Path, train_images: int, test_images: int, seed: int = 0) -> dict[str, Any]:
    """Write learnable CIFAR-10-shaped files (class = a colour, plus noise); returns their checksums."""
    import numpy as np

    from bench.cifar_files import write_cifar10

    rng = np.random.default_rng(seed)
    colours = rng.integers(40, 216, size=(10, 3, 1, 1))

    def images(count: int) -> tuple[np.ndarray, list[int]]:
        labels = [i % 10 for i in range(count)]
        noise = rng.integers(-40, 41, size=(count, 3, 32, 32))
        pixels = np.clip(colours[labels] + noise, 0, 255).astype(np.uint8)
        return pixels, labels

    train, train_labels = images(train_images)
    test, test_labels = images(test_images)
    return write_cifar10(root, train, train_labels, test, test_labels)


# ----------------------------------------------------------------------------- reading results


def read_stage(run_dir: Path, preset: str, stage: str, configured_effective: Optional[int]) -> StageRow:
    """The stage's figures; a stage without result.json did not complete."""
    row = StageRow(preset, stage, configured_effective_batch=configured_effective)
    result_path = run_dir / stage / "result.json"
    if not result_path.is_file():
        return row
    result = json.loads(result_path.read_text(encoding="utf-8"))
    plan = result.get("memory_plan", {})
    final = result.get("final_split") or {}
    row.model = result.get("model")
    row.completed = True
    row.micro_batch, row.accumulation_steps = plan.get("micro_batch"), plan.get("accumulation_steps")
    row.effective_batch = plan.get("effective_batch")
    if final and (final.get("micro_batch"), final.get("accumulation_steps")) != (row.micro_batch,
                                                                               row.accumulation_steps):
        row.final_split = f"{final.get('micro_batch')} x {final.get('accumulation_steps')}"
    row.checkpointing = plan.get("gradient_checkpointing")
    row.peak_allocated_mib = result.get("peak_gpu_memory_mb")
    row.peak_reserved_mib = result.get("peak_gpu_reserved_mb")
    row.test_accuracy = result.get("test", {}).get("accuracy")
    row.train_time_s = result.get("train_time_sec")
    row.images_per_s = training_rate(run_dir / stage / "metrics.jsonl")
    return row


def training_rate(metrics_jsonl: Path) -> Optional[float]:
    """Median images/s of the logged intervals, the first left out (warm-up, autotuning)."""
    if not metrics_jsonl.is_file():
        return None
    rates = [record["images_per_sec"] for record in map(json.loads, metrics_jsonl.read_text().splitlines())
             if "images_per_sec" in record]
    rates = rates[1:] or rates
    return statistics.median(rates) if rates else None


def configured_effective_batch(cfg: RunConfig, stage: str) -> int:
    """batch_size x accumulation_steps the stage trains with (its stage_overrides on top of train)."""
    from src.config.stage_settings import stage_config

    train = stage_config(cfg, stage).train
    return train.batch_size * train.accumulation_steps


def stage_checks(rows: Sequence[StageRow], memory_measured: bool) -> list[Check]:
    """Every stage completed, stayed under 5.5 GiB allocated, and kept its effective batch."""
    checks = []
    for row in rows:
        label = f"{row.preset} {row.stage}"
        checks.append(Check(f"{label} completes", "result.json written",
                            f"{row.model} done" if row.completed else "no result.json", row.completed))
        if not row.completed:
            continue
        if memory_measured:
            peak = row.peak_allocated_mib
            checks.append(Check(f"{label} peak allocated", f"<= {LIMIT_MIB:.0f} MiB",
                                "not recorded" if peak is None else f"{peak:.0f} MiB",
                                peak is not None and peak <= LIMIT_MIB))
        kept = row.effective_batch == row.configured_effective_batch  # an OOM fallback keeps it too
        checks.append(Check(f"{label} effective batch", f"= {row.configured_effective_batch} (configured)",
                            f"{row.micro_batch} x {row.accumulation_steps}"
                            + (f", then {row.final_split} after OOM" if row.final_split else ""), kept))
    return checks


def ratio_in(text: str, label: str) -> Optional[float]:
    """The number after ``label:`` on the last line that has it (the benchmarks' headline)."""
    for line in reversed(text.splitlines()):
        if line.strip().startswith(label + ":"):
            try:
                return float(line.split(":", 1)[1].split()[0])
            except (IndexError, ValueError):
                return None
    return None


def last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""


# ----------------------------------------------------------------------------- running things


def run_part(name: str, command: list[str], logs: Path, timeout: float,
             env: Optional[dict[str, str]] = None) -> tuple[Part, str]:
    """Run one command from the repository root, its output to logs/<name>.log; never raises."""
    log = logs / f"{name.replace('/', '-').replace(' ', '-')}.log"
    started = time.perf_counter()
    print(f"[gpu-check] {name}: {' '.join(command)}", flush=True)
    try:
        done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
        output, code = done.stdout + done.stderr, done.returncode
    except subprocess.TimeoutExpired as exc:
        output = f"{exc.stdout or ''}{exc.stderr or ''}\ntimed out after {timeout:.0f} s"
        output, code = output if isinstance(output, str) else str(output), None
    log.write_text(output, encoding="utf-8")
    part = Part(name, command, code, round(time.perf_counter() - started, 1), str(log), last_line(output))
    status = "ok" if code == 0 else f"FAILED (exit {code})"
    print(f"[gpu-check] {name}: {status} in {part.seconds:.0f} s; {part.last_line}", flush=True)
    return part, output


def machine_info(python: str) -> dict[str, Any]:
    """GPU and library versions, read in a child process so this one never holds a CUDA context
    (on a 6 GB card that would take memory from the stages under test)."""
    probe = ("import json, platform, torch, torchvision, timm\n"
             "cuda = torch.cuda.is_available()\n"
             "p = torch.cuda.get_device_properties(0) if cuda else None\n"
             "print(json.dumps({'gpu': p.name if p else None,\n"
             "  'gpu_memory_gib': round(p.total_memory / 2**30, 1) if p else None,\n"
             "  'capability': f'{p.major}.{p.minor}' if p else None, 'cuda': torch.version.cuda,\n"
             "  'torch': torch.__version__, 'torchvision': torchvision.__version__,\n"
             "  'timm': timm.__version__,\n"
             "  'python': platform.python_version()}))")
    done = subprocess.run([python, "-c", probe], capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        return {"error": last_line(done.stderr)}
    return json.loads(done.stdout.strip().splitlines()[-1])


def cuda_available() -> bool:
    """Whether torch sees a GPU (torch.cuda.is_available creates no CUDA context)."""
    import torch

    return torch.cuda.is_available()


@contextmanager
def simulated_card(card_gib: Optional[float], python: str) -> Iterator[tuple[bool, str]]:
    """While the block runs, a helper process (bench/card_hold.py) holds all of the GPU but
    ``card_gib`` GiB, so a training process's own CUDA context comes out of those GiB as on a
    real card of that size. Yields (held, the helper's line); nothing is held for None."""
    if card_gib is None:
        yield True, "the whole card"
        return
    holder = subprocess.Popen([python, "bench/card_hold.py", "--card-gib", str(card_gib)], cwd=REPO,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True)
    assert holder.stdout is not None and holder.stdin is not None
    try:
        line = holder.stdout.readline().strip()
        yield line.startswith("a ") and holder.poll() is None, line or f"exit {holder.wait()}"
    finally:
        holder.stdin.close()
        try:
            holder.wait(timeout=60)
        except subprocess.TimeoutExpired:
            holder.kill()
            holder.wait()


def run_presets(args: argparse.Namespace, work: Path, logs: Path, report: Report) -> None:
    """Every preset's training command, each first read through the CLI and config loader: a
    command they refuse is a failed check, not a crash."""
    from src.errors import UserError

    checksums = synthetic_cifar10(work / "data", args.train_images, args.test_images)
    (work / "cifar_checksums.json").write_text(json.dumps(checksums), encoding="utf-8")
    shim = work / "shim"
    shim.mkdir(exist_ok=True)
    (shim / "sitecustomize.py").write_text(SITECUSTOMIZE, encoding="utf-8")
    env = {**os.environ, "KD_GPU_CHECK_CIFAR": str(work / "cifar_checksums.json"),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(shim), str(REPO), os.environ.get("PYTHONPATH")]))}
    for preset in args.presets:
        command = preset_command(preset, sys.executable, work, epochs=args.epochs,
                                 vram_budget=args.vram_budget, cpu_smoke=args.cpu_smoke, stages=args.stages)
        try:
            cfg = command_config(command)  # what the training command will read
        except UserError as exc:
            report.parts.append(Part(f"{preset} pipeline", command, 2, 0.0, "", f"error: {exc}"))
            report.checks.append(Check(f"{preset} command accepted", "the CLI and config loader accept it",
                                       f"error: {exc}", False))
            continue
        part, _ = run_part(f"{preset} pipeline", command, logs, args.timeout, env)
        report.parts.append(part)
        run_dir = work / "runs" / preset
        report.stages += [read_stage(run_dir, preset, stage, configured_effective_batch(cfg, stage))
                          for stage in cfg.stages]


def run_pytest(args: argparse.Namespace, logs: Path, report: Report) -> None:
    part, output = run_part("pytest -m gpu", [sys.executable, "-m", "pytest", "-m", "gpu", "-q",
                                               "-p", "no:cacheprovider", "tests"], logs, args.timeout)
    report.parts.append(part)
    report.checks.append(Check("pytest -m gpu", "all pass", part.last_line, part.returncode == 0))


@dataclass(frozen=True)
class Benchmark:
    """One benchmark run by gpu-check: its headline (the number after ``label:`` on its last line
    with that label) must reach ``target`` (None: only recorded); each figure in ``ceilings``
    (label -> limit) must stay under its limit; the figures in ``shown`` are reported."""

    name: str
    command: list[str]
    label: str
    target: Optional[float] = None
    ceilings: dict[str, float] = field(default_factory=dict)
    shown: tuple[str, ...] = ()


def kd_ideal_command(python: str, preset: str) -> list[str]:
    """bench/throughput.py on a preset's GPU config: its image size and batch, every KD stage,
    about a second per mode per round after the clocks are warm."""
    from src.config.loader import load_config
    from src.config.presets import PRESETS

    cfg = load_config(PRESETS[preset].config_path(GPU_CONFIG))
    return [python, "bench/throughput.py", "--device", "cuda", "--preset", preset,
            "--image-size", str(cfg.data.image_size), "--batch", str(cfg.train.batch_size),
            "--stages", "teacher,assistant,student",
            "--seconds", "1", "--warmup-seconds", "3", "--rounds", "5"]


def benchmark_commands(python: str) -> list[Benchmark]:
    """Every benchmark gpu-check runs, in order. A new benchmark (e.g. one comparing against other
    tools, or compiled against eager training) joins by adding its entry here."""
    return [
        Benchmark("data", [python, "bench/data.py"], "batched/per-sample throughput ratio"),
        *(Benchmark(f"kd-ideal {preset}", kd_ideal_command(python, preset), "kd/ideal throughput ratio", 0.95,
                    shown=("kd/ideal round spread",))
          for preset in preset_names()),
        Benchmark("engine-bare", [python, "bench/overhead.py", "--device", "cuda", "--batch-size", "128",
                                  "--seconds", "4", "--warmup-seconds", "5", "--rounds", "5"],
                  "engine/bare throughput ratio", 0.97, ceilings={"engine/bare round spread": 0.05}),
        # eager vs compiled per stage; the target is the ResNet-18 32 px KD stage's (an H-class GPU)
        *(Benchmark(f"compiled {preset}", [python, "bench/compiled.py", "--device", "cuda", "--preset",
                                           preset, "--stages", "teacher,student", "--batch", "128"],
                    "compiled/eager throughput ratio", 2.0 if preset == "cnn" else None)
          for preset in preset_names()),
        Benchmark("peers", [python, "bench/peers.py", "--device", "cuda", "--images", "25600", "--batch",
                            "128", "--workers", "8", "--compile", "on"],
                  "kd-pipeline/peer throughput ratio", 1.5),
    ]


def benchmark_checks(bench: Benchmark, part: Part, output: str) -> list[Check]:
    """The benchmark's verdicts: it ran, its headline reached its target, its ceilings held."""
    value = ratio_in(output, bench.label)
    extras = {label: ratio_in(output, label) for label in (*bench.ceilings, *bench.shown)}
    measured = (part.last_line or "no headline") if value is None else f"{value:.2f}"
    measured += "".join(f"; {label} {'-' if v is None else f'{v:.3f}'}" for label, v in extras.items())
    if part.returncode != 0:
        measured = f"failed (exit {part.returncode})"
    # a benchmark without a target here (another's) only has to run; one with a target must meet it
    ok = part.returncode == 0 and (bench.target is None or (value is not None and value >= bench.target))
    target = "recorded" if bench.target is None else f">= {bench.target}"
    checks = [Check(f"{bench.name}: {bench.label}", target, measured, ok)]
    for label, limit in bench.ceilings.items():
        figure = extras[label]
        shown = "-" if figure is None else f"{figure:.3f}"
        checks.append(Check(f"{bench.name}: {label}", f"< {limit}", shown,
                            part.returncode == 0 and figure is not None and figure < limit))
    return checks


def run_benchmarks(args: argparse.Namespace, logs: Path, report: Report) -> None:
    for bench in benchmark_commands(sys.executable):
        part, output = run_part(bench.name, bench.command, logs, args.timeout)
        report.parts.append(part)
        report.checks += benchmark_checks(bench, part, output)


# ----------------------------------------------------------------------------- reporting


def _mib(value: Optional[float]) -> str:
    if value is None:
        return "-"
    return f"{value:.0f}" + (" (over)" if value > LIMIT_MIB else "")


def stage_table(rows: Sequence[StageRow]) -> list[str]:
    """Markdown table lines: one row per stage."""
    lines = ["| preset | stage | model | micro x accum | checkpointing | peak allocated MiB | "
             "peak reserved MiB | limit MiB | images/s | test acc |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        split = "-" if row.micro_batch is None else f"{row.micro_batch} x {row.accumulation_steps}"
        if row.final_split:
            split += f" (then {row.final_split})"
        gc_on = "-" if row.checkpointing is None else ("on" if row.checkpointing else "off")
        rate = "-" if row.images_per_s is None else f"{row.images_per_s:.0f}"
        acc = "-" if row.test_accuracy is None else f"{row.test_accuracy:.3f}"
        lines.append(f"| {row.preset} | {row.stage} | {row.model or 'FAILED'} | {split} | {gc_on} | "
                     f"{_mib(row.peak_allocated_mib)} | {_mib(row.peak_reserved_mib)} | {LIMIT_MIB:.0f} | "
                     f"{rate} | {acc} |")
    return lines


def markdown(report: Report, seconds: float) -> str:
    machine = ", ".join(f"{k} {v}" for k, v in report.machine.items())
    lines = [f"# gpu-check: {'PASS' if report.ok else 'FAIL'}", "", f"Machine: {machine}.",
             f"Total wall time: {seconds / 60:.1f} min.", "", "## Stages", "",
             *stage_table(report.stages), "",
             "## Targets", "", "| check | target | measured | result |", "|---|---|---|---|"]
    for check in report.checks:
        result = {True: "pass", False: "**FAIL**", None: "not measured here"}[check.ok]
        lines.append(f"| {check.name} | {check.target} | {check.measured} | {result} |")
    lines += ["", "## Commands", "", "| part | exit | seconds | log | last line |", "|---|---|---|---|---|"]
    for part in report.parts:
        lines.append(f"| {part.name} | {part.returncode} | {part.seconds:.0f} | {part.log} | "
                     f"{part.last_line.replace('|', '/')} |")
    return "\n".join(lines) + "\n"


def write_reports(out: Path, report: Report, seconds: float) -> None:
    from src.utils.atomic import atomic_write_json, atomic_write_text

    data = {"ok": report.ok, "seconds": round(seconds, 1), "machine": report.machine,
            "stages": [asdict(row) for row in report.stages], "checks": [asdict(c) for c in report.checks],
            "parts": [asdict(p) for p in report.parts], "limit_mib": LIMIT_MIB}
    atomic_write_json(out / "report.json", data)
    atomic_write_text(out / "report.md", markdown(report, seconds))


# ----------------------------------------------------------------------------- main


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "gpu-check",
                        help="where report.json, report.md and the logs go (default runs/gpu-check)")
    parser.add_argument("--presets", type=lambda s: [f for f in s.split(",") if f], default=None,
                        help="comma list of presets (default: every one)")
    parser.add_argument("--skip", type=lambda s: {p for p in s.split(",") if p}, default=set(),
                        help="parts to leave out: pytest, benchmarks")
    parser.add_argument("--stages", type=lambda s: [x for x in s.split(",") if x], default=None,
                        help="comma list of stages (default: each config's stages, all four)")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--train-images", type=int, default=14250,
                        help="synthetic CIFAR train images; 90%% train (about 100 updates of 128 per "
                             "epoch), 10%% validation (default 14250)")
    parser.add_argument("--test-images", type=int, default=1000)
    parser.add_argument("--vram-budget", type=float, default=6.0)
    parser.add_argument("--card-gib", type=float, default=6.0,
                        help="train as on a card of this many GiB: a helper process holds the rest of the "
                             "GPU, so the training process's CUDA context counts (0: the whole card)")
    parser.add_argument("--timeout", type=float, default=420.0, help="seconds allowed to each command")
    parser.add_argument("--keep", action="store_true", help="keep the synthetic data and run directories")
    parser.add_argument("--cpu-smoke", action="store_true",
                        help="run the orchestration on the CPU with tiny models (tests; figures meaningless)")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    presets = preset_names()
    args.presets = args.presets or list(presets)
    unknown = [f for f in args.presets if f not in presets] + [p for p in args.skip
                                                               if p not in ("pytest", "benchmarks")]
    if unknown:
        print(f"error: unknown preset or part {unknown}; presets: {','.join(presets)}; "
              "parts: pytest,benchmarks", file=sys.stderr)
        return 2
    if not args.cpu_smoke and not cuda_available():
        print("gpu-check: no CUDA GPU is visible to this python3; run it on a machine with an NVIDIA GPU "
              "(or --cpu-smoke to test the script itself)", file=sys.stderr)
        return 2
    started = time.perf_counter()
    out = args.out.resolve()
    logs = out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    report = Report(machine=machine_info(sys.executable))
    print(f"[gpu-check] machine: {report.machine}", flush=True)
    work_dir = tempfile.mkdtemp(prefix="gpu-check-", dir=out if args.keep else None)
    work = Path(work_dir)
    try:
        card_gib = None if args.cpu_smoke or not args.card_gib else args.card_gib
        with simulated_card(card_gib, sys.executable) as (held, line):
            report.machine["card"] = line
            if not held:
                report.checks.append(Check(f"a {card_gib:g} GiB card simulated",
                                           "bench/card_hold.py holds the rest of the GPU", line, False))
            run_presets(args, work, logs, report)
    finally:
        if not args.keep:
            import shutil

            shutil.rmtree(work, ignore_errors=True)
    report.checks += stage_checks(report.stages, memory_measured=not args.cpu_smoke)
    if "pytest" not in args.skip:
        run_pytest(args, logs, report)
    if "benchmarks" not in args.skip and not args.cpu_smoke:
        run_benchmarks(args, logs, report)
    seconds = time.perf_counter() - started
    report.checks.append(Check("total time", f"<= {TIME_LIMIT_S // 60} min", f"{seconds / 60:.1f} min",
                               None if args.cpu_smoke else seconds <= TIME_LIMIT_S))
    write_reports(out, report, seconds)
    print("\n".join(["", *stage_table(report.stages), ""]))
    for check in report.checks:
        mark = {True: "pass", False: "FAIL", None: "n/a "}[check.ok]
        print(f"[{mark}] {check.name}: {check.measured} (target {check.target})")
    print(f"\ngpu-check {'PASSED' if report.ok else 'FAILED'} in {seconds / 60:.1f} min; "
          f"reports: {out / 'report.md'}, {out / 'report.json'}")
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
