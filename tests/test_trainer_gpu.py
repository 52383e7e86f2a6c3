"""Mixed precision and channels-last on CUDA (skipped without a GPU)."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch
from engine_fixtures import (
    KeyedTrain,
    PlainEval,
    ScriptedLoss,
    engine_config,
    fingerprint,
    tiny_cnn,
    tiny_vit,
)

from src.engine.objective import CrossEntropyObjective
from src.engine.trainer import Trainer
from src.utils.training_guards import NonFiniteLossError

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]
CUDA = torch.device("cuda")


def make(stage_dir: Path, model: torch.nn.Module, objective=None, **cfg) -> Trainer:
    return Trainer(model, objective or CrossEntropyObjective(), KeyedTrain(64), PlainEval(24),
                   engine_config(**cfg), stage_dir, device=CUDA, seed=0, run_fingerprint=fingerprint())


@pytest.mark.parametrize("amp", ["fp16", "bf16", "auto", "off"])
def test_amp_trains_and_reports_per_epoch_peak_memory(tmp_path: Path, amp: str) -> None:
    if amp == "bf16" and not torch.cuda.is_bf16_supported():
        pytest.skip("no bf16 on this GPU")
    trainer = make(tmp_path, tiny_cnn(), amp=amp, epochs=2)
    result = trainer.fit()
    fp16 = amp == "fp16" or (amp == "auto" and not torch.cuda.is_bf16_supported(including_emulation=False))
    assert (trainer.scaler is not None) == fp16
    table = pd.read_csv(tmp_path / "epochs.csv")
    assert table["gpu_memory_mb"].notna().all() and (table["gpu_memory_mb"] > 0).all()
    assert result.peak_gpu_memory_mb == pytest.approx(table["gpu_memory_mb"].max())
    assert table["train_loss"].notna().all()
    state = torch.load(tmp_path / "checkpoint_latest.pt", weights_only=True)
    assert (state["scaler"] is not None) == (trainer.scaler is not None)


def test_channels_last_for_cnns_only(tmp_path: Path) -> None:
    cnn = make(tmp_path / "cnn", tiny_cnn())
    vit = make(tmp_path / "vit", tiny_vit())
    assert cnn.channels_last and not vit.channels_last
    conv = next(m for m in cnn.model.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)


def test_fp16_nonfinite_loss_is_never_applied(tmp_path: Path) -> None:
    trainer = make(tmp_path, tiny_cnn(), ScriptedLoss({3}, "inf"), amp="fp16", checkpoint_every_steps=1)
    with pytest.raises(NonFiniteLossError):
        trainer.fit()
    assert all(torch.isfinite(v).all() for v in trainer.model.state_dict().values() if v.is_floating_point())
    skip = make(tmp_path / "skip", tiny_cnn(), ScriptedLoss({3}), amp="fp16", nonfinite_policy="skip")
    assert skip.fit().epochs_run == 2
