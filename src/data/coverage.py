"""Which classes a scored split lacks, said before anything trains.

A class with very few images can end up with none in the validation or test split. Its recall
cannot be measured there, so the macro averages run over the classes the split holds
(src/utils/metrics.py); a verdict on such a split still holds, but for fewer classes than the
data has, and the user is told which and how to fix it. A warning, not a refusal: a ``--subset``
smoke run of a many-class dataset is expected to miss some. The pipeline logs the notes once its
log file exists (pipeline.log and stderr); evaluate.py prints them too.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

from src.utils.names import readable_name

SCORED = ("val", "test")


def _count(data_counts: Mapping[int, int] | None, label: int) -> str:
    if data_counts is None:
        return ""
    count = data_counts.get(label, 0)
    return f" ({count} image{'s' if count != 1 else ''} in the data)"


def missing_class_notes(split_targets: Mapping[str, Sequence[int]], class_names: Sequence[str],
                        data_counts: Mapping[int, int] | None = None) -> list[str]:
    """One line per scored split in ``split_targets`` that lacks a class, naming each class (and its
    images in the data, with ``data_counts``)."""
    notes = []
    for split in SCORED:
        held = set(split_targets.get(split, ()))
        missing = [c for c in range(len(class_names)) if c not in held]
        if not missing or split not in split_targets:
            continue
        names = ", ".join(f"'{readable_name(class_names[c])}'{_count(data_counts, c)}" for c in missing)
        notes.append(f"the {split} split holds no image of {len(missing)} of {len(class_names)} classes: "
                     f"{names}; "
                     f"its macro averages cover the other {len(class_names) - len(missing)} classes only "
                     f"(add images of these classes, or raise data.{split}_fraction, or drop --subset)")
    return notes
