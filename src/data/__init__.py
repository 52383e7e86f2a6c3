"""Datasets, persisted splits and transforms."""

from __future__ import annotations

from src.data.build import DataBundle, build_datasets
from src.data.split import SplitInfo

__all__ = ["DataBundle", "SplitInfo", "build_datasets"]
