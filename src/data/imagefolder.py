"""Image folders: ``<data-dir>/{train,val,test}/<class>/<image>`` through torchvision's ImageFolder.

torchvision's own walk follows symbolic links without noticing loops (``ln -s .. train/cat/loop``
turned 40 images into 1,640 samples, dog images labelled cat) and its loader clips 16-bit images
to white and ignores EXIF orientation. The class here keeps torchvision's dataset and its sample
order, but scans folders so that every image file is counted once under the one class that holds
it, and decodes every image mode into the 8-bit RGB the models see. Anything it cannot make sense
of is a :class:`UserError` naming the file or folder and the fix, never a plausible wrong dataset.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torchvision
from PIL import Image, ImageOps
from torchvision.datasets.folder import IMG_EXTENSIONS, has_file_allowed_extension

from src.data.feed import UnreadableImage
from src.data.settings import DataConfig
from src.data.sources import Source, SourcePart, file_entries
from src.data.transforms import resize_square
from src.errors import UserError
from src.utils.names import readable_name

log = logging.getLogger("kd_pipeline.data")

# images Pillow knows that torchvision's ImageFolder does not take (GIF, ICO, ...): counted and named,
# not read, so a folder holds the same samples as torchvision's ImageFolder and its identity
OTHER_IMAGE_EXTENSIONS = tuple(sorted(ext for ext, kind in Image.registered_extensions().items()
                                      if kind in Image.OPEN and ext not in IMG_EXTENSIONS))
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")  # "I": 16-bit PNGs in older Pillow


def _hidden(name: str) -> bool:
    """Dot files and folders (``.ipynb_checkpoints``, macOS ``._x.png`` resource forks) are not data."""
    return name.startswith(".")


def _to_rgb(image: Image.Image, path: str) -> Image.Image:
    """Any Pillow mode as 8-bit RGB, keeping the picture: 16-bit grey is scaled, not clipped."""
    if image.mode in _SIXTEEN_BIT_MODES:
        values = np.asarray(image, dtype=np.int64)
        if values.size and (values.min() < 0 or values.max() > 65535):
            raise UserError(f"imagefolder: {path} holds 32-bit integer pixels outside 0..65535; "
                            "save it as an 8- or 16-bit image")
        grey = ((values * 255 + 32767) // 65535).astype(np.uint8)
        return Image.fromarray(grey).convert("RGB")
    if image.mode == "F":
        raise UserError(f"imagefolder: {path} holds floating-point pixels, whose range is unknown; "
                        "save it as an 8- or 16-bit image")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")  # what Pillow asks for before dropping a palette's alpha
    return image.convert("RGB")


def load_image(path: str) -> torch.Tensor:
    """uint8 ``[3, H, W]`` of the image at ``path``, upright as its EXIF orientation says."""
    try:
        with Image.open(path) as image:
            upright = ImageOps.exif_transpose(image)
            return torch.from_numpy(np.array(_to_rgb(upright, path))).permute(2, 0, 1).contiguous()
    except (OSError, Image.DecompressionBombError) as exc:  # unreadable, truncated, not an image
        raise UnreadableImage(f"imagefolder: cannot read image {readable_name(path)} "
                              f"({type(exc).__name__}); {UnreadableImage.FIX}") from None


@dataclass
class FolderReader:
    """Decodes and resizes images by index from a list of file paths (picklable, for workers)."""

    paths: list[str]

    def decode(self, index: int) -> None:
        """Decode one image fully, unresized: a broken file raises the UserError naming it."""
        load_image(self.paths[index])

    def __call__(self, indices: Sequence[int], size: int) -> torch.Tensor:
        images = [resize_square(load_image(self.paths[i]), size) for i in indices]
        return torch.stack(images) if images else torch.empty(0, 3, size, size, dtype=torch.uint8)


def _inside(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def _raise_unreadable(error: OSError) -> None:
    raise UserError(f"imagefolder: cannot read folder {error.filename} ({error.strerror}); "
                    "fix its permissions or remove it")


class _FolderScan:
    """The walk of one part folder (``train/``): which files each class folder holds.

    Symbolic links are followed, but never into a loop or into (or above) a class folder, and a
    folder or file reached twice counts once; one file under two classes is refused."""

    def __init__(self, directory: str | Path, classes: Sequence[str]) -> None:
        self.directory = directory
        self.root = os.path.realpath(directory)
        self.class_dirs = {name: os.path.realpath(os.path.join(directory, name)) for name in classes}
        self.owner: dict[str, str] = {}  # real file path -> the path it was first found under
        self.duplicates = 0
        self.skipped: list[str] = []  # images in a format ImageFolder does not take (GIF...)

    def _enter(self, name: str, link: str, visited: set[str]) -> bool:
        """Whether the walk of class ``name`` goes into the folder ``link``."""
        real = os.path.realpath(link)
        others = (folder for other, folder in self.class_dirs.items() if other != name)
        if (_inside(self.root, real) or any(_inside(folder, real) for folder in self.class_dirs.values())
                or any(_inside(real, folder) for folder in others)):
            raise UserError(f"imagefolder: {link} leads to {real}, a folder that holds or belongs to "
                            f"class folders of {self.directory} (a loop, or another class's images); "
                            "remove that link")
        if real in visited:
            return False
        visited.add(real)
        return True

    def _folders(self, name: str) -> list[tuple[str, list[str]]]:
        top = os.path.join(self.directory, name)
        visited = {self.class_dirs[name]}
        found = []
        for folder, subfolders, files in os.walk(top, followlinks=True, onerror=_raise_unreadable):
            subfolders[:] = [sub for sub in subfolders
                             if not _hidden(sub) and self._enter(name, os.path.join(folder, sub), visited)]
            found.append((folder, sorted(file for file in files if not _hidden(file))))
        return sorted(found)  # torchvision's order

    def images(self, name: str) -> list[tuple[str, str]]:
        """The image files of class ``name`` as ``(path, real path)``, each real file once."""
        top = os.path.join(self.directory, name)
        paths, skipped = [], 0
        for folder, files in self._folders(name):
            for path in (os.path.join(folder, file) for file in files):
                if not has_file_allowed_extension(path, IMG_EXTENSIONS):
                    if has_file_allowed_extension(path, OTHER_IMAGE_EXTENSIONS):
                        self.skipped.append(path)
                        skipped += 1
                    continue
                real = os.path.realpath(path)
                first = self.owner.setdefault(real, path)
                if first == path:
                    paths.append((path, real))
                elif _inside(first, top):
                    self.duplicates += 1
                else:
                    raise UserError(f"imagefolder: {path} and {first} are the same file in two class "
                                    "folders; remove the one with the wrong label")
        if not paths and skipped:
            raise UserError(f"imagefolder: class folder {readable_name(top)} holds only {skipped} image(s) "
                            f"in formats ImageFolder does not take (e.g. {readable_name(self.skipped[-1])}); "
                            f"convert them to PNG (e.g. mogrify -format png *.gif) or remove the folder")
        if not paths:
            raise UserError(f"imagefolder: class folder {readable_name(top)} holds no images "
                            f"({', '.join(IMG_EXTENSIONS)}); add images or remove the folder")
        return paths


class ScannedImageFolder(torchvision.datasets.ImageFolder):
    """torchvision's ImageFolder (same samples, same order) over a strict scan: hidden entries
    skipped, symbolic links never followed into a loop or another class (:class:`_FolderScan`).

    ``real_paths[i]`` is the resolved path of ``samples[i]``, kept from the scan so that checks
    across parts need not resolve every file again (about 30 us a file)."""

    real_paths: list[str]

    def find_classes(self, directory: str | Path) -> tuple[list[str], dict[str, int]]:
        classes = sorted(e.name for e in os.scandir(directory) if e.is_dir() and not _hidden(e.name))
        if not classes:
            raise UserError(f"imagefolder: no class folders in {directory}; "
                            f"expected {directory}/<class>/<image>")
        shown: dict[str, str] = {}
        for name in classes:
            first = shown.setdefault(readable_name(name), name)
            if first != name:
                raise UserError(f"imagefolder: the class folders {first!r} and {name!r} of {directory} "
                                f"read the same ({readable_name(name)}) once non-UTF-8 bytes are shown as "
                                "\\xNN; rename one of them")
        return classes, {name: i for i, name in enumerate(classes)}

    def make_dataset(self, directory: str | Path, class_to_idx: dict[str, int],  # type: ignore[override]
                     extensions: Any = None, is_valid_file: Any = None,
                     allow_empty: bool = False) -> list[tuple[str, int]]:
        scan = _FolderScan(directory, list(class_to_idx))
        found = [(path, real, class_to_idx[name]) for name in sorted(class_to_idx)
                 for path, real in scan.images(name)]
        if scan.skipped:
            shown = ", ".join(readable_name(path) for path in scan.skipped[:5])
            log.warning("imagefolder: %d image(s) under %s are in formats ImageFolder does not take and are "
                        "skipped (%s%s); convert them to PNG to use them", len(scan.skipped),
                        readable_name(str(directory)), shown, ", ..." if len(scan.skipped) > 5 else "")
        if scan.duplicates:
            log.warning("imagefolder: %d files under %s were reached twice through symbolic links; "
                        "each is counted once", scan.duplicates, directory)
        self.real_paths = [real for _, real, _ in found]
        return [(path, label) for path, _, label in found]


def load_imagefolder_source(cfg: DataConfig) -> Source:
    """``train/`` (required) and optional ``val/``, ``test/`` class folders under ``cfg.data_dir``."""
    root = Path(cfg.data_dir)
    if not (root / "train").is_dir():
        raise UserError(
            f"imagefolder: no train/ folder under {root} (looked for {root / 'train'}); "
            "expected <data-dir>/train/<class>/<image> (val/ and test/ optional)"
        )
    folders: dict[str, ScannedImageFolder] = {}
    for part_name in ("train", "val", "test"):
        if (root / part_name).is_dir():
            try:
                folders[part_name] = ScannedImageFolder(str(root / part_name))
            except OSError as exc:
                raise UserError(f"imagefolder: cannot read {root / part_name}: {exc}") from exc
    classes = folders["train"].classes
    if len(classes) < 2:
        raise UserError(f"imagefolder: {root / 'train'} has one class folder ({classes[0]}); a classifier "
                        "needs at least two: add a folder of images for every class")
    for part_name, folder in folders.items():
        if folder.classes != classes:
            raise UserError(
                f"imagefolder: the classes of {root / part_name} ({', '.join(folder.classes)}) "
                f"differ from those of {root / 'train'} ({', '.join(classes)})"
            )
    _refuse_shared_files(folders)
    readers = {name: FolderReader([p for p, _ in folder.samples]) for name, folder in folders.items()}
    parts = {name: SourcePart(targets=list(folder.targets), read=readers[name], decode=readers[name].decode)
             for name, folder in folders.items()}
    files = {name: file_entries(root, [p for p, _ in folder.samples]) for name, folder in folders.items()}
    return Source(cfg.name, list(classes), parts, files=files)


def _refuse_shared_files(folders: dict[str, ScannedImageFolder]) -> None:
    """One file in two parts (through a link) would test the model on an image it trained on."""
    seen: dict[str, str] = {}
    for folder in folders.values():
        for (path, _), real in zip(folder.samples, folder.real_paths, strict=True):
            first = seen.setdefault(real, path)
            if first != path:
                raise UserError(f"imagefolder: {path} and {first} are the same file in two of train/, "
                                "val/ and test/; keep it in one of them")
