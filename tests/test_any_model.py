"""Any timm model in any role, each stage at its own size and normalisation, through the real
command line on tiny digits runs; and an old run directory (config.yaml with the retired
``models.family``) that still resumes."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import timm
from safetensors.torch import save_file

from src.cli.train import main
from src.data.registry import DATASETS

REPO = Path(__file__).resolve().parents[1]
TINY = ["--epochs", "1", "--subset", "40", "--image-size", "8", "--batch-size", "16", "--device", "cpu"]
DIGITS = DATASETS["digits"].stats

pytestmark = pytest.mark.slow


def train(out: Path, *extra: str, preset: str = "cnn") -> subprocess.CompletedProcess[str]:
    script = REPO / f"{preset}_distillation" / "train.py"
    return subprocess.run([sys.executable, str(script), "--output-dir", str(out), *TINY, *extra],
                          cwd=REPO, capture_output=True, text=True, timeout=600)


def result(out: Path, stage: str) -> dict:
    return json.loads((out / stage / "result.json").read_text())


def test_a_chain_of_three_architectures_outside_the_presets(tmp_path: Path) -> None:
    out = tmp_path / "run"
    done = train(out, "--stages", "teacher,assistant,student",
                 "--set", "models.teacher=deit_tiny_patch16_224", "--set", "models.assistant=convnext_atto",
                 "--set", "models.student=resnet18", "--set", "models.patch_size=4")  # DeiT: 2x2 tokens
    assert done.returncode == 0, done.stderr[-3000:]
    models = {"teacher": "deit_tiny_patch16_224", "assistant": "convnext_atto", "student": "resnet18"}
    for stage, name in models.items():
        found = result(out, stage)
        assert (found["model"], found["image_size"], found["epochs_run"]) == (name, 8, 1)
        assert found["normalization"] == {"mean": list(DIGITS.mean), "std": list(DIGITS.std)}
        assert found["lr"] == pytest.approx(0.002 * 0.5)  # all three are student-sized (< 16 M)
        assert "family" not in found
    summary = (out / "summary.md").read_text()
    assert all(name in summary for name in models.values())
    costs = json.loads((out / "cost.json").read_text())["stages"]  # measured side by side, at 8 px
    assert set(costs) == set(models) and all(cost["flops"] > 0 for cost in costs.values())
    config = (out / "config.yaml").read_text()
    assert "family" not in config and "teacher: deit_tiny_patch16_224" in config


@pytest.fixture(scope="module")
def vit_to_resnet(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A pretrained ViT teacher (a local weights file) at 16 px under its weights' statistics,
    distilled into a from-scratch ResNet at 8 px under the dataset's."""
    folder = tmp_path_factory.mktemp("mixed")
    weights = folder / "vit_tiny.safetensors"
    source = timm.create_model("vit_tiny_patch16_224", num_classes=10, img_size=16, patch_size=2)
    save_file(source.state_dict(), str(weights))
    out = folder / "run"
    done = train(out, "--stages", "teacher,direct", "--set", "models.teacher=vit_tiny",
                 "--set", f"models.teacher_weights={weights}", "--set", "models.image_size.teacher=16",
                 "--set", "models.student=resnet18", "--set", "report.benchmark=false", preset="vit")
    assert done.returncode == 0, done.stderr[-3000:]
    return out


def test_each_stage_of_a_mixed_chain_trains_at_its_own_view(vit_to_resnet: Path) -> None:
    teacher, direct = result(vit_to_resnet, "teacher"), result(vit_to_resnet, "direct")
    assert (teacher["model"], teacher["image_size"]) == ("vit_tiny", 16)
    assert teacher["normalization"] == {"mean": [0.5] * 3, "std": [0.5] * 3}  # timm's augreg ViT statistics
    assert (direct["model"], direct["image_size"], direct["teacher"]) == ("resnet18", 8, "teacher")
    assert direct["normalization"] == {"mean": list(DIGITS.mean), "std": list(DIGITS.std)}
    log = (vit_to_resnet / "pipeline.log").read_text()
    assert "memory plan for stage vit_tiny" in log and "memory plan for stage resnet18" in log


def test_export_and_evaluate_use_the_stages_own_view(vit_to_resnet: Path) -> None:
    done = subprocess.run([sys.executable, str(REPO / "export.py"), "--run-dir", str(vit_to_resnet),
                           "--stage", "teacher", "--images", "8"], cwd=REPO, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    onnx = vit_to_resnet / "teacher" / "model.onnx"
    contract = json.loads(onnx.with_name("model.onnx.json").read_text())["input"]
    assert contract["shape"] == ["batch", 3, 16, 16] and contract["mean"] == contract["std"] == [0.5] * 3
    for checkpoint in (onnx, vit_to_resnet / "direct" / "model.safetensors"):
        scored = subprocess.run([sys.executable, str(REPO / "evaluate.py"), "--checkpoint", str(checkpoint)],
                                cwd=REPO, capture_output=True, text=True, timeout=600)
        assert scored.returncode == 0, scored.stderr[-3000:]
        trained = result(vit_to_resnet, checkpoint.parent.name)["test"]["accuracy"]
        assert json.loads(scored.stdout)["accuracy"] == pytest.approx(trained)


def test_a_resnet_teacher_distils_into_a_vit_student_which_gets_attention_maps(tmp_path: Path) -> None:
    out = tmp_path / "run"
    done = train(out, "--stages", "teacher,direct", "--set", "models.teacher=resnet18",
                 "--set", "models.image_size.teacher=16", "--set", "models.student=vit_tiny",
                 "--set", "models.patch_size=4", "--set", "runtime.attention_every=1")
    assert done.returncode == 0, done.stderr[-3000:]
    assert (result(out, "teacher")["image_size"], result(out, "direct")["image_size"]) == (16, 8)
    cost = json.loads((out / "cost.json").read_text())  # each model measured at its own size
    assert cost["key"]["image_size"] == {"teacher": 16, "direct": 8}
    assert cost["stages"]["teacher"]["flops"] > 3 * 2 * 0.0347e9  # ResNet-18 at 16 px: ~4x its 8 px work
    assert (out / "direct" / "attention" / "attention_epoch001.png").is_file()  # a ViT: maps
    assert not (out / "teacher" / "attention").exists()  # a ResNet: none


def test_checkpointing_asked_of_a_model_without_it_fails_before_the_stage_holds_state(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    asked = ["--stages", "teacher", "--output-dir", str(out), "--set", "models.teacher=legacy_seresnet18",
             "--set", "report.benchmark=false"]
    assert main("cnn", [*TINY, *asked, "--set", "stage_overrides.teacher.grad_checkpointing=on"]) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert lines == ["error: train.grad_checkpointing=on (stage teacher) asks for gradient checkpointing, "
                     "but legacy_seresnet18 does not support it (AssertionError: gradient checkpointing not "
                     "supported); set it to auto or off for this stage"]
    assert not (out / "teacher" / "checkpoint_latest.pt").exists()
    assert main("cnn", [*TINY, *asked]) == 0  # the corrected command, in the same folder
    assert result(out, "teacher")["memory_plan"]["gradient_checkpointing"] is False


# config.yaml as a version with the models.family key wrote it for
# `cnn_distillation/train.py --subset 40 --epochs 1 --batch-size 16 --stages teacher --device cpu
#  --set report.benchmark=false --set models.teacher=resnet18` (the --image-size flag gives 8, as digits.yaml)
OLD_CONFIG = """# kd-pipeline run configuration, written 2026-12-04 12:00:00 UTC
data:
  name: digits
  data_dir: data
  download: false
  image_size: 8
  val_fraction: 0.1
  test_fraction: 0.5
  subset: 40
  augment: true
  device_cache_gb: 1.0
models:
  family: cnn
  teacher: resnet18
  assistant: resnet34
  student: resnet18
  small_input: null
  patch_size: null
  pretrained: false
  teacher_weights: null
  drop_path_rate: 0.0
stages:
- teacher
distillation:
  loss: dist
  logit_standardization: false
  temperature: 4.0
  alpha_start: 0.9
  alpha_end: 0.5
  dkd:
    alpha: 1.0
    beta: 8.0
    ce_weight: 1.0
    warmup_fraction: 0.08333333333333333
  dist:
    beta: 1.0
    gamma: 1.0
    ce_weight: 1.0
train:
  epochs: 1
  batch_size: 16
  accumulation_steps: 1
  lr: 0.002
  optimizer: adamw
  momentum: 0.9
  nesterov: true
  weight_decay: 0.01
  scheduler: cosine
  warmup_epochs: 0.5
  min_lr: 0.0
  step_size: 30
  gamma: 0.1
  grad_clip: null
  amp: auto
  channels_last: true
  monitor: val_loss
  mode: min
  patience: 10
  min_delta: 0.0
  label_smoothing: 0.0
  log_interval: 20
  checkpoint_every_steps: null
  checkpoint_every_minutes: null
  keep_checkpoints: 1
  nonfinite_policy: raise
  max_oom_retries: 4
  num_workers: 0
  tensorboard: false
  progress: auto
stage_overrides: {}
runtime:
  seed: 42
  seeds: null
  deterministic: false
  device: cpu
  vram_budget_gb: 6.0
  attention_every: 10
report:
  benchmark: false
"""


def test_a_run_directory_of_the_earlier_version_resumes(tmp_path: Path) -> None:
    out = tmp_path / "run"
    first = ["--stages", "teacher", "--set", "report.benchmark=false", "--set", "models.teacher=resnet18"]
    assert train(out, *first).returncode == 0
    (out / "config.yaml").write_text(OLD_CONFIG)  # what the earlier version left
    teacher = result(out, "teacher")
    done = train(out, "--stages", "teacher,baseline", *first[2:])
    assert done.returncode == 0, done.stderr[-3000:]
    assert result(out, "teacher") == teacher  # finished: reused, not trained again
    assert result(out, "baseline")["model"] == "resnet18"
    log = (out / "pipeline.log").read_text()
    assert f"{out / 'config.yaml'}: config key 'models.family' ('cnn') is retired and ignored" in log
    config = (out / "config.yaml").read_text()
    assert "family" not in config
    assert "# changed on resume: stages: ['teacher'] -> ['teacher', 'baseline']" in config
