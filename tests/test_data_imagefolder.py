"""Image folders through torchvision's ImageFolder: carved or given val/test, class checks, pixels."""

from __future__ import annotations

import dataclasses
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from src.cli.train import main
from src.data.build import build_datasets
from src.data.imagefolder import ScannedImageFolder, load_image
from src.data.settings import DataConfig
from src.errors import UserError

COLOURS = {"cat": (200, 30, 30), "dog": (30, 200, 30), "fox": (30, 30, 200)}


def write_class_folders(root: Path, part: str, per_class: int, classes=tuple(COLOURS)) -> None:
    for name in classes:
        folder = root / part / name
        folder.mkdir(parents=True)
        for i in range(per_class):
            Image.new("RGB", (14, 10), COLOURS[name]).save(folder / f"{i}.png")  # not square


def _denormalise(image: torch.Tensor, bundle) -> torch.Tensor:
    return image * torch.tensor(bundle.std)[:, None, None] + torch.tensor(bundle.mean)[:, None, None]


def test_train_only_carves_stratified_val_and_test(tmp_path: Path) -> None:
    write_class_folders(tmp_path, "train", 10)
    cfg = DataConfig(
        name="imagefolder", data_dir=str(tmp_path), image_size=8, val_fraction=0.2, test_fraction=0.2
    )
    bundle = build_datasets(cfg, tmp_path / "run", seed=0)
    assert bundle.class_names == ["cat", "dog", "fox"]
    assert (len(bundle.train), len(bundle.val), len(bundle.test)) == (18, 6, 6)
    assert Counter(bundle.val.targets) == Counter(bundle.test.targets) == {0: 2, 1: 2, 2: 2}
    parts = [set(getattr(bundle, n).store.indices) for n in ("train", "val", "test")]
    assert set.union(*parts) == set(range(30)) and sum(map(len, parts)) == 30
    image, label = bundle.test[0]
    assert image.shape == (3, 8, 8)
    colour = torch.tensor(COLOURS[bundle.class_names[label]], dtype=torch.float32)[:, None, None] / 255
    assert torch.allclose(_denormalise(image, bundle), colour.expand(3, 8, 8), atol=1 / 255 + 1e-6)


def test_given_val_and_test_folders_are_used_whole(tmp_path: Path) -> None:
    write_class_folders(tmp_path, "train", 4)
    write_class_folders(tmp_path, "val", 2)
    write_class_folders(tmp_path, "test", 3)
    cfg = DataConfig(name="imagefolder", data_dir=str(tmp_path), image_size=12, augment=True)
    cached = build_datasets(cfg, None, seed=0)
    assert (len(cached.train), len(cached.val), len(cached.test)) == (12, 6, 9)
    assert cached.train.store.resident
    lazy = build_datasets(dataclasses.replace(cfg, device_cache_gb=0), None, seed=0)  # decoded per item
    assert not lazy.train.store.resident
    assert torch.equal(lazy.train[(2, 5)][0], cached.train[(2, 5)][0])
    assert torch.equal(lazy.test[8][0], cached.test[8][0])


def test_only_test_folder_given_carves_val_from_train(tmp_path: Path) -> None:
    write_class_folders(tmp_path, "train", 10)
    write_class_folders(tmp_path, "test", 1)
    cfg = DataConfig(name="imagefolder", data_dir=str(tmp_path), image_size=8, val_fraction=0.2)
    bundle = build_datasets(cfg, None, seed=0)
    assert (len(bundle.train), len(bundle.val), len(bundle.test)) == (24, 6, 3)


def test_class_mismatch_between_folders_is_a_user_error(tmp_path: Path) -> None:
    write_class_folders(tmp_path, "train", 2)
    write_class_folders(tmp_path, "val", 2, classes=("cat", "dog"))
    with pytest.raises(UserError, match=r"classes of .*val \(cat, dog\) differ"):
        build_datasets(DataConfig(name="imagefolder", data_dir=str(tmp_path)), None, seed=0)


def test_missing_train_folder_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"no train/ folder under .*looked for .*train"):
        build_datasets(DataConfig(name="imagefolder", data_dir=str(tmp_path)), None, seed=0)


# ---------------------------------------------------------------- faults that gave plausible wrong data


def _train_colours(bundle) -> list[tuple[int, tuple[float, ...]]]:
    """(label, mean colour in 0..255) of every training image, unaugmented."""
    out = []
    for i in range(len(bundle.train)):
        image, label = bundle.train[i]
        colour = _denormalise(image, bundle).mean(dim=(1, 2)) * 255
        out.append((label, tuple(round(c) for c in colour.tolist())))
    return out


def test_a_symlink_loop_is_refused_instead_of_multiplying_the_images(tmp_path: Path) -> None:
    write_class_folders(tmp_path, "train", 4, classes=("cat", "dog"))
    (tmp_path / "train" / "cat" / "loop").symlink_to("..")  # what `ln -s .. train/cat/loop` makes
    cfg = DataConfig(name="imagefolder", data_dir=str(tmp_path), image_size=8, val_fraction=0.25,
                     test_fraction=0.25)
    with pytest.raises(UserError, match=r"train/cat/loop leads to .*train.*remove that link"):
        build_datasets(cfg, None, seed=0)
    (tmp_path / "train" / "cat" / "loop").unlink()
    (tmp_path / "train" / "cat" / "self").symlink_to(".")  # a loop onto its own class folder
    with pytest.raises(UserError, match="self leads to"):
        build_datasets(cfg, None, seed=0)


def test_a_link_into_another_class_folder_is_refused(tmp_path: Path) -> None:
    write_class_folders(tmp_path, "train", 4, classes=("cat", "dog"))
    (tmp_path / "train" / "dog" / "sub").mkdir()
    (tmp_path / "train" / "cat" / "dogs").symlink_to(tmp_path / "train" / "dog" / "sub")
    with pytest.raises(UserError, match="another class"):
        build_datasets(DataConfig(name="imagefolder", data_dir=str(tmp_path)), None, seed=0)


def test_linked_folders_and_files_outside_the_class_are_used_once(tmp_path: Path) -> None:
    write_class_folders(tmp_path, "train", 4, classes=("cat", "dog"))
    extra = tmp_path / "elsewhere"
    extra.mkdir()
    Image.new("RGB", (9, 9), COLOURS["cat"]).save(extra / "more.png")
    (tmp_path / "train" / "cat" / "extra").symlink_to(extra)  # a legitimate linked folder
    (tmp_path / "train" / "cat" / "again").symlink_to(extra)  # the same folder a second time
    (tmp_path / "train" / "cat" / "copy.png").symlink_to(tmp_path / "train" / "cat" / "0.png")
    cfg = DataConfig(name="imagefolder", data_dir=str(tmp_path), image_size=8, val_fraction=0.2,
                     test_fraction=0.2)
    bundle = build_datasets(cfg, None, seed=0)
    assert len(bundle.train) + len(bundle.val) + len(bundle.test) == 9  # 8 + more.png, each once


def test_one_file_under_two_labels_or_in_two_parts_is_refused(tmp_path: Path) -> None:
    write_class_folders(tmp_path, "train", 4, classes=("cat", "dog"))
    (tmp_path / "train" / "dog" / "odd.png").symlink_to(tmp_path / "train" / "cat" / "1.png")
    with pytest.raises(UserError, match=r"dog/odd.png and .*cat/1.png are the same file in two class"):
        build_datasets(DataConfig(name="imagefolder", data_dir=str(tmp_path)), None, seed=0)
    (tmp_path / "train" / "dog" / "odd.png").unlink()
    write_class_folders(tmp_path, "test", 1, classes=("cat", "dog"))
    (tmp_path / "test" / "cat" / "0.png").unlink()
    (tmp_path / "test" / "cat" / "0.png").symlink_to(tmp_path / "train" / "cat" / "3.png")
    with pytest.raises(UserError, match="same file in two of train/, val/ and test/"):
        build_datasets(DataConfig(name="imagefolder", data_dir=str(tmp_path)), None, seed=0)


def test_sixteen_bit_grey_pngs_keep_their_values(tmp_path: Path) -> None:
    for name, level in (("dark", 10_000), ("light", 50_000)):
        folder = tmp_path / "train" / name
        folder.mkdir(parents=True)
        for i in range(4):
            Image.fromarray(np.full((6, 6), level, dtype=np.uint16)).save(folder / f"{i}.png")
        assert Image.open(folder / "0.png").mode == "I;16"
    cfg = DataConfig(name="imagefolder", data_dir=str(tmp_path), image_size=8, augment=False,
                     val_fraction=0.25, test_fraction=0.25)
    bundle = build_datasets(cfg, None, seed=0)
    expected = {0: round(10_000 / 257), 1: round(50_000 / 257)}  # dark: 39, light: 195, not 255
    assert {label: colour for label, colour in _train_colours(bundle)} == {
        label: (value,) * 3 for label, value in expected.items()}


def test_a_single_class_folder_is_a_user_error(tmp_path: Path) -> None:
    write_class_folders(tmp_path, "train", 6, classes=("cat",))
    with pytest.raises(UserError, match=r"one class folder \(cat\); a classifier needs at least two"):
        build_datasets(DataConfig(name="imagefolder", data_dir=str(tmp_path)), None, seed=0)


def test_single_class_folder_exits_2_with_one_error_line(tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    write_class_folders(tmp_path, "train", 6, classes=("cat",))
    code = main("cnn", ["--dataset", "imagefolder", "--data-dir", str(tmp_path), "--output-dir",
                        str(tmp_path / "run"), "--epochs", "1", "--set", "train.warmup_epochs=0"])
    assert code == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"error: imagefolder: {tmp_path / 'train'} has one class folder (cat); a classifier needs at least "
        "two: add a folder of images for every class"]
    assert not (tmp_path / "run" / "split.json").exists()


# ---------------------------------------------------------------- siblings: other modes and folder contents


def _save_modes(folder: Path) -> dict[str, tuple[int, int, int]]:
    """One image per Pillow mode, and the 8-bit RGB colour each must load as."""
    folder.mkdir(parents=True)
    palette = Image.new("P", (6, 6), 1)
    palette.putpalette([0, 0, 0, 200, 30, 30] + [0] * 762)
    palette.info["transparency"] = 0
    images = {
        "palette.png": (palette, (200, 30, 30)),
        "grey_alpha.png": (Image.new("LA", (6, 6), (90, 128)), (90, 90, 90)),
        "cmyk.jpg": (Image.new("CMYK", (6, 6), (0, 0, 0, 0)), (255, 255, 255)),
        "bilevel.png": (Image.new("1", (6, 6), 1), (255, 255, 255)),
        "rgba.png": (Image.new("RGBA", (6, 6), (30, 200, 30, 255)), (30, 200, 30)),
        "grey32.tif": (Image.fromarray(np.full((6, 6), 40_000, dtype=np.int32)), (156, 156, 156)),
    }
    for name, (image, _) in images.items():
        image.save(folder / name)
    return {name: colour for name, (_, colour) in images.items()}


def test_every_image_mode_loads_as_its_rgb_colour(tmp_path: Path) -> None:
    expected = _save_modes(tmp_path / "modes")
    for name, colour in expected.items():
        pixels = load_image(str(tmp_path / "modes" / name))
        assert pixels.shape == (3, 6, 6) and pixels.dtype == torch.uint8
        assert pixels[:, 0, 0].tolist() == list(colour), name


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    image = Image.new("RGB", (4, 2), (0, 0, 0))
    image.putpixel((0, 0), (255, 255, 255))  # top-left white
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display": phones write this instead of rotating the pixels
    image.save(tmp_path / "phone.png", exif=exif)
    upright = load_image(str(tmp_path / "phone.png"))
    assert upright.shape == (3, 4, 2)  # displayed portrait
    assert upright[:, 0, 1].tolist() == [255, 255, 255]  # the white corner is now top-right


def test_float_pixels_and_out_of_range_integers_are_refused(tmp_path: Path) -> None:
    Image.fromarray(np.full((4, 4), 0.5, dtype=np.float32)).save(tmp_path / "float.tif")
    Image.fromarray(np.full((4, 4), 70_000, dtype=np.int32)).save(tmp_path / "big.tif")
    with pytest.raises(UserError, match=r"float.tif holds floating-point pixels.*8- or 16-bit"):
        load_image(str(tmp_path / "float.tif"))
    with pytest.raises(UserError, match=r"big.tif holds 32-bit integer pixels outside 0..65535"):
        load_image(str(tmp_path / "big.tif"))


def test_hidden_entries_and_non_images_are_not_data(tmp_path: Path) -> None:
    write_class_folders(tmp_path, "train", 4, classes=("cat", "dog"))
    (tmp_path / "train" / ".ipynb_checkpoints").mkdir()  # not a class
    (tmp_path / "train" / "cat" / "._0.png").write_bytes(b"\x00\x05\x16\x07 resource fork")  # macOS copy
    (tmp_path / "train" / "cat" / ".cache").mkdir()
    Image.new("RGB", (4, 4)).save(tmp_path / "train" / "cat" / ".cache" / "thumb.png")
    (tmp_path / "train" / "dog" / "notes.txt").write_text("not an image")
    bundle = build_datasets(DataConfig(name="imagefolder", data_dir=str(tmp_path), val_fraction=0.25,
                                       test_fraction=0.25), None, seed=0)
    assert bundle.class_names == ["cat", "dog"]
    assert len(bundle.train) + len(bundle.val) + len(bundle.test) == 8


def test_an_empty_class_folder_says_which_and_what_to_do(tmp_path: Path) -> None:
    write_class_folders(tmp_path, "train", 4, classes=("cat", "dog"))
    (tmp_path / "train" / "eel").mkdir()
    (tmp_path / "train" / "eel" / "readme.txt").write_text("todo")
    with pytest.raises(UserError, match=r"class folder .*train/eel holds no images .*add images or remove"):
        build_datasets(DataConfig(name="imagefolder", data_dir=str(tmp_path)), None, seed=0)


def test_an_ordinary_folder_gives_torchvisions_samples_in_its_order(tmp_path: Path) -> None:
    """Existing runs' split.json files index into this list: it must not move."""
    write_class_folders(tmp_path, "train", 3)
    for name in ("b_nested", "a_nested"):
        (tmp_path / "train" / "dog" / name).mkdir()
        Image.new("RGB", (5, 5)).save(tmp_path / "train" / "dog" / name / "z.png")
    ours = ScannedImageFolder(str(tmp_path / "train"))
    theirs = torchvision.datasets.ImageFolder(str(tmp_path / "train"))
    assert ours.samples == theirs.samples and ours.classes == theirs.classes
