"""curves.png from epochs.csv (+ metrics.jsonl): a valid image for short and longer runs."""
from __future__ import annotations

import math

import matplotlib.image
import pandas as pd
import pytest

from src.engine.run_log import MetricsLog, read_records
from src.utils.logger import REQUIRED_COLUMNS
from src.visualization.curves import mean_grad_norms, plot_curves


def _epochs_csv(path, n: int):
    rows = [
        {
            "epoch": e, "train_loss": 2.0 / e, "train_accuracy": 0.3 * e / n, "train_precision": 0.3,
            "train_recall": 0.3, "train_f1_score": 0.3, "val_loss": 2.1 / e, "val_accuracy": 0.25 * e / n,
            "val_precision": 0.2, "val_recall": 0.2, "val_f1_score": 0.2, "learning_rate": 0.05 / e,
            "epoch_time_sec": 1.5, "gpu_memory_mb": None,
        }
        for e in range(1, n + 1)
    ]
    pd.DataFrame(rows, columns=list(REQUIRED_COLUMNS)).to_csv(path, index=False)
    return path


def _frame(path) -> pd.DataFrame:
    return pd.DataFrame(read_records(path))


def _metrics(path, epochs: int):
    log = MetricsLog(path)
    log.append({"event": "resume", "step": 0, "epoch": 1})
    for epoch in range(1, epochs + 1):
        for k, norm in enumerate([1.0 * epoch, 3.0 * epoch, math.nan]):
            log.append({"step": 3 * (epoch - 1) + k + 1, "epoch": epoch, "grad_norm": norm})
    log.flush()
    return path


@pytest.mark.parametrize("epochs", [1, 3])
@pytest.mark.parametrize("with_metrics", [True, False])
def test_writes_a_valid_png(tmp_path, epochs, with_metrics):
    csv = _epochs_csv(tmp_path / "epochs.csv", epochs)
    metrics = _metrics(tmp_path / "metrics.jsonl", epochs) if with_metrics else None
    records = read_records(metrics) if metrics else []
    out = plot_curves(pd.read_csv(csv), records, tmp_path / "stage" / "curves.png")
    assert out == tmp_path / "stage" / "curves.png"
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    image = matplotlib.image.imread(out)
    assert image.shape == (700, 1000, 4) and image.std() > 0.01  # 10x7 in at 100 dpi, not blank
    assert [p.name for p in out.parent.iterdir()] == ["curves.png"]  # no temp file left


def test_grad_norm_is_the_mean_of_finite_values_per_epoch(tmp_path):
    norms = mean_grad_norms(_frame(_metrics(tmp_path / "metrics.jsonl", 2)))
    assert norms.to_dict() == {1: 2.0, 2: 4.0}


def test_no_grad_norm_falls_back(tmp_path):
    log = MetricsLog(tmp_path / "metrics.jsonl")
    log.append({"step": 1, "epoch": 1, "loss": 0.3})
    log.flush()
    assert mean_grad_norms(_frame(tmp_path / "metrics.jsonl")) is None
    log.append({"step": 2, "epoch": 1, "grad_norm": math.inf})  # only skipped (non-finite) steps
    log.flush()
    assert mean_grad_norms(_frame(tmp_path / "metrics.jsonl")) is None
    assert mean_grad_norms(pd.DataFrame()) is None  # no metrics.jsonl


def test_a_distillation_stage_plots_cross_entropy_against_validation_and_its_kd_term_apart(tmp_path):
    """epochs.csv's train_loss of a KD stage is alpha*T^2*KL + (1-alpha)*CE: plotted against the
    validation cross-entropy it compared unlike losses. The engine records each epoch's mean loss
    parts; the loss panel shows the train cross-entropy, a panel of its own the KD term."""
    import torch
    from engine_fixtures import KeyedTrain, PlainEval, engine_config, fingerprint, tiny_vit

    from src.distillation.distiller import DistillationObjective
    from src.engine.run_log import read_records
    from src.engine.trainer import Trainer
    from src.visualization.curves import curves_figure

    objective = DistillationObjective(tiny_vit(seed=5))  # kd, T = 4
    trainer = Trainer(tiny_vit(), objective, KeyedTrain(48), PlainEval(16), engine_config(log_interval=50),
                      tmp_path, device=torch.device("cpu"), seed=0, run_fingerprint=fingerprint())
    trainer.fit()
    records = read_records(tmp_path / "metrics.jsonl")
    per_epoch = [r for r in records if r.get("event") == "epoch"]
    assert [r["epoch"] for r in per_epoch] == [1, 2]
    assert {"train_ce", "train_kd", "train_alpha"} <= set(per_epoch[0])
    epochs = pd.read_csv(tmp_path / "epochs.csv")
    # the objective really is another number than the cross-entropy it is plotted against
    for record, objective_value in zip(per_epoch, epochs["train_loss"], strict=True):
        mixed = record["train_alpha"] * record["train_kd"] + (1 - record["train_alpha"]) * record["train_ce"]
        assert objective_value == pytest.approx(mixed, rel=1e-6)
        assert abs(objective_value - record["train_ce"]) > 1e-3

    fig = curves_figure(epochs, pd.DataFrame(records))
    loss, kd = fig.axes[0], fig.axes[1]
    assert loss.get_title() == "cross-entropy on the labels"
    train_line, val_line = loss.get_lines()
    assert list(train_line.get_ydata()) == pytest.approx([r["train_ce"] for r in per_epoch])
    assert list(val_line.get_ydata()) == pytest.approx(epochs["val_loss"].tolist())
    assert kd.get_title() == "distillation objective (train)"
    assert list(kd.get_lines()[0].get_ydata()) == pytest.approx([r["train_kd"] for r in per_epoch])
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_labels_only_stage_keeps_two_by_two_panels_and_plots_cross_entropy(tmp_path):
    csv = _epochs_csv(tmp_path / "epochs.csv", 2)
    log = MetricsLog(tmp_path / "metrics.jsonl")
    for epoch in (1, 2):
        log.append({"event": "epoch", "step": epoch, "epoch": epoch, "train_ce": 1.5 / epoch})
    log.flush()
    from src.engine.run_log import read_records
    from src.visualization.curves import curves_figure

    fig = curves_figure(pd.read_csv(csv), pd.DataFrame(read_records(tmp_path / "metrics.jsonl")))
    assert len(fig.axes) == 4 and list(fig.axes[0].get_lines()[0].get_ydata()) == [1.5, 0.75]
