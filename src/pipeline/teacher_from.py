"""``--teacher-from RUN_DIR``: new students from another run's finished teacher (and assistant).

Trying another loss or more seeds should cost only the student stages. The finished teacher,
assistant and baseline of RUN_DIR are reused in the new run, each only where it is exactly
what this run would have trained: the same split (split.json's hash), the same settings under
the resume rules (``compare_configs``, as if the stage had been trained in this directory), for
the baseline the same budget (epochs, patience, min_delta: the verdict pairs it with the students
trained here), and a result.json whose weights hash, architecture, class count and image size fit. A reused
stage is copied in (hard-linked where the file system allows) with ``reused_from`` added to its
result.json, so the new run directory is complete on its own and its config.yaml describes
every stage in it. A distilled assistant is reused only when the distillation settings match;
otherwise this run trains its own (e.g. with another loss), if ``assistant`` is in --stages.
Nothing is written until every check has passed.
"""
from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from src.config.change_rules import compare_configs
from src.config.schema import RunConfig
from src.config.stage_settings import model_name
from src.data.build import DataBundle
from src.errors import UserError
from src.rundirs.inputs import run_data, stage_image_size
from src.rundirs.provenance import stage_budget
from src.rundirs.rundir import RunDirectory, open_run
from src.rundirs.seeds import Chain, seed_chains
from src.rundirs.stage_models import verified_weights
from src.utils.atomic import atomic_link_or_copy, atomic_write_json, atomic_write_with

LOGGER = logging.getLogger("kd_pipeline.runner")
REUSABLE = ("teacher", "assistant", "baseline")
# a finished stage's files besides result.json (written last: it marks the stage finished)
STAGE_FILES = ("model.safetensors", "test_predictions.csv", "val_predictions.csv", "epochs.csv",
               "metrics.jsonl", "curves.png")


@dataclass(frozen=True)
class Reuse:
    """Stage ``stage`` of ``source`` (a chain folder of the other run) into ``target``."""

    stage: str
    source: RunDirectory
    target: RunDirectory


@dataclass
class ReusePlan:
    """What ``--teacher-from`` will reuse, checked but not yet written."""

    source: RunDirectory
    reuses: list[Reuse] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # stages trained here instead, and why

    def stages_for(self, chain: Chain) -> list[str]:
        return [r.stage for r in self.reuses if r.target == chain.run_dir]


def _fail(source: Path, problem: str, fix: str) -> UserError:
    return UserError(f"--teacher-from {source}: {problem}; {fix}")


def plan_reuse(cfg: RunConfig, top: RunDirectory, chains: list[Chain], source: Path) -> ReusePlan:
    """Decide what to reuse from ``source`` for each chain; every mismatch is a UserError."""
    drop = "or drop --teacher-from to train a teacher in this run"
    try:
        src, src_cfg = open_run(source.expanduser(), option="--teacher-from")
    except UserError as exc:
        raise UserError(f"--teacher-from: {exc}") from None
    if src.root.resolve() == top.root.resolve():
        raise _fail(source, "that is this run's own --output-dir", "pass another run's directory")
    # no stage of ours holds anything yet: only the keys that made split.json can differ
    split_keys, _ = compare_configs(src_cfg, cfg, {}, split_exists=True)
    if split_keys:
        raise _fail(source, "its split was made with other settings: " + "; ".join(split_keys),
                    "use the same data settings and --seed")
    ours = top.split_path
    if ours.is_file() and ours.read_bytes() != src.split_path.read_bytes():
        raise _fail(source, f"its split.json differs from {ours}", "reuse from a run with the same split")
    src_chains = {chain.seed: chain for chain in seed_chains(src_cfg, src)}
    plan = ReusePlan(src)
    for chain in chains:
        src_chain = src_chains.get(chain.seed)
        if src_chain is None:
            raise _fail(source, f"it has no chain for seed {chain.seed} (its seeds: "
                        f"{', '.join(map(str, src_chains))})", f"use seeds it has, {drop}")
        for stage in REUSABLE:
            _plan_stage(plan, stage, chain, src_chain, source, drop)
    return plan


def _plan_stage(plan: ReusePlan, stage: str, chain: Chain, src_chain: Chain, source: Path, drop: str) -> None:
    if chain.run_dir.result_path(stage).is_file():
        return  # finished here already (an earlier run of this command reused or trained it)
    where = src_chain.run_dir.stage_dir(stage)
    if not src_chain.run_dir.result_path(stage).is_file():
        if stage == "teacher":
            raise _fail(source, f"{where} has not finished", f"finish that run (re-run its command), {drop}")
        return
    # the resume rules, as if the source's finished stage had been trained in this directory
    breaking, _ = compare_configs(src_chain.cfg, chain.cfg, {stage: "finished"}, split_exists=True)
    if breaking:
        if stage == "teacher":
            raise _fail(source, f"its teacher was trained with other settings: {'; '.join(breaking)}",
                        f"use the same values, {drop}")
        plan.notes.append(f"{stage} (seed {chain.seed}) is trained here, not reused from {where}: "
                          + "; ".join(breaking))
        return
    budget = _budget_change(stage, src_chain, chain)
    if budget:
        fix = ("it is trained here" if stage in chain.cfg.stages
               else f"add {stage} to --stages to train it here")
        plan.notes.append(f"{stage} (seed {chain.seed}) is not reused from {where}: it was trained with "
                          f"another budget ({budget}), so it would not pair with this run's students; {fix}")
        return
    if chain.run_dir.stage_status(stage) != "fresh":  # a checkpoint: latest, or previous alone
        raise _fail(source, f"{chain.run_dir.stage_dir(stage)} was already started in this run",
                    "let it finish (drop --teacher-from) or delete that folder to reuse the other run's")
    plan.reuses.append(Reuse(stage, src_chain.run_dir, chain.run_dir))


def _budget_change(stage: str, src_chain: Chain, chain: Chain) -> str:
    """How the baseline's budget (epochs, patience, min_delta) there differs from this run's ("" when
    it does not, and for other stages): the verdict pairs the baseline with the students trained
    here, which only means something for the same budget. Its result.json's provenance says what it
    was trained with; a result without one, the source's config.yaml."""
    if stage != "baseline":
        return ""
    recorded = src_chain.run_dir.read_result(stage).get("provenance")
    theirs = recorded.get("budget") if isinstance(recorded, dict) else None
    if not isinstance(theirs, dict):
        theirs = stage_budget(src_chain.cfg, stage)
    ours = stage_budget(chain.cfg, stage)
    return ", ".join(f"{key} {theirs.get(key)!r} -> {value!r}" for key, value in ours.items()
                     if theirs.get(key) != value)


def check_fingerprints(plan: ReusePlan, cfg: RunConfig, data: DataBundle) -> None:
    """Each reused stage's weights match its recorded hash, and its model fits this run."""
    for reuse in plan.reuses:
        result = reuse.source.read_result(reuse.stage)
        try:
            verified_weights(reuse.source, reuse.stage, result)
        except UserError as exc:
            raise _fail(plan.source.root, str(exc), "or drop --teacher-from") from None
        expected = {"model": model_name(cfg, reuse.stage), "num_classes": data.num_classes,
                    "image_size": stage_image_size(cfg, reuse.stage)}
        wrong = [f"{key} {result.get(key)!r} (this run: {value!r})" for key, value in expected.items()
                 if result.get(key) != value]
        if wrong:
            raise _fail(plan.source.root, f"{reuse.source.stage_dir(reuse.stage)} does not fit this run: "
                        + ", ".join(wrong), "reuse from a run of the same models and data")


def reuse_data(plan: ReusePlan, cfg: RunConfig, top: RunDirectory) -> DataBundle:
    """The datasets on the source run's split, checked against the reused stages; then the
    split is adopted (copied to ``top`` when this run has none yet). The first write."""
    data = run_data(cfg, plan.source.root)
    check_fingerprints(plan, cfg, data)
    ours, theirs = top.split_path, plan.source.split_path
    if not ours.is_file():
        atomic_write_with(ours, lambda tmp: shutil.copyfile(theirs, tmp))
    return data


def apply_reuse(plan: ReusePlan) -> None:
    """Copy each reused stage in; its result.json, written last, says where it came from."""
    for note in plan.notes:
        LOGGER.info("--teacher-from: %s", note)
    for reuse in plan.reuses:
        source_dir = reuse.source.stage_dir(reuse.stage)
        for name in STAGE_FILES:
            if (source_dir / name).is_file():
                atomic_link_or_copy(source_dir / name, reuse.target.stage_dir(reuse.stage) / name)
        result = reuse.source.read_result(reuse.stage)
        result["reused_from"] = str(source_dir.resolve())
        atomic_write_json(reuse.target.result_path(reuse.stage), result)
        LOGGER.info("stage %s: reused from %s (weights sha256 %s)", reuse.stage, source_dir,
                    result.get("weights_sha256"))
