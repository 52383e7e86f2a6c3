"""Macro metrics match scikit-learn; the accumulator scores exactly what it was fed."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from src.utils.metrics import (
    PredictionAccumulator,
    classification_metrics,
    confusion,
    per_class_report,
)

Y_TRUE = [0, 0, 0, 0, 1, 1, 2, 2]
Y_PRED = [0, 0, 0, 1, 1, 1, 1, 2]


def test_classification_metrics_are_macro_averages():
    m = classification_metrics(Y_TRUE, Y_PRED)
    assert m["accuracy"] == pytest.approx(6 / 8)
    # per class precision 1, 2/4, 1 ; recall 3/4, 1, 1/2
    assert m["precision"] == pytest.approx((1 + 0.5 + 1) / 3)
    assert m["recall"] == pytest.approx((0.75 + 1 + 0.5) / 3)
    f1 = [2 * p * r / (p + r) for p, r in [(1, 0.75), (0.5, 1), (1, 0.5)]]
    assert m["f1_score"] == pytest.approx(sum(f1) / 3)
    assert set(m) == {"accuracy", "precision", "recall", "f1_score"}
    assert all(isinstance(v, float) for v in m.values())


def test_num_classes_averages_over_the_classes_the_split_holds():
    m = classification_metrics([0, 1], [0, 1], num_classes=4)
    assert m["accuracy"] == 1.0
    assert m["precision"] == 1.0 and m["recall"] == 1.0 and m["f1_score"] == 1.0  # not 0.5: 2 of 4 held
    wrong = classification_metrics([0, 0, 1], [0, 3, 1], num_classes=4)  # a guess of an absent class
    assert wrong["recall"] == pytest.approx((0.5 + 1) / 2)
    assert classification_metrics([0, 1], [0, 1])["f1_score"] == 1.0


def test_classification_metrics_rejects_bad_input():
    with pytest.raises(ValueError, match="no predictions"):
        classification_metrics([], [])
    with pytest.raises(ValueError, match="same length"):
        classification_metrics([0, 1], [0])


def test_accumulator_matches_direct_computation_and_resumes(tmp_path):
    torch.manual_seed(0)
    logits = torch.randn(10, 3)
    targets = torch.randint(0, 3, (10,))
    acc = PredictionAccumulator()
    acc.update(logits[:4], targets[:4])
    torch.save(acc.state_dict(), tmp_path / "acc.pt")  # mid-epoch checkpoint

    resumed = PredictionAccumulator()
    resumed.load_state_dict(torch.load(tmp_path / "acc.pt", weights_only=True))
    for a in (acc, resumed):
        a.update(logits[4:], targets[4:])
        assert len(a) == 10
        assert np.array_equal(a.y_pred, logits.argmax(1).numpy())
        assert np.array_equal(a.y_true, targets.numpy())
        assert a.compute(3) == classification_metrics(targets.numpy(), logits.argmax(1).numpy(), 3)
    acc.reset()
    assert len(acc) == 0
    with pytest.raises(ValueError):
        acc.compute()


def test_accumulator_accepts_class_indices_and_keeps_no_graph():
    acc = PredictionAccumulator(device="cpu")
    logits = torch.randn(3, 2, requires_grad=True)
    acc.update(logits, torch.tensor([0, 1, 1]))
    acc.update(torch.tensor([1, 0]), torch.tensor([1, 1]))
    assert acc.y_pred.dtype == np.int64 and len(acc) == 5
    assert not acc.state_dict()["y_pred"].requires_grad
    with pytest.raises(ValueError, match="does not match"):
        acc.update(torch.tensor([1, 0]), torch.tensor([1]))
    with pytest.raises(ValueError, match="expected logits"):
        acc.update(torch.zeros(2, 2, 2), torch.tensor([1, 1]))


@pytest.mark.gpu
def test_accumulator_keeps_predictions_on_the_device():
    acc = PredictionAccumulator()
    acc.update(torch.randn(4, 3, device="cuda"), torch.tensor([0, 1, 2, 0], device="cuda"))
    assert acc._preds[0].is_cuda
    assert acc.state_dict()["y_pred"].device.type == "cpu"


def test_per_class_report_and_confusion():
    report = per_class_report(Y_TRUE, Y_PRED, ["cat", "dog", "owl"])
    assert report.loc["dog", "precision"] == pytest.approx(0.5)
    assert report.loc["cat", "support"] == 4
    macro_f1 = classification_metrics(Y_TRUE, Y_PRED)["f1_score"]
    assert report.loc["macro avg", "f1-score"] == pytest.approx(macro_f1)
    matrix = confusion(Y_TRUE, Y_PRED, num_classes=4)
    assert matrix.shape == (4, 4)
    assert matrix[0].tolist() == [3, 1, 0, 0] and matrix[2].tolist() == [0, 1, 1, 0]
    assert matrix.sum() == len(Y_TRUE)
