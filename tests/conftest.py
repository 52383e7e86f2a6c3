"""Shared test set-up: skip ``gpu`` tests without CUDA (markers are declared in pyproject.toml),
give every test the ``kd_pipeline`` logger as it found it, and make the commands the tests start
(``python cnn_distillation/train.py``...) import this checkout, as the tests themselves do
(pyproject's ``pythonpath``), whatever copy of the package is installed."""
from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from fake_cuda import fake_cuda, make_fake_cuda  # noqa: F401  (fixtures: tests without a GPU run CUDA paths)

CHECKOUT = str(Path(__file__).resolve().parents[1])
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [CHECKOUT, os.environ.get("PYTHONPATH")]))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if item.get_closest_marker("gpu") is not None:
            item.add_marker(skip_gpu)


def _pipeline_logger_kept() -> Iterator[None]:
    """An in-process ``main()`` points the product's logger at the caller's captured stderr
    (``setup_logging``); what runs later must neither write there nor see its handlers."""
    logger = logging.getLogger("kd_pipeline")
    saved = (logger.handlers[:], logger.level, logger.propagate)
    yield
    for handler in logger.handlers:
        if handler not in saved[0]:
            handler.close()
    logger.handlers[:], logger.level, logger.propagate = saved


@pytest.fixture(autouse=True)
def restore_pipeline_logger() -> Iterator[None]:
    """Around every test."""
    yield from _pipeline_logger_kept()


@pytest.fixture(autouse=True, scope="module")
def restore_pipeline_logger_per_module() -> Iterator[None]:
    """Around every module too: a module-scoped fixture that runs ``main()`` (a finished run
    shared by the module's tests) is set up outside any one test's restore."""
    yield from _pipeline_logger_kept()


@pytest.fixture
def one_torch_thread() -> Iterator[None]:
    """One intra-op thread for the test, as the engine tests compare runs whose float sums must
    not depend on how a kernel split its work; the count it found comes back after."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
