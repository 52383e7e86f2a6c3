"""The guards users import from src.utils.training_guards behave as documented."""
from __future__ import annotations

import logging
import math
import warnings

import pytest
import timm
import torch
from torch import nn

from src.errors import KDPipelineError
from src.models.factory import create_model
from src.models.lr_scale import lr_share
from src.utils.training_guards import (
    FreezeReport,
    NonFiniteLossError,
    cleanup_training_state,
    enforce_gradient_checkpointing,
    freeze_teacher,
    get_model_specific_lr,
    reset_peak_memory_stats,
    saved_activation_bytes,
    schedule_kd_alpha,
    validate_loss,
)


@pytest.fixture
def plain_output():
    """Verbose summaries are printed unless setup_logging configured kd_pipeline: make sure it did not."""
    logger = logging.getLogger("kd_pipeline")
    saved = logger.handlers[:]
    logger.handlers.clear()
    yield
    logger.handlers[:] = saved


# ------------------------------------------------------------------------- freeze_teacher


def test_freeze_teacher_resnet50_counts_and_summary(capsys, plain_output):
    model = timm.create_model("resnet50", num_classes=10)
    model.train()
    report = freeze_teacher(model, verbose=True)
    assert report == FreezeReport(frozen_params=23_528_522, total_params=23_528_522)
    assert round(report.gradient_mb_saved, 1) == 94.1
    assert not model.training and not any(m.training for m in model.modules())
    assert not any(p.requires_grad for p in model.parameters())
    out = capsys.readouterr().out
    assert "23,528,522 / 23,528,522" in out
    assert "eval" in out
    assert "94.1 MB" in out


def test_frozen_teacher_builds_no_graph_and_is_silent_when_not_verbose(capsys, plain_output):
    teacher = nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.5), nn.Linear(8, 3))
    freeze_teacher(teacher, verbose=False)
    assert capsys.readouterr().out == ""
    x = torch.randn(5, 4)
    out = teacher(x)
    assert not out.requires_grad
    assert torch.equal(out, teacher(x))  # dropout off: the soft targets are deterministic


# ---------------------------------------------------------------- gradient checkpointing


def _vit() -> nn.Module:
    torch.manual_seed(0)
    return timm.create_model("vit_base_patch16_224", num_classes=10, img_size=32, patch_size=4)


@pytest.mark.slow
def test_checkpointing_shrinks_saved_activations_and_keeps_gradients(plain_output):
    model = _vit()
    images = torch.randn(2, 3, 32, 32)

    def forward_backward() -> tuple[int, list[torch.Tensor]]:
        model.zero_grad(set_to_none=True)
        with saved_activation_bytes(model) as saved:
            logits = model(images)
        logits.logsumexp(dim=1).sum().backward()
        return saved["bytes"], [p.grad.clone() for p in model.parameters()]

    bytes_off, grads_off = forward_backward()
    assert enforce_gradient_checkpointing(model, "vit_base", verbose=False) is True
    assert model.grad_checkpointing
    bytes_on, grads_on = forward_backward()

    assert bytes_on * 5 < bytes_off, (bytes_on, bytes_off)
    assert all(torch.equal(a, b) for a, b in zip(grads_off, grads_on, strict=True))


def test_checkpointing_overrides_a_reentrant_timm_default(plain_output):
    from timm.layers import set_reentrant_ckpt, use_reentrant_ckpt

    original = use_reentrant_ckpt()
    set_reentrant_ckpt(True)
    try:
        model = timm.create_model("resnet18", num_classes=3)
        with pytest.warns(RuntimeWarning, match="reentrant"):
            assert enforce_gradient_checkpointing(model, "resnet18", verbose=False)
        assert use_reentrant_ckpt() is False
    finally:
        set_reentrant_ckpt(original)


def test_checkpointing_unsupported_model_warns_and_returns_false(plain_output):
    with pytest.warns(RuntimeWarning, match="could not be enabled for tiny_mlp"):
        assert enforce_gradient_checkpointing(nn.Linear(2, 2), "tiny_mlp") is False

    class Refuses(nn.Module):
        def set_grad_checkpointing(self, enable=True):
            raise AssertionError("gradient checkpointing not supported")

    with pytest.warns(RuntimeWarning, match="not supported"):
        assert enforce_gradient_checkpointing(Refuses(), "refuses") is False


def test_checkpointing_verbose_summary(capsys, plain_output):
    enforce_gradient_checkpointing(timm.create_model("resnet18", num_classes=3), "resnet18")
    assert "Gradient checkpointing (non-reentrant) enabled for resnet18" in capsys.readouterr().out


# ------------------------------------------------------------------------ memory helpers


def test_cleanup_reports_memory_and_accepts_no_objects(capsys, plain_output):
    info = cleanup_training_state(verbose=True)
    assert set(info) == {"released_mb", "collected", "allocated_mb", "reserved_mb"}
    assert info["released_mb"] == 0.0
    if not torch.cuda.is_available():
        assert info["allocated_mb"] is None and info["reserved_mb"] is None
    assert "Cleanup" in capsys.readouterr().out


def test_cleanup_frees_what_the_caller_released():
    import weakref

    class Cycle:
        pass

    obj = Cycle()
    obj.self_ref = obj  # only the cycle collector frees this
    ref = weakref.ref(obj)
    del obj
    cleanup_training_state(verbose=False)
    assert ref() is None


def test_reset_peak_memory_stats_without_cuda_is_a_no_op():
    assert reset_peak_memory_stats() is None


@pytest.mark.gpu
def test_reset_peak_memory_stats_resets_cuda_peak():
    """Measured against what the process held before (earlier tests may still hold tensors)."""
    held_before = torch.cuda.memory_allocated()
    big = torch.empty(64 * 2**20, dtype=torch.uint8, device="cuda")
    assert torch.cuda.max_memory_allocated() >= held_before + 64 * 2**20
    del big
    reset_peak_memory_stats()
    assert torch.cuda.max_memory_allocated() == torch.cuda.memory_allocated() == held_before


# -------------------------------------------------------------------------- validate_loss


def test_validate_loss_accepts_finite_values():
    assert validate_loss(torch.tensor(0.25), step=1) is True
    assert validate_loss(1.5, step=2) is True


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_validate_loss_raises_with_diagnostic(bad):
    with pytest.raises(NonFiniteLossError) as info:
        validate_loss(torch.tensor(bad), step=127)
    message = str(info.value)
    assert "step 127" in message and str(bad) in message
    for cause in ("learning rate", "exploding gradients", "fp16", "labels"):
        assert cause in message
    assert isinstance(info.value, RuntimeError) and isinstance(info.value, KDPipelineError)
    assert info.value.exit_code == 3
    with pytest.raises(NonFiniteLossError):
        validate_loss(bad, step=3)


def test_validate_loss_warns_instead_of_raising(caplog):
    with caplog.at_level(logging.WARNING, logger="kd_pipeline"):
        assert validate_loss(torch.tensor(math.nan), step=9, raise_on_invalid=False) is False
    assert "non-finite loss at step 9" in caplog.text


def test_validate_loss_rejects_non_scalars():
    with pytest.raises(ValueError, match="single loss"):
        validate_loss(torch.ones(3), step=1)
    with pytest.raises(TypeError):
        validate_loss("0.5", step=1)  # type: ignore[arg-type]


# ---------------------------------------------------------------------- schedule_kd_alpha


def test_alpha_schedule_over_100_epochs():
    values = [round(schedule_kd_alpha(e, 100), 1) for e in (1, 25, 50, 75, 100)]
    assert values == [0.9, 0.8, 0.7, 0.6, 0.5]
    assert schedule_kd_alpha(1, 100) == pytest.approx(0.9)
    assert schedule_kd_alpha(100, 100) == pytest.approx(0.5)
    steps = [schedule_kd_alpha(e, 10) for e in range(1, 11)]
    assert all(a > b for a, b in zip(steps, steps[1:], strict=False))


def test_alpha_schedule_custom_range_and_single_epoch():
    assert schedule_kd_alpha(3, 3, alpha_start=0.2, alpha_end=1.0) == pytest.approx(1.0)
    assert schedule_kd_alpha(1, 1) == pytest.approx(0.9)  # one epoch: the starting weight
    assert schedule_kd_alpha(1, 1, alpha_start=0.3, alpha_end=0.1) == pytest.approx(0.3)


@pytest.mark.parametrize(
    "args",
    [
        (0, 10),
        (11, 10),
        (1, 0),
        (1.5, 10),
        (1, 10.0),
        (True, 10),
        (1, 10, 1.2, 0.5),
        (1, 10, 0.9, -0.1),
        (1, 10, "0.9", 0.5),
    ],
)
def test_alpha_schedule_rejects_impossible_arguments(args):
    with pytest.raises(ValueError):
        schedule_kd_alpha(*args)


# ------------------------------------------------------------------ get_model_specific_lr


@pytest.mark.parametrize(
    ("name", "scale"),
    [
        ("resnet50", 1.0),
        ("vit_base", 1.0),
        ("vit_base_patch16_224", 1.0),
        ("resnet50.a1_in1k", 1.0),
        ("resnet34", 0.75),
        ("vit_small_patch16_224", 0.75),
        ("resnet18", 0.5),
        ("VIT_TINY_patch16_224.augreg_in21k", 0.5),
        # any timm model, by the size of its body: ResNet-101 42.5 M, ConvNeXt-Atto 3.4 M
        ("resnet101", 1.0),
        ("convnext_atto", 0.5),
    ],
)
def test_model_specific_lr(name, scale):
    assert get_model_specific_lr(name, 0.001) == pytest.approx(0.001 * scale)


@pytest.mark.parametrize(("name", "scale"), [("resnet50", 1.0), ("resnet34", 0.75), ("resnet18", 0.5),
                                             ("vit_base", 1.0), ("vit_small", 0.75), ("vit_tiny", 0.5)])
def test_the_preset_models_keep_their_factors_at_every_size_they_are_used_with(name, scale):
    # a built model is counted as built: the presets' class counts and image sizes (digits 8 px,
    # CIFAR 32 px, 224 px) keep every factor the name gives
    for num_classes, image_size in ((2, 8), (10, 8), (10, 16), (100, 32), (1000, 224)):
        model = create_model(name, num_classes, image_size)
        assert get_model_specific_lr(model, 0.001) == pytest.approx(0.001 * scale), (num_classes, image_size)
    assert get_model_specific_lr(name, 0.001) == pytest.approx(0.001 * scale)


def test_the_rule_is_the_body_parameter_count_in_three_tiers():
    sizes = (0, 16e6 - 1, 16e6, 22.5e6 - 1, 22.5e6, 300e6)
    assert [lr_share(int(n)) for n in sizes] == [0.5, 0.5, 0.75, 0.75, 1, 1]
    mlp = nn.Sequential(nn.Linear(4000, 4000), nn.Linear(4000, 4001))  # 32 M parameters, no classifier
    assert get_model_specific_lr(mlp, 0.1) == pytest.approx(0.1)


@pytest.mark.parametrize("name", ["resnet5", "vit_nano_patch99", ""])
def test_model_specific_lr_unknown_name(name):
    with pytest.raises(ValueError, match="no learning-rate scale: unknown model .*a timm model name"):
        get_model_specific_lr(name, 0.001)


@pytest.mark.parametrize("lr", [0, -0.1, float("nan"), float("inf")])
def test_model_specific_lr_rejects_bad_base_lr(lr):
    with pytest.raises(ValueError, match="base_lr"):
        get_model_specific_lr("resnet18", lr)


def test_saved_activation_bytes_counts_each_storage_once():
    layer = nn.Linear(256, 256)
    x = torch.randn(8, 256, requires_grad=True)
    with saved_activation_bytes(layer) as saved:
        y = layer(x)
        z = y * y  # saves y once (both operands share a storage)
    assert saved["bytes"] == x.numel() * 4 + y.numel() * 4  # weight excluded, y counted once
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        z.sum().backward()  # the hooks do not change what backward sees
    assert x.grad is not None
