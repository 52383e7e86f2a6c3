"""Optimizer parameter groups and the per-update learning-rate schedules."""
from __future__ import annotations

import io
import math

import pytest
import timm
import torch
from torch import nn

from src.engine.optim import build_optimizer, build_schedule
from src.engine.settings import TrainConfig
from src.errors import IncompatibleResumeError, UserError


def _schedule(updates_per_epoch: int = 5, **overrides):
    cfg = TrainConfig(**{"epochs": 4, "lr": 1.0, **overrides})
    model = nn.Linear(2, 2)
    optimizer = build_optimizer(model, cfg)
    return optimizer, build_schedule(optimizer, cfg, updates_per_epoch)


def _run(optimizer, schedule, updates: int, metric_per_epoch=None, updates_per_epoch: int = 5) -> list[float]:
    """The lr the schedule reports after 0..updates applied updates (validating at epoch ends)."""
    lrs = [schedule.current_lr()]
    for k in range(1, updates + 1):
        optimizer.step()
        schedule.step_update()
        if metric_per_epoch is not None and k % updates_per_epoch == 0:
            schedule.step_epoch(metric_per_epoch(k // updates_per_epoch))
        lrs.append(schedule.current_lr())
    return lrs


def _decay_flags(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, bool]:
    decayed = {id(p): g["weight_decay"] > 0 for g in optimizer.param_groups for p in g["params"]}
    return {name: decayed[id(p)] for name, p in model.named_parameters() if id(p) in decayed}


def test_resnet18_no_decay_on_norms_and_biases_and_frozen_params_left_out():
    model = timm.create_model("resnet18", num_classes=3)
    model.conv1.weight.requires_grad_(False)
    cfg = TrainConfig(optimizer="sgd", nesterov=True, weight_decay=1e-4)
    optimizer = build_optimizer(model, cfg, lr=0.2)
    flags = _decay_flags(model, optimizer)
    assert "conv1.weight" not in flags
    assert flags["layer1.0.conv1.weight"] and flags["fc.weight"]
    assert not flags["bn1.weight"] and not flags["layer1.0.bn1.bias"] and not flags["fc.bias"]
    assert {g["weight_decay"] for g in optimizer.param_groups} == {0.0, 1e-4}
    assert isinstance(optimizer, torch.optim.SGD)
    assert all(g["nesterov"] and g["lr"] == 0.2 and g["momentum"] == 0.9 for g in optimizer.param_groups)


def test_vit_no_decay_on_pos_embed_cls_token_and_layernorm():
    model = timm.create_model("vit_tiny_patch16_224", img_size=16, patch_size=8, num_classes=3, depth=2)
    optimizer = build_optimizer(model, TrainConfig(optimizer="adamw", weight_decay=0.05, lr=1e-3))
    flags = _decay_flags(model, optimizer)
    assert isinstance(optimizer, torch.optim.AdamW)
    assert not flags["pos_embed"] and not flags["cls_token"]
    assert not flags["blocks.0.norm1.weight"] and not flags["blocks.0.attn.qkv.bias"]
    assert flags["blocks.0.attn.qkv.weight"] and flags["patch_embed.proj.weight"] and flags["head.weight"]


def test_sgd_without_nesterov():
    optimizer = build_optimizer(nn.Linear(2, 2), TrainConfig(nesterov=False))
    assert not any(g["nesterov"] for g in optimizer.param_groups)


def test_warmup_is_linear_per_update_and_reaches_base():
    # 2 warmup epochs of 5 updates: W = 10, lr after k updates = (k + 1) / 11 until k = W
    optimizer, schedule = _schedule(warmup_epochs=2, scheduler="constant")
    lrs = _run(optimizer, schedule, 12)
    assert lrs[:11] == pytest.approx([(k + 1) / 11 for k in range(11)])
    assert lrs[11:] == pytest.approx([1.0, 1.0])


def test_fractional_warmup_rounds_to_updates():
    optimizer, schedule = _schedule(updates_per_epoch=4, warmup_epochs=0.5, scheduler="constant")
    assert _run(optimizer, schedule, 3, updates_per_epoch=4) == pytest.approx([1 / 3, 2 / 3, 1.0, 1.0])


def test_cosine_peaks_after_warmup_and_ends_at_min_lr():
    optimizer, schedule = _schedule(warmup_epochs=1, scheduler="cosine", min_lr=0.01)
    lrs = _run(optimizer, schedule, 20)
    assert lrs[5] == pytest.approx(1.0)
    assert lrs[20] == pytest.approx(0.01)
    assert lrs[10] == pytest.approx(0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * (10 - 5) / 15)))
    assert all(a > b for a, b in zip(lrs[5:20], lrs[6:21], strict=True))  # strictly decreasing after warmup


def test_step_decays_every_step_size_epochs_counted_in_updates():
    optimizer, schedule = _schedule(scheduler="step", step_size=2, gamma=0.5)
    lrs = _run(optimizer, schedule, 20)
    assert lrs[:10] == pytest.approx([1.0] * 10)
    assert lrs[10:20] == pytest.approx([0.5] * 10)
    assert lrs[20] == pytest.approx(0.25)


def test_plateau_reduces_after_patience_epochs_without_improvement():
    # patience 4 for early stopping -> plateau patience 2: reduce on the 3rd bad epoch in a row
    optimizer, schedule = _schedule(scheduler="plateau", gamma=0.1, patience=4, epochs=8)
    assert schedule.plateau_patience == 2
    metrics = {1: 1.0, 2: 0.9, 3: 0.9, 4: 0.95, 5: 0.9, 6: 0.5}
    lrs = _run(optimizer, schedule, 30, metric_per_epoch=metrics.__getitem__)
    per_epoch = lrs[5::5]  # lr after each epoch's validation
    assert per_epoch == pytest.approx([1.0, 1.0, 1.0, 1.0, 0.1, 0.1])


def test_plateau_ignores_metrics_during_warmup_and_warms_up_per_update():
    optimizer, schedule = _schedule(scheduler="plateau", gamma=0.1, patience=2, warmup_epochs=2)
    lrs = _run(optimizer, schedule, 20, metric_per_epoch=lambda epoch: 1.0)
    assert lrs[:11] == pytest.approx([(k + 1) / 11 for k in range(11)])
    # bests recorded from epoch 2 on; epochs 3 and 4 are bad -> patience 1 exceeded at epoch 4
    assert lrs[15] == pytest.approx(1.0) and lrs[20] == pytest.approx(0.1)


def test_onecycle_peaks_after_warmup_and_ends_at_min_lr():
    optimizer, schedule = _schedule(scheduler="onecycle", warmup_epochs=1, min_lr=0.01)
    lrs = _run(optimizer, schedule, 20)
    assert lrs[:6] == pytest.approx([(k + 1) / 6 for k in range(6)])
    assert max(lrs) == pytest.approx(1.0) and lrs.index(max(lrs)) == 5
    assert lrs[19] == pytest.approx(0.01) and lrs[20] == pytest.approx(0.01)


def test_onecycle_without_warmup_rises_over_30_percent():
    optimizer, schedule = _schedule(scheduler="onecycle")
    lrs = _run(optimizer, schedule, 20)
    assert lrs.index(max(lrs)) == 6 and max(lrs) == pytest.approx(1.0)


def test_constant_without_warmup_stays():
    optimizer, schedule = _schedule(scheduler="constant", lr=0.3)
    assert _run(optimizer, schedule, 20) == pytest.approx([0.3] * 21)


def test_lr_override_is_the_base_of_the_schedule():
    cfg = TrainConfig(epochs=2, lr=1.0, scheduler="cosine")
    optimizer = build_optimizer(nn.Linear(2, 2), cfg, lr=0.2)
    schedule = build_schedule(optimizer, cfg, 3)
    assert schedule.current_lr() == pytest.approx(0.2)
    assert _run(optimizer, schedule, 6, updates_per_epoch=3)[-1] == pytest.approx(0.0)


@pytest.mark.parametrize("kind", ["cosine", "step", "plateau", "onecycle", "constant"])
def test_state_dict_round_trip_continues_identically(kind):
    overrides = {
        "scheduler": kind, "warmup_epochs": 1, "step_size": 1, "gamma": 0.5, "patience": 2, "min_lr": 0.01,
    }
    metric = {1: 1.0, 2: 0.8, 3: 0.9, 4: 0.9}.__getitem__
    ref_opt, reference = _schedule(**overrides)
    expected = _run(ref_opt, reference, 20, metric_per_epoch=metric)

    optimizer, schedule = _schedule(**overrides)
    _run(optimizer, schedule, 10, metric_per_epoch=metric)
    buffer = io.BytesIO()
    torch.save({"optimizer": optimizer.state_dict(), "schedule": schedule.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)

    resumed_opt, resumed = _schedule(**overrides)
    resumed_opt.load_state_dict(saved["optimizer"])
    resumed.load_state_dict(saved["schedule"])
    lrs = [resumed.current_lr()]
    for k in range(11, 21):
        resumed_opt.step()
        resumed.step_update()
        if k % 5 == 0:
            resumed.step_epoch(metric(k // 5))
        lrs.append(resumed.current_lr())
    assert lrs == pytest.approx(expected[10:])


def test_loading_another_schedules_state_is_refused():
    _, cosine = _schedule(scheduler="cosine")
    _, step = _schedule(scheduler="step")
    with pytest.raises(IncompatibleResumeError, match="cosine"):
        step.load_state_dict(cosine.state_dict())


def test_onecycle_resumed_with_more_epochs_is_refused_before_it_crashes_mid_run():
    """epochs is a harmless resume change for the other schedules; torch's OneCycleLR would
    keep its saved length and raise a ValueError once stepped past it, mid-training."""
    optimizer, short = _schedule(scheduler="onecycle", epochs=2)
    optimizer.step()
    short.step_update()
    _, longer = _schedule(scheduler="onecycle", epochs=4)
    with pytest.raises(IncompatibleResumeError, match="onecycle .* original --epochs"):
        longer.load_state_dict(short.state_dict())
    _, same = _schedule(scheduler="onecycle", epochs=2)
    same.load_state_dict(short.state_dict())
    assert same.num_updates == 1


def test_warmup_longer_than_the_run_is_a_user_error():
    with pytest.raises(UserError, match="warmup_epochs"):
        _schedule(scheduler="cosine", warmup_epochs=4)
