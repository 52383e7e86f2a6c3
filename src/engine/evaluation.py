"""Validation and test evaluation: plain cross-entropy weighted by samples, macro metrics
over every rank's predictions.

Validation loss is always label cross-entropy, whatever the training objective, so
``val_loss`` means the same thing for every stage and early stopping compares like with like.

An out-of-memory error during a pass (a validation or test pass can need more than training at
the same batch: no step frees its activations in between, a resident split may have grown) is
recovered: the pass goes on from the batch that failed at half the batch size, down to one
image; the caller keeps the size that worked (``EvalResult.batch_size``). Each rank halves on its
own (a pass has no collective until its end); one that cannot evaluate even one image makes
every rank raise the same error at that end, so no rank is left waiting for it.
"""
from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from src.engine.device_memory import DeviceMemory
from src.engine.distributed import DistributedContext
from src.engine.sampling import load_batches, rank_shard
from src.errors import UserError
from src.utils.logger import SPLIT_METRICS
from src.utils.metrics import classification_metrics

log = logging.getLogger("kd_pipeline.engine")


@dataclass
class EvalResult:
    """Metrics of one pass over a dataset (macro precision/recall/F1)."""

    loss: float
    accuracy: float
    precision: float
    recall: float
    f1_score: float
    y_true: np.ndarray
    y_pred: np.ndarray
    batch_size: int  # the one that finished the pass: smaller than asked after an out-of-memory error

    def as_row(self, prefix: str) -> dict[str, float]:
        """The epochs.csv columns for this split, e.g. ``val_loss``, ``val_accuracy``."""
        return {f"{prefix}_{name}": float(getattr(self, name)) for name in SPLIT_METRICS}


def num_classes_of(dataset: Dataset[Any], fallback: int) -> int:
    """Classes as the dataset declares them (a split may miss a class), else the model's."""
    return int(getattr(dataset, "num_classes", fallback))


def evaluate_model(model: nn.Module, dataset: Dataset[Any], *, device: torch.device, batch_size: int,
                   num_workers: int, seed: int, num_classes: int, dist: Optional[DistributedContext] = None,
                   autocast_dtype: Optional[torch.dtype] = None, channels_last: bool = False) -> EvalResult:
    """Run ``model`` over ``dataset`` (int keys) in eval mode under inference mode. Each rank
    takes its unpadded share; predictions are gathered and put back in dataset order. Out of
    memory, the rest of the pass runs at half the batch size (see the module's docstring)."""
    dist = dist or DistributedContext()
    indices = rank_shard(range(len(dataset)), dist.rank, dist.world_size, pad=False)  # type: ignore[arg-type]
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    preds: list[torch.Tensor] = []
    targets: list[torch.Tensor] = []
    done, out_of_memory = 0, False  # images of this rank's share scored so far
    try:
        while done < len(indices):
            batches = [indices[i : i + batch_size] for i in range(done, len(indices), batch_size)]
            loader = load_batches(dataset, batches, device, num_workers, seed, "eval")
            autocast = (torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype is not None
                        else contextlib.nullcontext())
            try:
                with torch.inference_mode(), autocast:
                    for images, labels in loader:
                        images = images.to(device, non_blocking=True)
                        if channels_last:
                            images = images.contiguous(memory_format=torch.channels_last)
                        labels = labels.to(device, non_blocking=True)
                        logits = model(images).float()
                        loss, pred = F.cross_entropy(logits, labels, reduction="sum"), logits.argmax(dim=1)
                        loss_sum += loss  # counted only once the whole batch is scored
                        preds.append(pred)
                        targets.append(labels)
                        done += len(labels)
            except torch.OutOfMemoryError:  # returning from here drops the failed batch's tensors
                out_of_memory = True
            if out_of_memory:
                DeviceMemory(device).release_cached()
                if batch_size == 1:
                    break
                log.warning("out of GPU memory evaluating %d images at a time; going on with %d",
                            batch_size, max(batch_size // 2, 1))
                batch_size, out_of_memory = max(batch_size // 2, 1), False
    finally:
        model.train(was_training)
    if dist.any_flags(out_of_memory)[0]:  # every rank reaches this, whether or not it gave up
        raise UserError(
            "out of GPU memory evaluating even one image at a time"
            + (f" on at least one of the {dist.world_size} ranks" if dist.enabled else "")
            + "; free the GPU of other processes or raise --vram-budget, then re-run the same command"
        )
    y_pred = torch.cat(preds).cpu() if preds else torch.empty(0, dtype=torch.long)
    y_true = torch.cat(targets).cpu() if targets else torch.empty(0, dtype=torch.long)
    parts = dist.all_gather_object((indices, y_true.numpy(), y_pred.numpy(), float(loss_sum)))
    order = np.concatenate([np.asarray(p[0], dtype=np.int64) for p in parts])
    restore = np.argsort(order, kind="stable")
    y_true_all = np.concatenate([p[1] for p in parts])[restore]
    y_pred_all = np.concatenate([p[2] for p in parts])[restore]
    total = len(y_true_all)
    metrics = classification_metrics(y_true_all, y_pred_all, num_classes)
    return EvalResult(
        loss=sum(p[3] for p in parts) / max(total, 1),
        accuracy=float(metrics["accuracy"]),
        precision=float(metrics["precision"]),
        recall=float(metrics["recall"]),
        f1_score=float(metrics["f1_score"]),
        y_true=y_true_all,
        y_pred=y_pred_all,
        batch_size=batch_size,
    )
