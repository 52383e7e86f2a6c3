"""Which changes of the config a run directory accepts, key by key and stage by stage.

The one source of truth for the pipeline's dotted keys. ``train.*`` keys take their rule from
the engine's ``ENGINE_RULES`` (src/engine/resume_rules.py), which its checkpoint check applies too, so
the two checks cannot disagree. A key affects the stages whose results it changes, plus every
stage that distils (directly or through another stage) from one of those; a key of one stage
(``stage_overrides.<stage>.<train key>``) affects that stage and its dependents only.

Kinds: ``free`` keys never matter; ``data_split`` keys made split.json and break once it
exists; ``training`` keys break for every affected stage that holds trained state;
``recovery`` keys (lr, grad_clip, amp) behave like ``training`` except after a divergence;
``batch_split`` keys are free while the effective batch stays; ``warmup_share`` (the warm-up)
is free while it keeps its share of the epochs, as a warm-up fitted to ``--epochs`` does.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from src.config.loader import flatten
from src.config.schema import RunConfig
from src.config.stage_overrides import PREFIX as STAGE_OVERRIDES
from src.config.stages import KD_STAGES, ROLES, STAGES
from src.engine.resume_rules import (
    BATCH_SPLIT,
    ENGINE_RULES,
    FREE,
    RECOVERY,
    TRAINING,
    WARMUP_SHARE,
    effective_batch,
    same_warmup_share,
)

Kind = Literal["free", "data_split", "batch_split", "warmup_share", "recovery", "training"]
StageStatus = Literal["fresh", "trained", "diverged", "finished"]  # see RunDirectory.stage_status
# least to most advanced: a stage's status over several seeds' chains is the most advanced one
STATUS_ORDER: tuple[StageStatus, ...] = ("fresh", "diverged", "trained", "finished")
DATA_SPLIT: Kind = "data_split"

FREE_KEYS = frozenset({
    "stages", "data.download", "data.data_dir",  # a moved dataset is the same data: split.json checks it
    "data.device_cache_gb",  # where the same images are kept, not which
    "runtime.device", "runtime.vram_budget_gb", "runtime.attention_every", "runtime.deterministic",
    "runtime.compile",  # how the same arithmetic is launched, not what is trained
    "runtime.seeds",  # each seed's chain keeps its own folder: adding a seed leaves the others as they are
    "report.benchmark",  # what the report measures after training, never what was trained
})
SPLIT_KEYS = frozenset({"data.name", "data.val_fraction", "data.test_fraction", "data.subset",
                        "runtime.seed"})
# a role's architecture and input size: the stages of that role and those distilled from them
ROLE_KEYS = {key: role for role in ROLES for key in (f"models.{role}", f"models.image_size.{role}")}
TEACHER_ONLY_KEYS = frozenset({"models.pretrained", "models.teacher_weights"})  # the teacher's start


@dataclass(frozen=True)
class KeyRule:
    """How a change of one key is judged, and which stages' results depend on it."""

    kind: Kind
    stages: tuple[str, ...]


def with_dependents(stages: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """``stages`` and every stage that distils from one of them, directly or not, in pipeline order."""
    chosen = set(stages)
    for name, spec in STAGES.items():  # pipeline order: a teacher always comes before its students
        if spec.teacher_stage in chosen:
            chosen.add(name)
    return tuple(name for name in STAGES if name in chosen)


def key_rule(key: str) -> KeyRule:
    """The rule for dotted config ``key`` (keys the table does not know are ``training`` for all)."""
    every = tuple(STAGES)
    if key in FREE_KEYS:
        return KeyRule(FREE, every)
    if key in SPLIT_KEYS:
        return KeyRule(DATA_SPLIT, every)
    if key.startswith("train."):
        return KeyRule(ENGINE_RULES.get(key.removeprefix("train."), TRAINING), every)
    if key.startswith(STAGE_OVERRIDES):
        stage, _, field = key.removeprefix(STAGE_OVERRIDES).partition(".")
        scope = [stage] if stage in STAGES else every
        return KeyRule(ENGINE_RULES.get(field, TRAINING), with_dependents(scope))
    if key in ROLE_KEYS:
        trained_by_role = [s for s, spec in STAGES.items() if spec.role == ROLE_KEYS[key]]
        return KeyRule(TRAINING, with_dependents(trained_by_role))
    if key in TEACHER_ONLY_KEYS:
        return KeyRule(TRAINING, with_dependents(["teacher"]))
    if key.startswith("distillation."):
        return KeyRule(TRAINING, KD_STAGES)
    return KeyRule(TRAINING, every)


def _train_settings(flat: dict[str, Any], key: str) -> dict[str, Any]:
    """The train settings ``key`` belongs to: ``train.*``, with the stage's own overrides laid
    on top for a ``stage_overrides.<stage>.*`` key (what that stage trains with: stage_config)."""
    settings = {k.removeprefix("train."): v for k, v in flat.items() if k.startswith("train.")}
    if key.startswith(STAGE_OVERRIDES):
        prefix = key.rsplit(".", 1)[0] + "."
        settings.update({k.removeprefix(prefix): v for k, v in flat.items()
                         if k.startswith(prefix) and v is not None})
    return settings


def change_kind(key: str, old: dict[str, Any], new: dict[str, Any]) -> Kind:
    """The kind of changing ``key`` between flattened configs ``old`` and ``new``: a batch-split
    key is free while the effective batch it trains with stays, the warm-up while it keeps its
    share of the epochs (else either changes training)."""
    kind = key_rule(key).kind
    before, after = _train_settings(old, key), _train_settings(new, key)
    if kind == BATCH_SPLIT:
        return FREE if effective_batch(before) == effective_batch(after) else TRAINING
    if kind == WARMUP_SHARE:
        return FREE if same_warmup_share(before, after) else TRAINING
    return kind


def stage_identity(flat: dict[str, Any], stage: str) -> dict[str, Any]:
    """The settings a stage's checkpoint must agree with, besides the engine's own (which the
    engine compares itself): the ``training`` and ``data_split`` keys that affect ``stage``."""
    return {key: value for key, value in flat.items()
            if not key.startswith("train.") and stage in key_rule(key).stages
            and key_rule(key).kind in (TRAINING, WARMUP_SHARE, DATA_SPLIT)}



def compare_configs(saved: RunConfig, new: RunConfig, status: Mapping[str, StageStatus], *,
                    split_exists: bool) -> tuple[list[str], list[str]]:
    """(breaking, allowed) descriptions of the changes from ``saved`` to ``new``, given what each
    stage holds (``status``; a stage not named is fresh) and whether split.json exists.

    Until a stage holds trained state (a checkpoint or a result), every setting of it may still
    change: a model that failed to build, a batch size that crashed or a learning rate that
    diverged in the first epoch is corrected in the same run directory, and the stage starts over.
    """
    old, cur = flatten(saved), flatten(new)
    diverged = [s for s, held in status.items() if held == "diverged"]
    breaking, allowed = [], []
    for key in sorted(set(old) | set(cur)):
        if old.get(key) == cur.get(key):
            continue
        change = f"{key}: {old.get(key)!r} -> {cur.get(key)!r}"
        kind = change_kind(key, old, cur)
        held = {s: status.get(s, "fresh") for s in key_rule(key).stages}
        if kind == FREE:
            blockers = []
        elif kind == DATA_SPLIT:
            blockers = ["split.json"] if split_exists else []
        elif kind == RECOVERY and diverged:
            # after a divergence: the diverged stage continues with the new value, the stages after it
            # use it, finished stages keep their results (each result.json records its own lr)
            blockers = [s for s, h in held.items() if h == "trained"]
            if not blockers:
                change += f" (after the divergence of stage {', '.join(diverged)})"
        else:
            blockers = [s for s, h in held.items() if h != "fresh"]
        if not blockers:
            allowed.append(change)
        elif blockers == ["split.json"]:
            breaking.append(f"{change} (split.json was made with the old value)")
        else:
            breaking.append(f"{change} (stage {', '.join(blockers)} already trained with the old value)")
    return breaking, allowed
