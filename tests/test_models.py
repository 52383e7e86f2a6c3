"""The timm model factory: names, small-input adaptations, pretrained loading and its errors."""

from __future__ import annotations

import huggingface_hub.constants
import pytest
import timm
import torch
from safetensors.torch import save_file
from timm.layers import resample_patch_embed
from torch import nn

from src.config.loader import load_config
from src.config.presets import PRESETS
from src.errors import UserError
from src.models.factory import check_runs_at, count_parameters, create_model, resolve_model_name
from src.models.small_input import adapt_conv_stem
from src.models.vit_patches import default_patch_size
from src.rundirs.stage_models import build_model


@pytest.mark.parametrize("name", ["resnet18", "resnet34", "resnet50", "vit_tiny", "vit_small", "vit_base"])
def test_all_six_models_forward_at_16px(name: str) -> None:
    model = create_model(name, num_classes=10, image_size=16)
    with torch.no_grad():
        out = model.eval()(torch.randn(2, 3, 16, 16))
    assert out.shape == (2, 10)


@pytest.mark.parametrize("name", ["resnet18", "vit_tiny", "deit_tiny_patch16_224", "convnext_atto",
                                  "efficientnet_b0", "mobilenetv3_small_050"])
def test_any_timm_model_works_at_8px(name: str) -> None:
    model = create_model(name, num_classes=3, image_size=8)
    with torch.no_grad():
        assert model.eval()(torch.randn(2, 3, 8, 8)).shape == (2, 3)


# A fingerprint of build_model's initial weights for every stage of the shipped digits configs
# (seed 42, 10 classes): the float64 sum over tensors of (position + 1) * sum(|tensor|). The preset
# models must stay the same networks with the same init draws in the same order, so make run and
# make run-vit train the very same networks from one version to the next. Not a byte hash: ViT's
# truncated-normal init differs in the last bits between CPUs of the same kind (AMD and Intel
# 2-core machines give different hashes), which moves the float64 sum by rounding only, while
# other draws or another order move it by about 1 / sqrt(parameters) (>= 1e-4 here; the next test).
PRESET_FINGERPRINTS = {
    "cnn": {"teacher": (175307362.3520528, 23574015), "assistant": (70285994.73445056, 21299182),
            "student": (20406531.324286606, 11183582)},
    "vit": {"teacher": (107005455.84410688, 85105930), "assistant": (27121295.480300732, 21319306),
            "student": (6966464.098298056, 5351242)},
}


def weights_fingerprint(state: dict[str, torch.Tensor]) -> tuple[float, int]:
    """Position-weighted L1 mass and element count of a state dict (see PRESET_FINGERPRINTS)."""
    tensors = list(state.values())
    mass = sum((i + 1) * t.double().abs().sum().item() for i, t in enumerate(tensors)
               if t.is_floating_point())
    return mass, sum(t.numel() for t in tensors)


@pytest.mark.parametrize("preset", sorted(PRESET_FINGERPRINTS))
def test_the_presets_build_the_same_networks_with_the_same_init(preset: str) -> None:
    cfg = load_config(PRESETS[preset].config_path("digits"))
    for stage in ("teacher", "assistant", "student", "baseline", "direct"):
        role = "student" if stage in ("baseline", "direct") else stage
        mass, count = weights_fingerprint(build_model(cfg, stage, 10, initial=True).state_dict())
        expected_mass, expected_count = PRESET_FINGERPRINTS[preset][role]
        assert count == expected_count, stage
        assert mass == pytest.approx(expected_mass, rel=1e-6), stage


def test_the_fingerprint_tells_another_seed_apart() -> None:
    path = PRESETS["vit"].config_path("digits")
    mass, _ = weights_fingerprint(build_model(load_config(path), "student", 10, initial=True).state_dict())
    reseeded = load_config(path, overrides=["runtime.seed=43"])
    other, _ = weights_fingerprint(build_model(reseeded, "student", 10, initial=True).state_dict())
    assert other != pytest.approx(mass, rel=1e-6)


def test_a_conv_stem_gets_the_small_input_stem_by_its_metadata() -> None:
    model = create_model("resnet18", num_classes=10, image_size=32)  # 32 < 64: small by default
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1)
    assert model.conv1.out_channels == 64 and model.conv1.bias is None
    assert isinstance(model.maxpool, nn.Identity)
    # 32 px keeps a 4x4 map before pooling instead of 1x1 with the ImageNet stem.
    assert model.forward_features(torch.randn(1, 3, 32, 32)).shape[-1] == 4

    imagenet = create_model("resnet18", num_classes=10, image_size=224)
    assert imagenet.conv1.kernel_size == (7, 7) and isinstance(imagenet.maxpool, nn.MaxPool2d)

    # other stems, found through timm's first_conv: ConvNeXt's 4x4/4 patchify conv (with a bias,
    # no pool), EfficientNet's 3x3/2 conv, DenseNet's 7x7/2 conv and the max-pool after its norm
    convnext = create_model("convnext_atto", num_classes=10, image_size=16)
    assert (convnext.stem[0].kernel_size, convnext.stem[0].stride) == ((3, 3), (1, 1))
    assert convnext.stem[0].out_channels == 40 and not convnext.stem[0].bias.any()
    efficientnet = create_model("efficientnet_b0", num_classes=10, image_size=16)
    assert (efficientnet.conv_stem.kernel_size, efficientnet.conv_stem.stride) == ((3, 3), (1, 1))
    densenet = create_model("densenet121", num_classes=10, image_size=16)
    assert densenet.features.conv0.stride == (1, 1) and isinstance(densenet.features.pool0, nn.Identity)
    assert create_model("efficientnet_b0", 10, 16, small_input=False).conv_stem.stride == (2, 2)


def test_a_stem_that_cannot_be_adapted_is_a_user_error_with_the_fix() -> None:
    grouped = nn.Sequential(nn.Conv2d(3, 6, 7, stride=2, groups=3), nn.ReLU())
    with pytest.raises(UserError, match=r"cannot adapt the stem of toy .*models\.small_input=false"):
        adapt_conv_stem(grouped, "toy", "0")
    with pytest.raises(UserError, match=r"its first conv \(unknown\)"):
        adapt_conv_stem(grouped, "toy", None)


def test_a_model_that_rejects_the_image_size_is_one_user_error() -> None:
    # MLP-Mixer's token-mixing layers are built for 196 tokens: 8 px images give it 64
    mixer = create_model("mixer_s16_224", num_classes=10, image_size=8)
    with pytest.raises(UserError, match=r"model mixer_s16_224 does not run on 8x8 images .*--image-size"):
        check_runs_at(mixer, "mixer_s16_224", 8)
    resnet = create_model("resnet18", num_classes=10, image_size=8)
    before = {k: v.clone() for k, v in resnet.state_dict().items()}
    check_runs_at(resnet, "resnet18", 8)  # runs, and changes nothing (BatchNorm statistics included)
    assert resnet.training and all(torch.equal(before[k], v) for k, v in resnet.state_dict().items())


def test_vit_patch_size_follows_image_size() -> None:
    assert [default_patch_size(s) for s in (8, 16, 32, 224, 384)] == [1, 2, 4, 16, 16]
    assert 28 % default_patch_size(28) == 0  # non power-of-two sizes still get a valid patch
    model = create_model("vit_tiny", num_classes=10, image_size=32)
    assert model.patch_embed.patch_size == (4, 4) and model.patch_embed.grid_size == (8, 8)
    deit = create_model("deit_tiny_patch16_224", num_classes=10, image_size=16)  # any patch-embedding model
    assert deit.patch_embed.patch_size == (2, 2) and deit.patch_embed.grid_size == (8, 8)


def test_bad_patch_size_is_a_user_error() -> None:
    with pytest.raises(UserError, match="patch size 5 does not divide the image size 32"):
        create_model("vit_tiny", num_classes=10, image_size=32, patch_size=5)


def test_names_resolve_and_an_unknown_name_says_what_is_accepted() -> None:
    assert resolve_model_name("vit_base") == "vit_base_patch16_224"
    assert resolve_model_name("resnet50.a1_in1k") == "resnet50.a1_in1k"
    assert resolve_model_name("convnext_atto") == "convnext_atto"
    with pytest.raises(UserError, match="a timm model name .*resnet50, resnet34, resnet18, vit_base"):
        resolve_model_name("resnet9000")


def test_count_parameters_respects_trainable_only() -> None:
    model = create_model("resnet18", num_classes=10, image_size=224)
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

    model = create_model("vit_tiny", num_classes=7, image_size=16, weights_path=path)  # patch 2, 8x8 grid

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

    model = create_model("resnet18", num_classes=5, image_size=224, small_input=True, weights_path=path)

    torch.testing.assert_close(model.layer3[1].conv2.weight, source.layer3[1].conv2.weight)
    torch.testing.assert_close(model.bn1.weight, source.bn1.weight)
    assert model.fc.weight.shape == (5, 512)
    assert model.conv1.kernel_size == (3, 3)


def test_missing_weights_file_is_a_user_error(tmp_path) -> None:
    missing = tmp_path / "nope.safetensors"
    with pytest.raises(UserError, match="nope.safetensors"):
        create_model("resnet18", num_classes=10, image_size=32, weights_path=missing)


def test_weights_file_for_another_architecture_is_a_user_error(tmp_path) -> None:
    path = tmp_path / "resnet18.safetensors"
    save_file(timm.create_model("resnet18", num_classes=10).state_dict(), str(path))
    with pytest.raises(UserError, match="does not fit vit_tiny_patch16_224"):
        create_model("vit_tiny", num_classes=10, image_size=16, weights_path=path)


def test_pretrained_offline_without_file_is_a_clear_error(monkeypatch) -> None:
    # huggingface_hub reads HF_HUB_OFFLINE at import time, so patch the constant too:
    # offline mode fails at once instead of retrying a dead network for ~50 s.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(UserError, match=r"could not be downloaded .*models\.teacher_weights=PATH"):
        create_model("resnet18", num_classes=10, image_size=32, pretrained=True)
