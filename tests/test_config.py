"""Config loading: precedence, typed validation with messages that name the key, round trip."""
from __future__ import annotations

from pathlib import Path

import pytest

from src.config.loader import config_from_dict, dump_config, flatten, load_config, read_yaml
from src.config.schema import RunConfig
from src.config.stage_settings import stage_config
from src.errors import UserError

REPO = Path(__file__).resolve().parents[1]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


def test_precedence_defaults_yaml_flags_set(tmp_path: Path) -> None:
    path = write(tmp_path, "train:\n  lr: 0.2\n  epochs: 7\ndata:\n  image_size: 24\n")
    cfg = load_config(path, ["train.lr=0.3"], {"train.lr": 0.25, "train.epochs": 9, "data.subset": None})
    assert cfg.train.lr == 0.3  # --set wins over the flag
    assert cfg.train.epochs == 9  # flag wins over YAML
    assert cfg.data.image_size == 24  # YAML wins over defaults
    assert cfg.data.subset is None  # a flag left at None means "not given"
    assert cfg.train.batch_size == RunConfig().train.batch_size


def test_yaml_values_are_typed(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, "train:\n  lr: 1e-3\n  amp: off\n  patience: null\n"))
    assert cfg.train.lr == pytest.approx(1e-3)  # YAML 1.1 reads 1e-3 as text; still a number
    assert cfg.train.amp == "off"
    assert cfg.train.patience is None
    cfg = load_config(None, ["train.patience=none", "runtime.vram_budget_gb=4", "data.download=true"])
    assert cfg.train.patience is None and cfg.runtime.vram_budget_gb == 4.0 and cfg.data.download is True


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.lrr=1", "unknown config key 'train.lrr' (did you mean 'train.lr'?)"),
        ("train.lr=fast", "config key 'train.lr': expected a number, got 'fast'"),
        ("train.epochs=2.5", "config key 'train.epochs': expected an integer"),
        ("data.name=mnist", "config key 'data.name': unknown dataset 'mnist': choose one of digits, cifar10"),
        ("data.download=yes", "config key 'data.download': expected true or false"),
        ("stages=teacher,coach", "unknown stage 'coach'"),
        ("train.epochs=0", "config key 'train.epochs': must be at least 1"),
        ("data.image_size=4", "config key 'data.image_size': must be at least 8"),
        ("data.val_fraction=1.5", "config key 'data.val_fraction': must be between 0 and 1"),
        ("train.monitor=loss", "config key 'train.monitor'"),
        ("trainlr", "--set expects KEY=VALUE"),
    ],
)
def test_bad_values_name_the_key(override: str, message: str) -> None:
    with pytest.raises(UserError) as info:
        load_config(None, [override])
    assert message in str(info.value)


def test_unknown_key_in_yaml_file(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"unknown config key 'distillation\.temprature' \(did you mean"):
        load_config(write(tmp_path, "distillation:\n  temprature: 3\n"))
    with pytest.raises(UserError, match="config key 'train': expected a mapping"):
        load_config(write(tmp_path, "train: 5\n"))


def test_unreadable_files_are_user_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="config file not found"):
        load_config(tmp_path / "missing.yaml")
    with pytest.raises(UserError, match="not valid YAML"):
        load_config(write(tmp_path, "train: [1, 2\n"))
    with pytest.raises(UserError, match="must hold a mapping"):
        load_config(write(tmp_path, "- a\n- b\n"))


def test_stages_are_put_in_pipeline_order() -> None:
    cfg = load_config(None, ["stages=[baseline, student, teacher]"])
    assert cfg.stages == ["teacher", "student", "baseline"]


def test_dump_round_trips(tmp_path: Path) -> None:
    cfg = load_config(None, ["train.lr=0.123", "stages=teacher,direct", "data.subset=50"])
    path = tmp_path / "config.yaml"
    path.write_text(dump_config(cfg))
    again = config_from_dict(read_yaml(path))
    assert again == cfg
    assert flatten(again)["train.lr"] == 0.123


@pytest.mark.parametrize(
    "path",
    sorted(REPO.glob("*_distillation/configs/*.yaml")),
    ids=lambda p: f"{p.parent.parent.name}/{p.name}",
)
def test_shipped_configs_are_valid(path: Path) -> None:
    cfg = load_config(path)
    assert cfg.data.name == path.stem
    assert "family" not in read_yaml(path)["models"]  # a preset is a config, not a code path
    # ViT-Base always checkpoints: the ViT presets say so for their teacher stage, nobody else does
    always = [stage for stage in cfg.stages if stage_config(cfg, stage).train.grad_checkpointing == "on"]
    assert always == (["teacher"] if cfg.models.teacher == "vit_base" else [])
    assert cfg.train.grad_checkpointing == "auto"
