"""A dataset is one registration: a toy dataset added here, through ``DATASETS`` alone, is a
``--dataset`` choice with its own default config, flip rule and statistics, and trains through
the real command line."""
from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import yaml

from src.cli.train import build_parser, default_config_path, main
from src.config.loader import load_config
from src.config.presets import PRESETS
from src.data.build import build_datasets
from src.data.registry import DATASETS, DatasetSpec
from src.data.settings import DataConfig
from src.data.sources import ArrayReader, Source, SourcePart
from src.data.transforms import Normalize
from src.errors import UserError
from src.rundirs.inputs import stage_input

TOY = "stripes"
TOY_STATS = Normalize((0.25, 0.5, 0.75), (0.2, 0.3, 0.4))


def load_stripes(cfg: DataConfig) -> Source:
    """48 images of 8x8 px, three classes: a bright row, column or diagonal on noise."""
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 64, (48, 3, 8, 8), dtype=torch.uint8, generator=gen)
    targets = [i % 3 for i in range(48)]
    for i, label in enumerate(targets):
        if label == 0:
            images[i, :, 3, :] = 255
        elif label == 1:
            images[i, :, :, 3] = 255
        else:
            images[i, :, range(8), range(8)] = 255
    part = SourcePart(targets=targets, read=ArrayReader(images))
    return Source(TOY, ["row", "column", "diagonal"], {"all": part}, native_size=8)


@pytest.fixture
def toy() -> Iterator[str]:
    """The toy dataset, registered for one test: it starts from the digits' config."""
    DATASETS.register(TOY, DatasetSpec(load=load_stripes, hflip=False, stats=TOY_STATS, config="digits"))
    try:
        yield TOY
    finally:
        DATASETS.unregister(TOY)


def test_a_registered_dataset_is_a_choice_with_its_default_config(toy: str) -> None:
    parser = build_parser("cnn")
    assert parser.parse_args(["--dataset", TOY]).dataset == TOY
    assert default_config_path("cnn", TOY) == PRESETS["cnn"].config_path("digits")
    assert load_config(None, [f"data.name={TOY}"]).data.name == TOY


def test_the_shipped_datasets_start_from_their_configs() -> None:
    configs = {name: default_config_path("cnn", name).name for name in DATASETS}
    assert configs == {"digits": "digits.yaml", "cifar10": "cifar10.yaml", "cifar100": "cifar100.yaml",
                       "imagefolder": "cifar10.yaml"}
    assert default_config_path("vit", None) == PRESETS["vit"].config_path("digits")


def test_an_unknown_dataset_is_refused_with_the_registered_names(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(UserError) as info:
        load_config(None, ["data.name=mnist"])
    assert str(info.value) == ("config key 'data.name': unknown dataset 'mnist': "
                               "choose one of digits, cifar10, cifar100, imagefolder")
    with pytest.raises(SystemExit):
        build_parser("cnn").parse_args(["--dataset", "mnist"])
    assert "invalid choice: 'mnist' (choose from" in capsys.readouterr().err


def test_the_toy_datasets_statistics_and_flip_rule_are_used(toy: str) -> None:
    cfg = load_config(None, [f"data.name={TOY}", "data.image_size=8"])
    bundle = build_datasets(cfg.data, None, seed=0)
    assert stage_input(cfg, "student", bundle).normalize == TOY_STATS
    assert (bundle.mean, bundle.std) == (TOY_STATS.mean, TOY_STATS.std)
    assert bundle.train.model_input.augment is not None and not bundle.train.model_input.augment.hflip
    assert bundle.class_names == ["row", "column", "diagonal"]


def test_a_registration_needs_statistics() -> None:
    with pytest.raises(TypeError, match="stats"):
        DatasetSpec(load=load_stripes, hflip=True, config="digits")  # type: ignore[call-arg]
    with pytest.raises(ValueError, match="3 channel means and 3 positive stds"):
        DatasetSpec(load=load_stripes, hflip=True, stats=Normalize((0.5,), (0.5,)), config="digits")
    with pytest.raises(ValueError, match="positive stds"):
        DatasetSpec(load=load_stripes, hflip=True, stats=Normalize((0.5,) * 3, (0.5, 0.0, 0.5)),
                    config="digits")


@pytest.mark.slow
def test_a_toy_dataset_trains_through_the_command_line(toy: str, tmp_path: Path) -> None:
    out = tmp_path / "run"
    args = ["--dataset", TOY, "--output-dir", str(out), "--epochs", "1", "--batch-size", "8",
            "--device", "cpu", "--stages", "teacher", "--set", "models.teacher=resnet18",
            "--set", "report.benchmark=false"]
    assert main("cnn", args) == 0
    assert yaml.safe_load((out / "config.yaml").read_text())["data"]["name"] == TOY
    split = json.loads((out / "split.json").read_text())
    assert split["identity"]["dataset"] == TOY
    result = json.loads((out / "teacher" / "result.json").read_text())
    assert result["num_classes"] == 3 and result["image_size"] == 8  # the digits config's 8 px
