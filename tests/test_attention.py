"""ViT attention maps: real probabilities, PNG written, model left as found, memory flat."""

from __future__ import annotations

import gc
import tracemalloc

import pytest
import torch

from src.models.factory import create_model
from src.visualization.attention import (
    _last_block_attention,
    has_vit_attention,
    save_attention_maps,
    should_visualize,
)


@pytest.fixture(scope="module")
def vit() -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model("vit_tiny", num_classes=10, image_size=16)  # patch 2: 8x8 grid, 3 heads


def _images() -> torch.Tensor:
    return torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(0))


def _live_tensors() -> int:
    # type() rather than isinstance(): isinstance would touch deprecated torch proxies' __class__.
    return sum(issubclass(type(o), torch.Tensor) for o in gc.get_objects())


def _all_hooks(model: torch.nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def test_should_visualize_every_n_epochs() -> None:
    assert [e for e in range(1, 31) if should_visualize(e, 10)] == [10, 20, 30]
    assert not any(should_visualize(e, 0) for e in range(1, 31))


def test_captured_probabilities_are_the_models_own(vit) -> None:
    attn = vit.blocks[-1].attn
    expected: list[torch.Tensor] = []

    def recompute(module, args):  # explicit softmax(q k^T * scale) from the block's own input
        x = args[0]
        b, n, _ = x.shape
        q, k, _v = module.qkv(x).reshape(b, n, 3, module.num_heads, module.head_dim).permute(2, 0, 3, 1, 4)
        expected.append(((module.q_norm(q) * module.scale) @ module.k_norm(k).transpose(-2, -1)).softmax(-1))

    handle = attn.register_forward_pre_hook(recompute)
    try:
        probs = _last_block_attention(vit, _images())
    finally:
        handle.remove()
    assert probs.shape == (3, 3, 65, 65)
    torch.testing.assert_close(probs, expected[0].detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(probs.sum(-1), torch.ones(3, 3, 65))


def test_writes_png_and_leaves_the_model_as_found(vit, tmp_path) -> None:
    vit.train()
    fused_before = vit.blocks[-1].attn.fused_attn
    hooks_before = _all_hooks(vit)

    paths = save_attention_maps(vit, _images(), tmp_path / "attention", epoch=10, heads=(0, 2), max_images=2)

    assert paths == [tmp_path / "attention" / "attention_epoch010.png"]
    assert paths[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in (tmp_path / "attention").iterdir()) == ["attention_epoch010.png"]
    assert vit.training
    assert vit.blocks[-1].attn.fused_attn == fused_before
    assert _all_hooks(vit) == hooks_before == 0
    assert all(p.grad is None for p in vit.parameters())


def test_rejects_bad_heads_and_non_vit_models(vit, tmp_path) -> None:
    with pytest.raises(ValueError, match="heads"):
        save_attention_maps(vit, _images(), tmp_path, epoch=1, heads=(3,))
    resnet = create_model("resnet18", num_classes=10, image_size=16)
    with pytest.raises(TypeError, match="ViT-style attention blocks, got ResNet"):
        save_attention_maps(resnet, _images(), tmp_path, epoch=1)


@pytest.mark.parametrize(("name", "has_maps"), [("vit_tiny", True), ("deit_tiny_patch16_224", True),
                                                ("convnext_atto", False), ("resnet18", False)])
def test_maps_are_for_any_model_with_vit_attention_blocks_whatever_its_name(name: str, has_maps: bool,
                                                                          tmp_path) -> None:
    model = create_model(name, num_classes=10, image_size=16)
    assert has_vit_attention(model) is has_maps
    if has_maps:
        assert save_attention_maps(model, _images(), tmp_path, epoch=2)[0].is_file()


@pytest.mark.slow
def test_repeated_calls_keep_memory_flat(vit, tmp_path) -> None:
    save_attention_maps(vit, _images(), tmp_path, epoch=1)  # warm up matplotlib's caches
    gc.collect()
    tensors_before = _live_tensors()
    tracemalloc.start()
    try:
        baseline, _ = tracemalloc.get_traced_memory()
        for epoch in (2, 3):
            save_attention_maps(vit, _images(), tmp_path, epoch=epoch)
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - baseline
    finally:
        tracemalloc.stop()
    assert _live_tensors() == tensors_before
    assert grown < 512 * 1024, f"Python heap grew by {grown} bytes over 2 calls"


def test_works_with_gradient_checkpointing_on(vit, tmp_path) -> None:
    # ViT-Base always trains with checkpointing; the maps must still see exactly one forward.
    vit.set_grad_checkpointing(True)
    try:
        assert save_attention_maps(vit, _images(), tmp_path, epoch=20)[0].is_file()
    finally:
        vit.set_grad_checkpointing(False)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_model_with_cpu_images(tmp_path) -> None:
    model = create_model("vit_tiny", num_classes=10, image_size=16).cuda()
    assert save_attention_maps(model, _images(), tmp_path, epoch=10)[0].is_file()
    assert _all_hooks(model) == 0
