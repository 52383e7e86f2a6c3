"""The timm model factory: names, small-input adaptations, pretrained loading and its errors."""

from __future__ import annotations

import huggingface_hub.constants
import pytest
import timm
import torch
from safetensors.torch import save_file
from timm.layers import resample_patch_embed
from torch import nn

from src.errors import UserError
from src.models.factory import (
    count_parameters,
    create_model,
    get_resnet_model,
    get_vit_model,
    resolve_model_name,
)
from src.models.vit_patches import default_patch_size


@pytest.mark.parametrize(
    ("family", "name"),
    [
        ("cnn", "resnet18"),
        ("cnn", "resnet34"),
        ("cnn", "resnet50"),
        ("vit", "vit_tiny"),
        ("vit", "vit_small"),
        ("vit", "vit_base"),
    ],
)
def test_all_six_models_forward_at_16px(family: str, name: str) -> None:
    model = create_model(family, name, num_classes=10, image_size=16)
    with torch.no_grad():
        out = model.eval()(torch.randn(2, 3, 16, 16))
    assert out.shape == (2, 10)


@pytest.mark.parametrize(("family", "name"), [("cnn", "resnet18"), ("vit", "vit_tiny")])
def test_both_families_work_at_8px(family: str, name: str) -> None:
    model = create_model(family, name, num_classes=3, image_size=8)
    with torch.no_grad():
        assert model.eval()(torch.randn(2, 3, 8, 8)).shape == (2, 3)


def test_small_input_stem_is_3x3_stride1_without_maxpool() -> None:
    model = create_model("cnn", "resnet18", num_classes=10, image_size=32)  # 32 < 64: small by default
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1)
    assert model.conv1.out_channels == 64 and model.conv1.bias is None
    assert isinstance(model.maxpool, nn.Identity)
    # 32 px keeps a 4x4 map before pooling instead of 1x1 with the ImageNet stem.
    assert model.forward_features(torch.randn(1, 3, 32, 32)).shape[-1] == 4

    imagenet = create_model("cnn", "resnet18", num_classes=10, image_size=224)
    assert imagenet.conv1.kernel_size == (7, 7) and isinstance(imagenet.maxpool, nn.MaxPool2d)


def test_vit_patch_size_follows_image_size() -> None:
    assert [default_patch_size(s) for s in (8, 16, 32, 224, 384)] == [1, 2, 4, 16, 16]
    assert 28 % default_patch_size(28) == 0  # non power-of-two sizes still get a valid patch
    model = get_vit_model("vit_tiny", num_classes=10, img_size=32)
    assert model.patch_embed.patch_size == (4, 4) and model.patch_embed.grid_size == (8, 8)


def test_bad_patch_size_is_a_user_error() -> None:
    with pytest.raises(UserError, match="patch size 5 does not divide the image size 32"):
        get_vit_model("vit_tiny", num_classes=10, img_size=32, patch_size=5)


def test_names_resolve_and_unknown_name_lists_the_short_names() -> None:
    assert resolve_model_name("vit_base") == "vit_base_patch16_224"
    assert resolve_model_name("resnet50.a1_in1k") == "resnet50.a1_in1k"
    with pytest.raises(UserError, match="resnet50, resnet34, resnet18, vit_base, vit_small, vit_tiny"):
        resolve_model_name("resnet9000")
    with pytest.raises(UserError, match="not a ResNet"):
        create_model("cnn", "vit_tiny", num_classes=10, image_size=16)
    with pytest.raises(UserError, match="family"):
        create_model("mlp", "resnet18", num_classes=10, image_size=16)


def test_count_parameters_respects_trainable_only() -> None:
    model = get_resnet_model("resnet18", num_classes=10)
    total = count_parameters(model)
    assert total == sum(p.numel() for p in model.parameters())
    model.fc.requires_grad_(False)
    assert (
        count_parameters(model, trainable_only=True)
        == total - model.fc.weight.numel() - model.fc.bias.numel()
    )


def test_vit_loads_local_weights_adapting_size_and_head(tmp_path) -> None:
    source = timm.create_model("vit_tiny_patch16_224", num_classes=1000, img_size=32, patch_size=4)
    path = tmp_path / "vit.safetensors"
    save_file(source.state_dict(), str(path))

    model = get_vit_model("vit_tiny", num_classes=7, img_size=16, weights_path=path)  # patch 2, 8x8 grid

    torch.testing.assert_close(model.blocks[3].mlp.fc1.weight, source.blocks[3].mlp.fc1.weight)
    torch.testing.assert_close(model.cls_token, source.cls_token)
    assert model.head.weight.shape == (7, source.head.weight.shape[1])
    assert model.pos_embed.shape == (1, 1 + 8 * 8, source.pos_embed.shape[-1])
    # timm's checkpoint filter resampled the 4x4 patch kernels to 2x2 rather than dropping them.
    torch.testing.assert_close(
        model.patch_embed.proj.weight, resample_patch_embed(source.patch_embed.proj.weight, [2, 2])
    )


def test_resnet_loads_local_weights_then_swaps_stem(tmp_path) -> None:
    source = timm.create_model("resnet18", num_classes=1000)
    path = tmp_path / "resnet18.pth"
    torch.save(source.state_dict(), path)

    model = get_resnet_model("resnet18", num_classes=5, small_input=True, weights_path=path)

    torch.testing.assert_close(model.layer3[1].conv2.weight, source.layer3[1].conv2.weight)
    torch.testing.assert_close(model.bn1.weight, source.bn1.weight)
    assert model.fc.weight.shape == (5, 512)
    assert model.conv1.kernel_size == (3, 3)


def test_missing_weights_file_is_a_user_error(tmp_path) -> None:
    missing = tmp_path / "nope.safetensors"
    with pytest.raises(UserError, match="nope.safetensors"):
        get_resnet_model("resnet18", num_classes=10, weights_path=missing)


def test_weights_file_for_another_architecture_is_a_user_error(tmp_path) -> None:
    path = tmp_path / "resnet18.safetensors"
    save_file(timm.create_model("resnet18", num_classes=10).state_dict(), str(path))
    with pytest.raises(UserError, match="does not fit vit_tiny_patch16_224"):
        get_vit_model("vit_tiny", num_classes=10, img_size=16, weights_path=path)


def test_pretrained_offline_without_file_is_a_clear_error(monkeypatch) -> None:
    # huggingface_hub reads HF_HUB_OFFLINE at import time, so patch the constant too:
    # offline mode fails at once instead of retrying a dead network for ~50 s.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(UserError, match=r"could not be downloaded .*models\.teacher_weights=PATH"):
        get_resnet_model("resnet18", num_classes=10, pretrained=True)
