"""Training augmentation is a pure function of (seed, epoch, index) and leaves the global RNG alone."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader

from src.data.build import build_datasets
from src.data.settings import DataConfig
from src.data.transforms import Augment, Normalize


def test_items_have_the_documented_shape_at_every_size() -> None:
    for size in (8, 12, 32):
        bundle = build_datasets(DataConfig(image_size=size, subset=20), None, seed=0)
        image, label = bundle.train[(1, 3)]
        assert image.shape == (3, size, size) and image.dtype == torch.float32 and isinstance(label, int)
        assert bundle.in_channels == 3 and bundle.image_size == size
        assert bundle.test[0][0].shape == (3, size, size)


def test_native_size_without_augment_is_the_normalised_digit() -> None:
    from sklearn.datasets import load_digits

    bundle = build_datasets(DataConfig(image_size=8, augment=False), None, seed=0)
    index = bundle.test.store.indices[7]
    expected = torch.as_tensor(load_digits().images[index] / 16.0, dtype=torch.float32)
    image, label = bundle.test[7]
    restored = image * torch.tensor(bundle.std)[:, None, None] + torch.tensor(bundle.mean)[:, None, None]
    assert label == int(load_digits().target[index])
    assert torch.allclose(restored, expected.expand(3, 8, 8), atol=1 / 255)
    assert torch.equal(bundle.train[(4, 2)][0], bundle.train[2][0])  # augment off: no randomness


def test_augmentation_is_deterministic_per_key_and_changes_with_the_epoch() -> None:
    cfg = DataConfig(image_size=16, subset=30)
    a = build_datasets(cfg, None, seed=7).train
    b = build_datasets(cfg, None, seed=7).train
    torch.manual_seed(123)  # the caller's global RNG must not matter
    first = [a[(1, i)][0] for i in range(20)]
    torch.manual_seed(456)
    assert all(torch.equal(x, b[(1, i)][0]) for i, x in enumerate(first))
    changed = sum(not torch.equal(a[(2, i)][0], first[i]) for i in range(20))
    assert changed >= 15  # 25 crop offsets: a few may repeat by chance
    assert not torch.equal(build_datasets(cfg, None, seed=8).train[(1, 0)][0], first[0])


def test_getitem_leaves_the_global_rng_untouched() -> None:
    train = build_datasets(DataConfig(subset=30), None, seed=0).train
    state = torch.get_rng_state()
    for i in range(30):
        train[(3, i)]
    assert torch.equal(state, torch.get_rng_state())


def test_worker_processes_see_the_same_samples() -> None:
    train = build_datasets(DataConfig(subset=16), None, seed=1).train
    keys = [(2, i) for i in range(16)]
    in_process = torch.stack([train[k][0] for k in keys])
    loader = DataLoader(train, batch_size=4, sampler=keys, num_workers=2)
    assert torch.equal(torch.cat([images for images, _ in loader]), in_process)


def _shifts(image: torch.Tensor, pad: int) -> list[torch.Tensor]:
    padded = torch.nn.functional.pad(image, [pad] * 4)
    size = image.shape[-1]
    return [padded[:, t : t + size, s : s + size] for t in range(2 * pad + 1) for s in range(2 * pad + 1)]


def test_flip_only_where_allowed() -> None:
    image = torch.arange(3 * 8 * 8, dtype=torch.uint8).reshape(3, 8, 8)  # no symmetry
    batch = image.expand(40, -1, -1, -1)
    shifts = _shifts(image, 1)
    flipped = _shifts(image.flip(-1), 1)
    no_flip = Augment(1, hflip=False)
    assert all(any(torch.equal(out, s) for s in shifts) for out in no_flip(batch, no_flip.draws(0, 1, 40)))
    with_flip = Augment(1, hflip=True)
    out = with_flip(batch, with_flip.draws(0, 1, 40))
    assert any(any(torch.equal(o, s) for s in flipped) for o in out)
    assert any(any(torch.equal(o, s) for s in shifts) for o in out)


def test_normalize_uses_the_given_statistics() -> None:
    image = torch.full((3, 2, 2), 255, dtype=torch.uint8)
    out = Normalize((0.5, 0.5, 0.5), (0.25, 0.5, 1.0))(image)
    assert torch.allclose(out[:, 0, 0], torch.tensor([2.0, 1.0, 0.5]))
