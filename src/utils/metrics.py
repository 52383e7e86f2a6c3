"""Classification metrics, computed by scikit-learn, with predictions gathered on the device.

Precision, recall and F1 are MACRO averages everywhere in the product: each class counts the
same regardless of how many samples it has, so a model that ignores a rare class is not
hidden behind the frequent ones (and the numbers match ``classification_report``'s
"macro avg" row).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Union

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import (
    accuracy_score,
    classification_report,
    confusion_matrix,
    precision_recall_fscore_support,
)

AVERAGING = "macro"
Labels = Union[Sequence[int], np.ndarray]


def present_classes(y_true: Labels, num_classes: int) -> list[int]:
    """The classes of ``0..num_classes-1`` with at least one image in ``y_true``."""
    held = set(np.unique(np.asarray(y_true)).tolist())
    return [c for c in range(num_classes) if c in held]


def classification_metrics(
    y_true: Labels, y_pred: Labels, num_classes: int | None = None
) -> dict[str, float]:
    """``accuracy`` and MACRO-averaged ``precision``, ``recall``, ``f1_score`` as floats.

    With ``num_classes`` the average runs over the classes of ``0..num_classes-1`` that this split
    holds (those in ``y_true``): a class with no image in the split has no recall to measure, and
    scoring it 0 would report a perfect model as half wrong (the report warns about such a split
    instead). Without it, over the labels present in either array.
    """
    y_true = np.asarray(y_true)
    y_pred = np.asarray(y_pred)
    if y_true.shape != y_pred.shape or y_true.ndim != 1:
        raise ValueError(
            f"y_true and y_pred must be 1-D and the same length, got {y_true.shape} and {y_pred.shape}"
        )
    if y_true.size == 0:
        raise ValueError("no predictions to score")
    labels = present_classes(y_true, num_classes) if num_classes is not None else None
    precision, recall, f1, _ = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, average=AVERAGING, zero_division=0
    )
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "precision": float(precision),
        "recall": float(recall),
        "f1_score": float(f1),
    }


class PredictionAccumulator:
    """Collects predictions and targets batch by batch without a host sync per step.

    ``update`` keeps detached integer tensors on the device; ``compute`` concatenates them,
    moves them to the CPU once and scores them. ``state_dict`` lets a mid-epoch resume carry
    on with exactly the predictions seen so far.
    """

    def __init__(self, device: torch.device | str | None = None) -> None:
        self.device = torch.device(device) if device is not None else None
        self._preds: list[torch.Tensor] = []
        self._targets: list[torch.Tensor] = []

    def update(self, logits_or_preds: torch.Tensor, targets: torch.Tensor) -> None:
        """Add a batch: logits ``[N, C]`` (argmax is taken) or class indices ``[N]``."""
        preds = logits_or_preds.detach()
        if preds.ndim == 2:
            preds = preds.argmax(dim=1)
        elif preds.ndim != 1:
            raise ValueError(f"expected logits [N, C] or predictions [N], got shape {tuple(preds.shape)}")
        targets = targets.detach()
        if targets.shape != preds.shape:
            raise ValueError(
                f"targets shape {tuple(targets.shape)} does not match predictions {tuple(preds.shape)}"
            )
        if self.device is not None:
            preds = preds.to(self.device, non_blocking=True)
            targets = targets.to(self.device, non_blocking=True)
        self._preds.append(preds.long())
        self._targets.append(targets.long())

    def __len__(self) -> int:
        return sum(t.numel() for t in self._targets)  # shapes only: no sync

    def _cat(self, parts: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat(parts) if parts else torch.empty(0, dtype=torch.long)

    @property
    def y_true(self) -> np.ndarray:
        return self._cat(self._targets).cpu().numpy()

    @property
    def y_pred(self) -> np.ndarray:
        return self._cat(self._preds).cpu().numpy()

    def compute(self, num_classes: int | None = None) -> dict[str, float]:
        """Score everything seen so far (see :func:`classification_metrics`)."""
        return classification_metrics(self.y_true, self.y_pred, num_classes)

    def reset(self) -> None:
        self._preds.clear()
        self._targets.clear()

    def state_dict(self) -> dict[str, torch.Tensor]:
        """CPU tensors only: safe for ``torch.load(..., weights_only=True)``."""
        return {"y_true": self._cat(self._targets).cpu(), "y_pred": self._cat(self._preds).cpu()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.reset()
        y_true, y_pred = state["y_true"], state["y_pred"]
        if y_true.numel():
            self.update(y_pred.long(), y_true.long())


def per_class_report(y_true: Labels, y_pred: Labels, class_names: Sequence[str]) -> pd.DataFrame:
    """scikit-learn's per-class precision/recall/F1/support table, one row per class plus the
    accuracy, macro and weighted averages. A class with no image in the split shows support 0 and
    empty (NaN) scores, and the macro average runs over the classes the split holds, as in
    :func:`classification_metrics`."""
    report = classification_report(
        y_true,
        y_pred,
        labels=list(range(len(class_names))),
        target_names=[str(name) for name in class_names],
        output_dict=True,
        zero_division=0,
    )
    table = pd.DataFrame(report).transpose()
    names = [str(name) for name in class_names]
    absent = [name for name in names if table.at[name, "support"] == 0]
    if absent:
        scores = ["precision", "recall", "f1-score"]
        table.loc[absent, scores] = np.nan
        table.loc["macro avg", scores] = table.loc[[n for n in names if n not in absent], scores].mean()
    return table


def confusion(y_true: Labels, y_pred: Labels, num_classes: int) -> np.ndarray:
    """Confusion matrix ``[true class, predicted class]`` over all ``num_classes`` classes."""
    return confusion_matrix(y_true, y_pred, labels=list(range(num_classes)))
