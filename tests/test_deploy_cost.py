"""The cost table: FLOPs against published figures, one interleaved measurement, the cache in
cost.json, the report's columns/sentences/plot, and ``report.benchmark`` never blocking a resume.

No test asserts a wall-clock value: timing tests check which model ran when, and how many times.
"""
from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from src.config.change_rules import compare_configs
from src.config.loader import load_config
from src.deploy import benchmark, cost
from src.deploy.benchmark import (
    LATENCY_REPEATS,
    MIN_ROUNDS,
    WARMUP_CALLS,
    Speed,
    count_flops,
    fitting_batch,
    interleaved_order,
    time_models,
)
from src.deploy.cost import COST_FILE, CostTable, StageCost, run_costs
from src.deploy.cost_report import COST_COLUMNS, PLOT_NAME, cost_sentences
from src.errors import UserError
from src.models.factory import create_model
from src.pipeline.report import print_summary, write_report
from src.pipeline.train_stage import run_fingerprint, save_weights
from src.rundirs.rundir import RunDirectory

# Published figures, as MACs (one per multiply-add); torch counts 2 FLOPs per multiply-add.
# torchvision's ResNet-18 model card: 1.81 "GFLOPS" at 224 px, counted as MACs.
TORCHVISION_RESNET18_GMACS_224 = 1.81
# timm's deit_tiny_patch16_224 card: 1.3 GMACs. DeiT-Ti is vit_tiny's architecture (width 192, depth
# 12, 3 heads, patch 16) and its card counts the attention products, as we do.
TIMM_DEIT_TINY_GMACS_224 = 1.3


def gmacs(model: nn.Module, image_size: int) -> float:
    return count_flops(model, image_size) / 2e9


def resnet18_small_stem_gmacs_32() -> float:
    """torchvision's 1.81 GMACs moved to our 32 px CIFAR-style ResNet-18, step by step.

    At 224 px the 7x7/2 stem conv runs at 112x112 (3*64*49*112^2 MACs), max-pool halves to 56 px,
    the four stages run at 56/28/14/7 px, then a 512x1000 classifier. At 32 px without stem
    stride or max-pool the stages run at 32/16/8/4 px: their MACs scale by (32/56)^2. The stem
    becomes a 3x3/1 conv at 32x32 and the classifier 512x10.
    """
    stem_224, fc_224 = 3 * 64 * 7 * 7 * 112**2, 512 * 1000
    stages = (TORCHVISION_RESNET18_GMACS_224 * 1e9 - stem_224 - fc_224) * (32 / 56) ** 2
    return (stages + 3 * 64 * 3 * 3 * 32**2 + 512 * 10) / 1e9


def test_resnet18_flops_match_torchvision_at_224_and_the_derived_figure_at_32() -> None:
    standard = create_model("resnet18", 1000, 224)  # torchvision's stem, 1000 classes
    assert gmacs(standard, 224) == pytest.approx(TORCHVISION_RESNET18_GMACS_224, rel=0.05)
    small = create_model("resnet18", 10, 32)  # the pipeline's 32 px model (3x3/1 stem, no pool)
    assert gmacs(small, 32) == pytest.approx(resnet18_small_stem_gmacs_32(), rel=0.05)
    assert resnet18_small_stem_gmacs_32() == pytest.approx(0.556, abs=0.01)  # the common CIFAR figure


def test_vit_tiny_flops_match_timm_and_count_attention_on_the_cpu() -> None:
    vit = create_model("vit_tiny", 1000, 224)
    assert gmacs(vit, 224) == pytest.approx(TIMM_DEIT_TINY_GMACS_224, rel=0.05)
    # torch alone leaves the CPU attention kernel out: 197 tokens x 197 x 192 x 2 products x 12 blocks
    with torch.inference_mode(), torch.utils.flop_counter.FlopCounterMode(display=False) as plain:
        vit.eval()(torch.zeros(1, 3, 224, 224))
    attention_macs = 12 * 2 * 197 * 197 * 192
    assert count_flops(vit, 224) - plain.get_total_flops() == 2 * attention_macs


def test_interleaved_order_visits_every_model_each_round_in_rotating_order() -> None:
    order = interleaved_order(["a", "b", "c"], 4)
    assert order == [["a", "b", "c"], ["b", "c", "a"], ["c", "a", "b"], ["a", "b", "c"]]
    # over n rounds every model holds every position once: no model is always measured first
    assert {tuple(sorted(col)) for col in zip(*order[:3], strict=True)} == {("a", "b", "c")}


class Recorder(nn.Module):
    """A real small conv net that notes each call's (name, batch size)."""

    def __init__(self, name: str, calls: list[tuple[str, int]]) -> None:
        super().__init__()
        self.name, self.calls = name, calls
        self.net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 6 * 6, 2))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        self.calls.append((self.name, len(images)))
        return self.net(images)


def test_models_are_timed_interleaved_round_by_round() -> None:
    calls: list[tuple[str, int]] = []
    models = {name: Recorder(name, calls).eval() for name in ("teacher", "student")}
    speeds = time_models(models, dict.fromkeys(models, 8), torch.device("cpu"), batch=4, budget_s=0.0)
    warmup = len(models) * WARMUP_CALLS * 2  # one image and one batch per warm-up call
    per_visit = [1] * LATENCY_REPEATS + [4]
    expected = [(name, size) for order in interleaved_order(list(models), MIN_ROUNDS) for name in order
                for size in per_visit]
    assert calls[warmup:] == expected
    for speed in speeds.values():
        assert speed.samples == MIN_ROUNDS * LATENCY_REPEATS and speed.batch == 4
        assert speed.latency_p90_ms >= speed.latency_ms > 0 and speed.throughput > 0


class Fits(nn.Module):
    """Runs up to ``limit`` images; more raise the error CUDA raises when memory runs out."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if len(images) > self.limit:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return images.flatten(1)


def test_throughput_batch_halves_until_every_model_fits() -> None:
    models = {"big": Fits(12), "small": Fits(64)}
    assert fitting_batch(models, dict.fromkeys(models, 8), torch.device("cpu"), 64) == 8
    with pytest.raises(UserError, match="report.benchmark=false"):  # one error line with its fix
        fitting_batch({"none": Fits(0)}, {"none": 8}, torch.device("cpu"), 4)


def speed(latency_ms: float) -> Speed:
    return Speed(latency_ms=latency_ms, latency_p90_ms=latency_ms * 1.5, throughput=1000 / latency_ms,
                 batch=8, samples=15)


def table_of(**stages: tuple[int, int, float]) -> CostTable:
    costs = {name: StageCost(stage=name, architecture=f"arch-{name}", parameters=params,
                             weights_bytes=4 * params, flops=flops, device=speed(ms), cpu=speed(ms))
             for name, (params, flops, ms) in stages.items()}
    return CostTable(device="CPU, 2 threads", stages=costs, key={}, seconds=1.0)


def result_of(stage: str, accuracy: float, sha: str = "x") -> dict:
    return {"stage": stage, "model": f"arch-{stage}", "params": 1, "best_epoch": 1, "train_time_sec": 1.0,
            "test": {"accuracy": accuracy, "precision": accuracy, "recall": accuracy, "f1_score": accuracy},
            "peak_gpu_memory_mb": None, "weights_sha256": sha, "num_classes": 10}


def test_sentence_ratios_are_read_from_the_one_cost_table() -> None:
    costs = table_of(teacher=(23_500_000, 8_000_000, 6.4), student=(11_200_000, 2_000_000, 2.0))
    table = pd.DataFrame({"stage": ["teacher", "student"], "test accuracy": [0.96, 0.9466]})
    sentence, note = cost_sentences(table, costs)
    assert "a multiply-add is 2 FLOPs" in note
    assert sentence.startswith("The student keeps 98.6% of the teacher's accuracy with 2.1x fewer "
                               "parameters, 4.0x fewer FLOPs, and runs 3.2x faster at batch 1 on this "
                               "machine")
    assert "6.40 -> 2.00 ms; CPU, 2 threads" in sentence
    bigger = table_of(teacher=(1_000, 1_000, 1.0), student=(2_000, 3_000, 1.5))
    sentence, _ = cost_sentences(table, bigger)
    assert "2.0x more parameters, 3.0x more FLOPs, and runs 1.5x slower" in sentence
    assert len(cost_sentences(table, table_of(student=(1, 1, 1.0)))) == 1  # no teacher: the note only


def test_report_gains_cost_columns_sentence_and_plot(tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    run = RunDirectory(tmp_path)
    results = {"teacher": result_of("teacher", 0.9), "student": result_of("student", 0.85),
               "baseline": result_of("baseline", 0.8)}
    costs = table_of(teacher=(20_000_000, 4_000_000_000, 8.0), student=(10_000_000, 1_000_000_000, 2.0))
    summary = write_report(run, results, ["a", "b"], costs=costs)
    csv = pd.read_csv(tmp_path / "summary.csv").set_index("stage")
    assert set(COST_COLUMNS) <= set(csv.columns)
    assert csv.loc["student", "GFLOPs"] == pytest.approx(1.0)
    assert csv.loc["teacher", "latency ms"] == pytest.approx(8.0)
    assert csv.loc["student", "weights MB"] == pytest.approx(40.0)
    assert pd.isna(csv.loc["baseline", "latency ms"])  # not in this measurement: empty, not made up
    markdown = (tmp_path / "summary.md").read_text()
    assert "| GFLOPs | weights MB | latency ms |" in markdown
    assert "runs 4.0x faster at batch 1 on this machine" in markdown.split("## Differences between stages")[1]
    assert (tmp_path / PLOT_NAME).is_file() and tmp_path / PLOT_NAME in summary.files
    print_summary(summary)
    printed = capsys.readouterr().out
    assert "The student keeps 94.4% of the teacher's accuracy with 2.0x fewer parameters" in printed
    assert not (tmp_path / "b" / PLOT_NAME).exists()
    write_report(RunDirectory(tmp_path / "b"), results, ["a", "b"])  # report.benchmark: false
    assert "latency ms" not in pd.read_csv(tmp_path / "b" / "summary.csv").columns
    assert not (tmp_path / "b" / PLOT_NAME).exists()


@pytest.fixture
def small_run(tmp_path: Path) -> tuple[object, RunDirectory, dict[str, dict]]:
    """Two finished stages of real 8 px ResNet-18s with saved weights (no training needed)."""
    cfg = load_config(None, ["data.image_size=8", "models.teacher=resnet18", "stages=teacher,baseline"])
    run = RunDirectory(tmp_path / "run")
    results = {}
    for stage in ("teacher", "baseline"):
        model = create_model("resnet18", 10, 8)
        sha = save_weights(model, run.weights_path(stage), {"stage": stage})
        results[stage] = {**result_of(stage, 0.5, sha), "model": "resnet18"}
    return cfg, run, results


def changed_weights(run: RunDirectory, stage: str) -> str:
    """Other weights in the stage's model.safetensors (as a retrain leaves them); returns their hash."""
    model = create_model("resnet18", 10, 8)
    model.load_state_dict(load_file(str(run.weights_path(stage))))
    with torch.no_grad():
        model.fc.bias.add_(1.0)
    return save_weights(model, run.weights_path(stage), {"stage": stage})


def test_costs_are_measured_together_once_then_reused_until_the_weights_change(
        small_run: tuple[object, RunDirectory, dict[str, dict]], monkeypatch: pytest.MonkeyPatch) -> None:
    cfg, run, results = small_run
    cpu = torch.device("cpu")
    measured: list[list[str]] = []
    real_time_models = benchmark.time_models

    def record(models: dict, *args: object, **kwargs: object) -> dict:
        measured.append(list(models))
        return real_time_models(models, *args, **{**kwargs, "budget_s": 0.0})

    monkeypatch.setattr(cost, "time_models", record)
    first = run_costs(cfg, run, results, cpu, 10)
    assert measured == [["teacher", "baseline"]]  # one interleaved measurement of both stages
    saved = json.loads((run.root / COST_FILE).read_text())
    assert saved["key"]["weights"] == {s: r["weights_sha256"] for s, r in results.items()}
    assert first.stages["teacher"].parameters == 11_173_962
    assert first.stages["teacher"].weights_bytes == run.weights_path("teacher").stat().st_size
    assert first.stages["teacher"].flops == pytest.approx(2 * 0.0347e9, rel=0.01)
    again = run_costs(cfg, run, results, cpu, 10)  # a re-run of the finished command
    assert measured == [["teacher", "baseline"]] and again == first
    sha = changed_weights(run, "baseline")
    retrained = {**results, "baseline": {**results["baseline"], "weights_sha256": sha}}
    run_costs(cfg, run, retrained, cpu, 10)
    assert measured[-1] == ["teacher", "baseline"]  # every stage again: ratios from one measurement
    (run.root / COST_FILE).write_text("{damaged")
    run_costs(cfg, run, retrained, cpu, 10)
    assert len(measured) == 3


def test_missing_weights_of_a_finished_stage_is_a_user_error(
        small_run: tuple[object, RunDirectory, dict[str, dict]]) -> None:
    cfg, run, results = small_run
    run.weights_path("baseline").unlink()
    with pytest.raises(UserError, match=re.escape("--set report.benchmark=false")):
        run_costs(cfg, run, results, torch.device("cpu"), 10)


def test_weights_changed_after_training_are_refused_not_measured(
        small_run: tuple[object, RunDirectory, dict[str, dict]], monkeypatch: pytest.MonkeyPatch) -> None:
    cfg, run, results = small_run
    changed_weights(run, "baseline")  # result.json still records the trained weights' hash
    monkeypatch.setattr(cost, "time_models", lambda *args, **kwargs: pytest.fail("measured changed weights"))
    with pytest.raises(UserError) as refused:
        run_costs(cfg, run, results, torch.device("cpu"), 10)
    message = str(refused.value)
    assert "\n" not in message and "baseline weights" in message and "do not match the hash" in message
    assert "--set report.benchmark=false" in message  # one error line with its fixes
    assert not (run.root / COST_FILE).exists()  # nothing cached under the recorded hash


def test_turning_the_benchmark_off_never_blocks_a_resume() -> None:
    saved = load_config(None)
    changed = dataclasses.replace(saved, report=dataclasses.replace(saved.report, benchmark=False))
    breaking, harmless = compare_configs(saved, changed, {"teacher": "finished", "student": "trained"},
                                         split_exists=True)
    assert breaking == [] and harmless == ["report.benchmark: True -> False"]
    assert run_fingerprint(saved, "student") == run_fingerprint(changed, "student")  # checkpoints agree


@pytest.mark.gpu
def test_cuda_run_times_the_gpu_and_the_cpu_in_two_interleaved_phases() -> None:
    models = {stage: (name, create_model(name, 10, 8), 1) for stage, name in
              (("teacher", "resnet34"), ("student", "resnet18"))}
    table = cost.measure_costs(models, dict.fromkeys(models, 8), torch.device("cuda"), key={})
    assert table.device.startswith("CUDA, ")
    for stage_cost in table.stages.values():
        assert stage_cost.device.batch == benchmark.DEVICE_BATCH and stage_cost.cpu.batch == 32
        assert stage_cost.device != stage_cost.cpu  # two measurements, not one copied
    assert all(next(m.parameters()).device.type == "cpu" for _, m, _ in models.values())
