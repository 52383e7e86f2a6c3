"""Every value that would train silently wrong, or crash later with a traceback, is refused
when the config is loaded: one ``error:`` line naming the key, and nothing written."""
from __future__ import annotations

from pathlib import Path

import pytest

from src.cli.train import main
from src.config.loader import load_config
from src.errors import UserError

QUICK = ["--subset", "20", "--epochs", "1", "--image-size", "8", "--device", "cpu", "--stages", "baseline"]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        # torch's clip_grad_norm_ with a negative max norm flips the gradient's sign
        (["train.grad_clip=-1"], "'train.grad_clip': must be positive (or null for no clipping), got -1.0"),
        (["train.grad_clip=0"], "'train.grad_clip': must be positive"),
        (["data.device_cache_gb=-1"], "data.device_cache_gb must be a number of GiB, 0 or more"),
        (["train.weight_decay=-0.1"], "'train.weight_decay': must be 0 or more, got -0.1"),
        (["train.checkpoint_every_steps=0"], "'train.checkpoint_every_steps': must be at least 1"),
        (["train.checkpoint_every_steps=-5"], "'train.checkpoint_every_steps': must be at least 1"),
        (["train.checkpoint_every_minutes=0"], "'train.checkpoint_every_minutes': must be positive"),
        (["train.checkpoint_every_minutes=-1"], "'train.checkpoint_every_minutes': must be positive"),
        (["train.lr=1e309"], "'train.lr': must be a finite number, got 1e309"),
        (["distillation.temperature=inf"], "'distillation.temperature': must be a finite number, got inf"),
        (["train.min_delta=.inf"], "'train.min_delta': must be a finite number"),
        (["runtime.vram_budget_gb=.inf"], "'runtime.vram_budget_gb': must be a finite number"),
        (["train.min_delta=-1"], "'train.min_delta': must be 0 or more, got -1.0"),
        (["train.min_lr=-1"], "'train.min_lr': must be 0 or more"),
        (["train.min_lr=1", "train.lr=0.01"], "'train.min_lr': must be below every stage's learning rate"),
        (["train.momentum=-0.5"], "'train.momentum': must be in [0, 1), got -0.5"),
        (["train.momentum=1.5"], "'train.momentum': must be in [0, 1)"),
        (["train.optimizer=sgd", "train.momentum=0"], "Nesterov SGD needs a momentum above 0"),
        (["train.scheduler=step", "train.gamma=0"], "a decay factor must be in (0, 1), got 0.0"),
        (["train.scheduler=plateau", "train.gamma=1"], "'train.gamma': a decay factor must be in (0, 1)"),
        (["train.scheduler=step", "train.step_size=0"], "'train.step_size': must be at least 1, got 0"),
        (["train.max_oom_retries=-1"], "'train.max_oom_retries': must be 0 or more"),
        (["train.keep_checkpoints=-1"], "'train.keep_checkpoints': must be 0 or more"),
        (["train.monitor=val_foo"], "'train.monitor': must be one of val_loss, val_accuracy"),
        (["train.monitor=val_f1_score"], "'train.mode': 'min' would keep the worst epoch of val_f1_score "
                                         "(use --set train.mode=max)"),
        (["train.mode=max"], "'train.mode': 'max' would keep the worst epoch of val_loss"),
        ([f"runtime.seed={2**70}"], "'runtime.seed': must be at most 9223372036854775807"),
        (["models.teacher=vit_base", "models.assistant=vit_small",
          "models.student=vit_tiny", "models.patch_size=4", "data.image_size=10"],
         "ViT patch size 4 does not divide the image size 10: use an image size that is a multiple of it "
         "(e.g. --image-size 12), or --set models.patch_size=null"),
    ],
)
def test_values_that_would_train_wrong_or_crash_are_refused(overrides: list[str], message: str) -> None:
    with pytest.raises(UserError) as raised:
        load_config(None, overrides)
    assert message in str(raised.value)


def test_legal_edge_values_still_load() -> None:
    cfg = load_config(None, ["train.grad_clip=0.5", "train.weight_decay=0", "train.checkpoint_every_steps=1",
                             "train.monitor=val_accuracy", "train.mode=max", "train.keep_checkpoints=0",
                             "train.optimizer=adamw", "train.momentum=0", f"runtime.seed={2**63 - 1}"])
    assert (cfg.train.grad_clip, cfg.train.checkpoint_every_steps, cfg.train.keep_checkpoints) == (0.5, 1, 0)


@pytest.mark.parametrize("preset", ["cnn", "vit"])
def test_an_infinite_flag_value_is_refused_before_anything_is_written(
        preset: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    extra = ["--image-size", "10"] if preset == "vit" else ["--lr", "1e309"]  # the ViT digits patch is 4
    assert main(preset, [*QUICK, *extra, "--output-dir", str(out)]) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert not out.exists()


def test_a_negative_device_cache_is_refused_before_anything_is_written(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    assert main("cnn", [*QUICK, "--set", "data.device_cache_gb=-1", "--output-dir", str(out)]) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert lines == ["error: data.device_cache_gb must be a number of GiB, 0 or more "
                     "(0 decodes every batch in --num-workers processes), got -1.0"]
    assert not out.exists()
