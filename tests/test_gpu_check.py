"""bench/gpu_check.py without a GPU: its refusal, its reading of run directories and its verdicts,
and (slow) its whole orchestration through the real CLI on the CPU with tiny models."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from bench import gpu_check
from bench.gpu_check import (
    Check,
    Part,
    Report,
    StageRow,
    configured_effective_batch,
    ratio_in,
    read_stage,
    stage_checks,
)
from src.config.loader import flatten, load_config
from src.config.presets import PRESETS

REPO = Path(__file__).resolve().parents[1]


def write_stage(run_dir: Path, stage: str, *, peak: float | None = 3000.0, reserved: float | None = 3500.0,
                split: tuple[int, int] = (64, 2), final: tuple[int, int] | None = None,
                rates: tuple[float, ...] = (900.0, 2000.0, 2100.0, 2050.0)) -> None:
    """A stage folder as train_stage leaves it (the fields gpu_check reads)."""
    folder = run_dir / stage
    folder.mkdir(parents=True)
    micro, accumulation = split
    final_micro, final_accumulation = final or split
    result: dict[str, Any] = {
        "model": "resnet50", "peak_gpu_memory_mb": peak, "peak_gpu_reserved_mb": reserved,
        "train_time_sec": 12.5, "test": {"accuracy": 0.91},
        "memory_plan": {"micro_batch": micro, "accumulation_steps": accumulation,
                        "effective_batch": micro * accumulation, "gradient_checkpointing": False},
        "final_split": {"micro_batch": final_micro, "accumulation_steps": final_accumulation},
    }
    (folder / "result.json").write_text(json.dumps(result))
    records = [{"step": 20 * (i + 1), "epoch": 1, "images_per_sec": rate} for i, rate in enumerate(rates)]
    records.append({"step": 80, "epoch": 1, "event": "epoch_memory", "peak_reserved_mb": reserved})
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_without_a_gpu_it_says_so_in_one_line_and_exits_2(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "bench/gpu_check.py", "--out", str(tmp_path)], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stdout == "" and len(done.stderr.strip().splitlines()) == 1
    assert done.stderr.startswith("gpu-check: no CUDA GPU")
    assert not any(tmp_path.iterdir())  # nothing written


def test_stage_figures_come_from_result_json_and_the_logged_rates(tmp_path: Path) -> None:
    write_stage(tmp_path, "teacher")
    row = read_stage(tmp_path, "cnn", "teacher", configured_effective=128)
    assert row.completed and row.model == "resnet50"
    assert (row.micro_batch, row.accumulation_steps, row.effective_batch) == (64, 2, 128)
    assert row.final_split is None
    assert (row.peak_allocated_mib, row.peak_reserved_mib, row.test_accuracy) == (3000.0, 3500.0, 0.91)
    assert row.images_per_s == 2050.0  # median of the intervals after the first (warm-up)


def test_verdicts_fail_a_missing_stage_one_over_the_limit_and_a_changed_effective_batch(
        tmp_path: Path) -> None:
    write_stage(tmp_path, "teacher")
    write_stage(tmp_path, "assistant", peak=5700.0)  # over 5.5 GiB = 5632 MiB
    write_stage(tmp_path, "student", split=(32, 2))  # effective 64, configured 128
    write_stage(tmp_path, "baseline", final=(32, 4))  # an OOM fallback keeps the effective batch
    rows = [read_stage(tmp_path, "cnn", stage, 128)
            for stage in ("teacher", "assistant", "student", "baseline", "direct")]
    verdicts = {check.name: check.ok for check in stage_checks(rows, memory_measured=True)}
    assert verdicts["cnn teacher completes"] and verdicts["cnn teacher peak allocated"]
    assert verdicts["cnn teacher effective batch"]
    assert verdicts["cnn assistant peak allocated"] is False
    assert verdicts["cnn student effective batch"] is False
    assert verdicts["cnn baseline effective batch"] is True and rows[3].final_split == "32 x 4"
    assert verdicts["cnn direct completes"] is False and "cnn direct peak allocated" not in verdicts
    on_cpu = {check.name for check in stage_checks(rows, memory_measured=False)}
    assert not any(name.endswith("peak allocated") for name in on_cpu)
    report = Report(machine={}, stages=rows, checks=stage_checks(rows, memory_measured=True))
    assert not report.ok
    assert Report(machine={}, checks=[Check("a", "t", "m", True), Check("b", "t", "m", None)]).ok
    markdown = gpu_check.markdown(report, 61.0)
    assert markdown.startswith("# gpu-check: FAIL") and "5700 (over)" in markdown


def test_the_configured_effective_batch_is_the_stages_own_after_set_overrides() -> None:
    cfg = load_config(PRESETS["cnn"].config_path("cifar10"),
                      ["train.accumulation_steps=2", "stage_overrides.teacher.batch_size=64"])
    assert configured_effective_batch(cfg, "student") == 128 * 2
    assert configured_effective_batch(cfg, "teacher") == 64 * 2  # its stage_overrides batch


@pytest.mark.parametrize("preset", PRESETS.names())
def test_each_presets_real_gpu_check_command_is_accepted_by_the_cli_and_loader(preset: str,
                                                                               tmp_path: Path) -> None:
    """The exact command a GPU machine runs, read through the entry script's parser and the config
    loader without training: 2 epochs of every configured stage on CUDA under a 6 GiB budget, at
    the configured effective batch (the shipped 5-epoch warm-up made this command exit 2)."""
    args = gpu_check.build_parser().parse_args([])
    command = gpu_check.preset_command(preset, sys.executable, tmp_path, epochs=args.epochs,
                                       vram_budget=args.vram_budget, cpu_smoke=False)
    assert command[1] == f"{PRESETS[preset].package}/train.py"
    cfg = gpu_check.command_config(command)
    shipped = load_config(PRESETS[preset].config_path("cifar10"))
    assert (cfg.train.epochs, cfg.runtime.device, cfg.runtime.vram_budget_gb) == (2, "cuda", 6.0)
    assert cfg.stages == shipped.stages == ["teacher", "assistant", "student", "baseline", "direct"]
    effective = {stage: configured_effective_batch(cfg, stage) for stage in cfg.stages}
    assert effective == dict.fromkeys(cfg.stages, 128)
    assert 0 < cfg.train.warmup_epochs < 2


SIZES = {"models.teacher", "models.assistant", "data.image_size", "train.batch_size", "train.num_workers",
         "data.subset"}


@pytest.mark.parametrize("preset", PRESETS.names())
def test_the_cpu_smoke_command_differs_from_the_real_one_only_in_sizes(preset: str, tmp_path: Path) -> None:
    real, smoke = (gpu_check.command_config(gpu_check.preset_command(
        preset, sys.executable, tmp_path, epochs=2, vram_budget=6.0, cpu_smoke=cpu_smoke))
        for cpu_smoke in (False, True))
    real_keys, smoke_keys = flatten(real), flatten(smoke)
    differ = {key for key in real_keys | smoke_keys if real_keys.get(key) != smoke_keys.get(key)}
    assert differ - {"runtime.device"} <= SIZES, differ - SIZES
    assert (real.runtime.device, smoke.runtime.device) == ("cuda", "cpu")
    assert smoke.train.warmup_epochs == real.train.warmup_epochs


@pytest.mark.slow
def test_a_command_the_cli_refuses_is_a_failed_check_not_a_crash(tmp_path: Path) -> None:
    code = gpu_check.main(["--cpu-smoke", "--presets", "cnn", "--skip", "pytest", "--epochs", "0",
                           "--train-images", "20", "--test-images", "10", "--out", str(tmp_path)])
    report = json.loads((tmp_path / "report.json").read_text())
    assert code == 1 and not report["ok"]
    refused = next(check for check in report["checks"] if check["name"] == "cnn command accepted")
    assert refused["ok"] is False and "train.epochs" in refused["measured"]


def test_the_kd_benchmarks_run_every_preset_at_its_gpu_configs_size_and_batch() -> None:
    commands = {bench.name: bench.command for bench in gpu_check.benchmark_commands("python")}
    for preset in PRESETS:
        cfg = load_config(PRESETS[preset].config_path("cifar10"))
        command = commands[f"kd-ideal {preset}"]
        flags = dict(zip(command[2::2], command[3::2], strict=False))
        assert flags["--preset"] == preset
        assert flags["--image-size"] == str(cfg.data.image_size)
        assert flags["--batch"] == str(cfg.train.batch_size)


def test_engine_bare_must_beat_its_target_with_a_spread_under_5_percent() -> None:
    (bench,) = [b for b in gpu_check.benchmark_commands("python") if b.name == "engine-bare"]
    flags = dict(zip(bench.command[2::2], bench.command[3::2], strict=False))
    assert {"--seconds", "--warmup-seconds", "--rounds"} <= set(flags)  # sized by time, not by steps
    assert "--steps" not in flags
    part = Part("engine-bare", bench.command, 0, 60.0, "log")
    quiet = "engine/bare round spread: 0.021 (...)\nengine/bare throughput ratio: 0.98\n"
    assert [c.ok for c in gpu_check.benchmark_checks(bench, part, quiet)] == [True, True]
    noisy = gpu_check.benchmark_checks(bench, part, quiet.replace("0.021", "0.140"))
    spread = noisy[1]
    assert (spread.name, spread.measured) == ("engine-bare: engine/bare round spread", "0.140")
    assert spread.ok is False
    assert noisy[0].measured == "0.98; engine/bare round spread 0.140"  # the report shows it with the ratio


def test_benchmark_headlines_are_read_from_the_last_line_that_has_them() -> None:
    text = "round 1\nkd/ideal throughput ratio: 0.91\nnoise\nkd/ideal throughput ratio: 0.97\n"
    assert ratio_in(text, "kd/ideal throughput ratio") == 0.97
    assert ratio_in("engine/bare throughput ratio: n/a", "engine/bare throughput ratio") is None
    assert ratio_in("nothing here", "engine/bare throughput ratio") is None


@pytest.mark.slow
def test_cpu_smoke_runs_the_real_cli_on_synthetic_cifar_files(tmp_path: Path) -> None:
    """The whole orchestration: synthetic CIFAR-10 in torchvision's files (accepted through the
    checksum shim), the real training CLI for a labels stage and a KD stage, the reports."""
    code = gpu_check.main(["--cpu-smoke", "--presets", "cnn", "--stages", "teacher,direct",
                           "--skip", "pytest", "--train-images", "80", "--test-images", "20",
                           "--epochs", "1", "--keep", "--out", str(tmp_path)])
    report = json.loads((tmp_path / "report.json").read_text())
    assert code == 0 and report["ok"], (tmp_path / "logs" / "cnn-pipeline.log").read_text()[-3000:]
    # the shipped 5 of 200 warm-up epochs, kept as a share of the 1-epoch run, and logged
    (log,) = tmp_path.glob("gpu-check-*/runs/cnn/pipeline.log")
    assert "train.warmup_epochs 5 -> 0.025 (5 of the configured 200 epochs)" in log.read_text()
    stages = {row["stage"]: StageRow(**row) for row in report["stages"]}
    assert list(stages) == ["teacher", "direct"]
    for row in stages.values():
        assert row.completed and row.effective_batch == row.configured_effective_batch == 16
        assert row.test_accuracy is not None
        assert row.images_per_s is None  # 5 updates: no interval logged (every 20), no made-up rate
        assert row.peak_allocated_mib is None  # the CPU: no made-up memory figure
    assert "| cnn | direct | resnet18 |" in (tmp_path / "report.md").read_text()


def test_the_simulated_card_leaves_exactly_its_size_free() -> None:
    from bench.card_hold import GIB, bytes_to_hold

    assert bytes_to_hold(free=139 * GIB, card_bytes=6 * GIB) == 133 * GIB  # H200 after its context
    assert bytes_to_hold(free=5 * GIB, card_bytes=6 * GIB) == 0  # a card already that small: nothing held
    assert gpu_check.build_parser().parse_args([]).card_gib == 6.0  # gpu-check simulates a 6 GB card


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_a_card_that_cannot_be_held_is_reported_not_raised() -> None:
    with gpu_check.simulated_card(6.0, sys.executable) as (held, line):
        assert not held and line == "card_hold: no CUDA GPU is visible"
    with gpu_check.simulated_card(None, sys.executable) as (held, line):
        assert held and line == "the whole card"
