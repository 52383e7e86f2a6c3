"""One chain of stages per seed: ``--seeds 42,43,44`` trains each under ``<run>/seed-<n>/``.

Every chain uses the run's one split (``<run>/split.json``, made with ``runtime.seed``); a
chain's seed decides its stages' initial weights, data order, augmentation and other draws.
A chain directory holds what a one-seed run directory holds, except the run-wide files
(config.yaml, split.json, pipeline.log), which stay at the top. A run without
``runtime.seeds`` is one chain in the run directory itself (the one-seed layout); asked for
several seeds later, its finished stages are the chain of its seed (``adopt_one_seed_run``).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

from src.config.schema import RunConfig
from src.errors import UserError
from src.rundirs.rundir import SEED_PREFIX, RunDirectory
from src.utils.atomic import atomic_link_or_copy


@dataclass(frozen=True)
class Chain:
    """One seed's chain: its settings (``runtime.seed`` = ``seed``) and its folder."""

    seed: int
    cfg: RunConfig
    run_dir: RunDirectory


def chain_config(cfg: RunConfig, seed: int) -> RunConfig:
    """``cfg`` as a one-seed run with ``seed``."""
    chain = copy.deepcopy(cfg)
    chain.runtime.seed, chain.runtime.seeds = seed, None
    return chain


def seed_chains(cfg: RunConfig, top: RunDirectory) -> list[Chain]:
    """The chains ``cfg`` asks for, in ``runtime.seeds`` order (one chain at the top without it)."""
    if cfg.runtime.seeds is None:
        return [Chain(cfg.runtime.seed, cfg, top)]
    return [Chain(seed, chain_config(cfg, seed), top.seed_chain(seed))
            for seed in cfg.runtime.seeds]


def adopt_one_seed_run(cfg: RunConfig, top: RunDirectory) -> str | None:
    """``--seeds`` in a finished one-seed run: its stages are ``runtime.seed``'s chain, so they are
    hard-linked (copied where links cannot be made) into ``seed-<n>/`` rather than trained again;
    the one-seed run's own files stay. Returns a line for pipeline.log (None: nothing adopted)."""
    if cfg.runtime.seeds is None or cfg.runtime.seed not in cfg.runtime.seeds:
        return None
    chain = top.seed_chain(cfg.runtime.seed)
    stages = [stage for stage in top.finished_stages() if not chain.stage_dir(stage).exists()]
    for stage in stages:
        source = top.stage_dir(stage)
        files = sorted(path for path in source.rglob("*") if path.is_file() and path.name != "result.json")
        for path in [*files, top.result_path(stage)]:  # result.json last: it marks the stage finished
            atomic_link_or_copy(path, chain.stage_dir(stage) / path.relative_to(source))
    if not stages:
        return None
    return (f"seed {cfg.runtime.seed}: the one-seed run's finished {', '.join(stages)} are its chain's, "
            f"linked into {chain.root} (the files in {top.root} stay)")


def chain_for(cfg: RunConfig, top: RunDirectory, seed: int | None = None) -> Chain:
    """The chain of ``seed`` in the run ``cfg`` describes; None picks the run's first chain."""
    chains = seed_chains(cfg, top)
    if seed is None:
        return chains[0]
    for chain in chains:
        if chain.seed == seed:
            return chain
    raise UserError(f"seed {seed} is not a seed of the run in {top.root} "
                    f"({', '.join(str(chain.seed) for chain in chains)}); pass one of those with --seed")


def run_dir_of(stage_file: Path) -> Path:
    """The run directory a stage's file belongs to: ``<run>/<stage>/file``, or
    ``<run>/seed-<n>/<stage>/file`` in a run with several seeds (config.yaml and split.json are
    at the top)."""
    chain = stage_file.resolve().parents[1]
    in_seed_chain = chain.name.startswith(SEED_PREFIX) and not (chain / "config.yaml").exists()
    return chain.parent if in_seed_chain else chain
