"""Early stopping: which epoch training stops at, for the sequences users actually see."""
from __future__ import annotations

import io
import math

import pytest
import torch

from src.engine.early_stopping import EarlyStopping
from src.errors import IncompatibleResumeError


def _stop_epoch(values, **kwargs) -> int | None:
    """The 1-based epoch after which should_stop first becomes True (None: never)."""
    stopper = EarlyStopping(**kwargs)
    for epoch, value in enumerate(values, start=1):
        stopper.update(value, epoch)
        if stopper.should_stop:
            return epoch
    return None


def test_improving_every_epoch_never_stops():
    # the seed's bug: its counter grew every epoch and stopped at 10 whatever happened
    assert _stop_epoch([1.0 - 0.01 * i for i in range(50)], patience=10) is None


@pytest.mark.parametrize(
    ("values", "kwargs", "expected"),
    [
        ([1.0, 0.9, 0.95, 0.96, 0.97], {"patience": 3}, 5),
        ([1.0, 0.9, 0.95, 0.8, 0.85, 0.86, 0.87], {"patience": 3}, 7),  # improvement resets wait
        ([1.0, 1.0, 1.0], {"patience": 2}, 3),  # equal values are not improvements
        ([1.0, 0.75, 0.8], {"patience": 2, "min_delta": 0.25}, 3),  # exactly min_delta better: no
        ([1.0, 0.74, 0.48], {"patience": 2, "min_delta": 0.25}, None),
        ([0.5, 0.6, 0.6, 0.7, 0.7, 0.7], {"mode": "max", "monitor": "val_accuracy", "patience": 2}, 6),
        ([0.5, 0.4, 0.3, 0.2], {"mode": "max", "patience": 3}, 4),
        ([5.0] * 100, {"patience": None}, None),
        ([1.0, float("nan"), float("nan")], {"patience": 2}, 3),
    ],
)
def test_stopping_epoch(values, kwargs, expected):
    assert _stop_epoch(values, **kwargs) == expected


def test_update_reports_improvements_and_tracks_best():
    stopper = EarlyStopping(patience=5)
    assert [stopper.update(v, e) for e, v in enumerate([2.0, 1.0, 1.0, 1.5, 0.5], 1)] == [
        True, True, False, False, True,
    ]
    assert (stopper.best, stopper.best_epoch, stopper.wait, stopper.should_stop) == (0.5, 5, 0, False)


def test_nan_first_value_is_not_a_best():
    stopper = EarlyStopping(patience=5)
    assert not stopper.update(math.nan, 1)
    assert stopper.best_epoch == 0 and stopper.wait == 1
    assert stopper.update(3.0, 2) and stopper.best == 3.0


def test_state_dict_round_trip_through_weights_only_checkpoint():
    stopper = EarlyStopping(patience=3)
    for epoch, value in enumerate([1.0, 0.8, 0.9, 0.9], 1):
        stopper.update(value, epoch)
    buffer = io.BytesIO()
    torch.save(stopper.state_dict(), buffer)
    buffer.seek(0)
    resumed = EarlyStopping(patience=3)
    resumed.load_state_dict(torch.load(buffer, weights_only=True))
    assert (resumed.best, resumed.best_epoch, resumed.wait) == (0.8, 2, 2)
    resumed.update(0.85, 5)
    assert resumed.should_stop


def test_fresh_state_survives_weights_only_round_trip():
    buffer = io.BytesIO()
    torch.save(EarlyStopping().state_dict(), buffer)
    buffer.seek(0)
    resumed = EarlyStopping()
    resumed.load_state_dict(torch.load(buffer, weights_only=True))
    assert resumed.best == math.inf and resumed.update(10.0, 1)


def test_resume_with_another_monitor_is_refused():
    state = EarlyStopping(monitor="val_loss").state_dict()
    with pytest.raises(IncompatibleResumeError, match="val_loss"):
        EarlyStopping(monitor="val_accuracy", mode="max").load_state_dict(state)
