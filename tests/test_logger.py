"""epochs.csv keeps its schema through writes, crashes and resumes; logging is set up once."""
from __future__ import annotations

import logging
import math

import pandas as pd
import pytest

from src.errors import UserError
from src.utils.logger import REQUIRED_COLUMNS, EpochLogger, SchemaError, setup_logging

EXPECTED = [
    "epoch", "train_loss", "train_accuracy", "train_precision", "train_recall", "train_f1_score",
    "val_loss", "val_accuracy", "val_precision", "val_recall", "val_f1_score",
    "learning_rate", "epoch_time_sec", "gpu_memory_mb",
]  # fmt: skip


def make_row(epoch: int, gpu: float | None = None) -> dict:
    row = {column: 0.5 + epoch / 100 for column in REQUIRED_COLUMNS}
    row.update(epoch=epoch, learning_rate=1e-05, epoch_time_sec=12, gpu_memory_mb=gpu)
    return row


def test_required_columns_are_the_contract():
    assert isinstance(REQUIRED_COLUMNS, tuple)
    assert list(REQUIRED_COLUMNS) == EXPECTED


def test_new_file_has_header_and_rows_round_trip(tmp_path):
    path = tmp_path / "stage" / "epochs.csv"
    logger = EpochLogger(path)
    assert path.read_text().strip() == ",".join(EXPECTED)
    logger.log(make_row(1))
    logger.log(make_row(2, gpu=1234.5))
    frame = pd.read_csv(path)
    assert list(frame.columns) == EXPECTED
    assert frame["epoch"].tolist() == [1, 2]
    assert math.isnan(frame.loc[0, "gpu_memory_mb"]) and frame.loc[1, "gpu_memory_mb"] == 1234.5
    assert frame.loc[1, "learning_rate"] == 1e-05
    assert logger.rows[1] == make_row(2, gpu=1234.5)
    assert EpochLogger(path, resume_from_epoch=2).rows == logger.rows
    assert [p.name for p in path.parent.iterdir()] == ["epochs.csv"]  # no temp files left


def test_resume_drops_rows_after_the_checkpoint(tmp_path):
    path = tmp_path / "epochs.csv"
    logger = EpochLogger(path)
    for epoch in (1, 2, 3):
        logger.log(make_row(epoch))
    # crash after epoch 3's row was written but before its checkpoint: resume from epoch 2
    resumed = EpochLogger(path, resume_from_epoch=2)
    assert [r["epoch"] for r in resumed.rows] == [1, 2]
    assert pd.read_csv(path)["epoch"].tolist() == [1, 2]
    resumed.log(make_row(3))
    assert pd.read_csv(path)["epoch"].tolist() == [1, 2, 3]
    assert EpochLogger(path).rows == []  # a fresh start (resume_from_epoch=0) keeps nothing


def test_resume_beyond_the_file_is_refused(tmp_path):
    path = tmp_path / "epochs.csv"
    EpochLogger(path).log(make_row(1))
    with pytest.raises(UserError, match="holds epochs \\[1\\], expected 1..3"):
        EpochLogger(path, resume_from_epoch=3)
    with pytest.raises(UserError, match="missing"):
        EpochLogger(tmp_path / "absent.csv", resume_from_epoch=2)


@pytest.mark.parametrize(
    ("header", "fragment"),
    [
        (EXPECTED[:-1], "missing ['gpu_memory_mb']"),
        ([*EXPECTED, "notes"], "extra ['notes']"),
        ([EXPECTED[1], EXPECTED[0], *EXPECTED[2:]], "misordered"),
    ],
)
def test_existing_file_with_wrong_header_is_refused(tmp_path, header, fragment):
    path = tmp_path / "epochs.csv"
    path.write_text(",".join(header) + "\n")
    with pytest.raises(SchemaError) as info:
        EpochLogger(path, resume_from_epoch=0)
    assert fragment in str(info.value)
    assert isinstance(info.value, UserError) and isinstance(info.value, ValueError)
    assert path.read_text() == ",".join(header) + "\n"  # the user's file is left as it was


def test_rows_with_wrong_columns_are_refused(tmp_path):
    logger = EpochLogger(tmp_path / "epochs.csv")
    row = make_row(1)
    reordered = {k: row[k] for k in [EXPECTED[0], EXPECTED[2], EXPECTED[1], *EXPECTED[3:]]}
    missing = {k: v for k, v in row.items() if k != "val_f1_score"}
    extra = {**row, "notes": 1.0}
    with pytest.raises(SchemaError, match="misordered"):
        logger.log(reordered)
    with pytest.raises(SchemaError, match="missing \\['val_f1_score'\\]"):
        logger.log(missing)
    with pytest.raises(SchemaError, match="extra \\['notes'\\]"):
        logger.log(extra)
    assert logger.rows == []
    assert len(pd.read_csv(tmp_path / "epochs.csv")) == 0


@pytest.mark.parametrize(
    ("column", "value"),
    [
        ("train_accuracy", float("nan")),
        ("learning_rate", float("inf")),
        ("val_accuracy", "0.9"),
        ("learning_rate", None),
        ("train_f1_score", True),
        ("epoch", 1.5),
    ],
)
def test_bad_values_are_refused(tmp_path, column, value):
    logger = EpochLogger(tmp_path / "epochs.csv")
    row = make_row(1)
    row[column] = value
    with pytest.raises(SchemaError, match=column):
        logger.log(row)


def test_epochs_must_follow_each_other_from_one(tmp_path):
    logger = EpochLogger(tmp_path / "epochs.csv")
    with pytest.raises(ValueError, match="expected epoch 1"):
        logger.log(make_row(2))
    logger.log(make_row(1))
    with pytest.raises(ValueError, match="expected epoch 2"):
        logger.log(make_row(1))
    assert logger.last_epoch == 1


def test_damaged_row_is_reported(tmp_path):
    path = tmp_path / "epochs.csv"
    path.write_text(",".join(EXPECTED) + "\n1,0.5\n")
    with pytest.raises(SchemaError, match="line 2 has 2 cells"):
        EpochLogger(path, resume_from_epoch=1)


@pytest.fixture
def clean_pipeline_logger():
    logger = logging.getLogger("kd_pipeline")
    saved = (logger.handlers[:], logger.level, logger.propagate)
    yield logger
    for handler in logger.handlers:
        if handler not in saved[0]:
            handler.close()
    logger.handlers[:], logger.level, logger.propagate = saved[0], saved[1], saved[2]


def test_setup_logging_is_idempotent_and_writes_one_format(tmp_path, capsys, clean_pipeline_logger):
    log_file = tmp_path / "run" / "pipeline.log"
    setup_logging(log_file)
    logger = setup_logging(log_file)
    assert logger is clean_pipeline_logger
    assert len(logger.handlers) == 2
    logging.getLogger("kd_pipeline.stage").info("teacher epoch 1 done")
    for handler in logger.handlers:
        handler.flush()
    file_lines = log_file.read_text().splitlines()
    assert len(file_lines) == 1 and file_lines[0].endswith("INFO    kd_pipeline.stage: teacher epoch 1 done")
    err = capsys.readouterr().err
    assert err.count("teacher epoch 1 done") == 1
    setup_logging(None, level=logging.WARNING)
    assert len(logger.handlers) == 1 and logger.level == logging.WARNING


def test_non_finite_losses_are_recorded_as_they_were(tmp_path):
    path = tmp_path / "epochs.csv"
    row = make_row(1)
    row.update(train_loss=float("nan"), val_loss=float("inf"))
    EpochLogger(path).log(row)
    frame = pd.read_csv(path)
    assert math.isnan(frame.loc[0, "train_loss"]) and frame.loc[0, "val_loss"] == math.inf
    reread = EpochLogger(path, resume_from_epoch=1).rows[0]
    assert math.isnan(reread["train_loss"]) and reread["val_loss"] == math.inf


def test_every_product_logger_writes_to_pipeline_log(tmp_path, clean_pipeline_logger):
    """Loggers named after their module (``src.engine.checkpoint``) sat outside the
    ``kd_pipeline`` hierarchy, so their warnings never reached pipeline.log."""
    import importlib
    import pkgutil

    import torch

    import src
    from src.data.split import _carve
    from src.engine.checkpoint import CheckpointStore

    for module in pkgutil.walk_packages(src.__path__, "src."):
        importlib.import_module(module.name)
    outside = [name for name in logging.root.manager.loggerDict if name.split(".")[0] == "src"]
    assert outside == []

    log_file = tmp_path / "pipeline.log"
    setup_logging(log_file)
    store = CheckpointStore(tmp_path / "stage")
    store.save_latest({"model": {"w": torch.zeros(1)}, "tag": 1})
    store.save_latest({"model": {"w": torch.zeros(1)}, "tag": 2})
    store.latest_path.write_bytes(b"damaged")
    assert store.load_latest()[0]["tag"] == 1
    _carve(list(range(5)), [0, 0, 0, 0, 1], 2, seed=0)  # one sample of class 1: cannot stratify
    for handler in clean_pipeline_logger.handlers:
        handler.flush()
    text = log_file.read_text()
    assert "WARNING kd_pipeline.checkpoint: checkpoint" in text and "trying checkpoint_previous.pt" in text
    assert "WARNING kd_pipeline.data: cannot stratify 5 samples" in text
