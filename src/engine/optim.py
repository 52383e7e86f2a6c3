"""Optimizer and learning-rate schedule for one stage.

The optimizer comes from timm's factory, which already knows which parameters must not be
weight-decayed (biases, norm layers, every 1-D tensor, and the names a timm model lists in
``no_weight_decay()`` such as ``pos_embed``/``cls_token``): decaying those hurts accuracy.

The schedule counts OPTIMIZER UPDATES, not micro-batches or epochs, so gradient accumulation,
skipped non-finite steps and mid-epoch resumes cannot shift it. The trainer calls
``step_update()`` after every applied update (never after a skipped one) and
``step_epoch(metric)`` after validation (only ``plateau`` reacts).

Warmup (every schedule): with ``W = round(warmup_epochs * updates_per_epoch)`` the learning
rate after ``k`` updates is ``base * (k + 1) / (W + 1)`` for ``k < W`` and the schedule's own
value from ``k = W`` on. It starts near zero but never at zero, so no update is wasted.
"""
from __future__ import annotations

from typing import Any

import torch
from timm.optim import create_optimizer_v2
from timm.scheduler import CosineLRScheduler, StepLRScheduler
from torch import nn
from torch.optim.lr_scheduler import OneCycleLR, ReduceLROnPlateau

from src.engine.settings import TrainConfig
from src.errors import IncompatibleResumeError, UserError

ONECYCLE_DEFAULT_WARMUP = 0.3  # fraction of the run spent rising when no warmup is configured


def build_optimizer(model: nn.Module, cfg: TrainConfig, lr: float | None = None,
                    fused: bool = False) -> torch.optim.Optimizer:
    """SGD (momentum, Nesterov per ``cfg.nesterov``) or AdamW over the trainable parameters.

    Pass the bare model, not a DDP wrapper, so timm sees its ``no_weight_decay()`` names.
    ``lr`` overrides ``cfg.lr`` (the pipeline scales the rate per model size). ``fused``
    (the trainer asks for it on CUDA) updates every parameter in one kernel instead of a few
    launches per tensor: the same arithmetic, far fewer launches per step.
    """
    if cfg.optimizer == "sgd":
        opt = "sgd" if cfg.nesterov else "momentum"  # timm: "sgd" is Nesterov, "momentum" is not
    elif cfg.optimizer == "adamw":
        opt = "adamw"
    else:
        raise UserError(f"unknown optimizer {cfg.optimizer!r}; choose sgd or adamw")
    if not any(p.requires_grad for p in model.parameters()):
        raise UserError(f"{type(model).__name__} has no trainable parameters to optimize")
    optimizer = create_optimizer_v2(
        model,
        opt=opt,
        lr=cfg.lr if lr is None else lr,
        weight_decay=cfg.weight_decay,
        momentum=cfg.momentum,
        filter_bias_and_bn=True,
        **({"fused": True} if fused else {}),
    )
    _keep_implementation(optimizer)
    return optimizer


def _keep_implementation(optimizer: torch.optim.Optimizer) -> None:
    """How the update is computed (fused, foreach) belongs to this machine, not to the run:
    torch's ``load_state_dict`` would restore the saved run's choice, so an unfused checkpoint
    (a CPU run, an older version) would resume unfused on a GPU. After a load the groups get
    this optimizer's choice back, and a fused optimizer gets its step counters on the
    parameters' device, where the fused kernel reads them."""
    implementation = {key: optimizer.defaults[key] for key in ("fused", "foreach")
                      if key in optimizer.defaults}

    def restore(opt: torch.optim.Optimizer) -> None:
        for group in opt.param_groups:
            group.update(implementation)
        if implementation.get("fused"):
            for param, state in opt.state.items():
                step = state.get("step")
                if isinstance(step, torch.Tensor):
                    state["step"] = step.to(device=param.device, dtype=torch.float32)

    optimizer.register_load_state_dict_post_hook(restore)


class LRSchedule:
    """The stage's learning-rate policy with explicit update/epoch stepping (see module doc).

    cosine: from base after warmup down to ``min_lr`` exactly at the last update (timm).
    step: times ``gamma`` every ``step_size`` epochs counted from the start of training (timm).
    constant: base after warmup (timm's step schedule with no decay).
    plateau: base after warmup, then times ``gamma`` when the monitored metric has not strictly
      improved (by more than ``min_delta``) for ``plateau_patience`` validations (torch).
    onecycle: linear rise to base over the warmup (30% of the run when none is set), then
      linear fall to ``min_lr`` (or base/(W+1)/1e4) at the last update (torch OneCycleLR;
      it also cycles momentum, which the optimizer's state_dict carries).
    """

    def __init__(self, optimizer: torch.optim.Optimizer, cfg: TrainConfig, updates_per_epoch: int) -> None:
        if updates_per_epoch < 1:
            raise ValueError(f"updates_per_epoch must be >= 1, got {updates_per_epoch}")
        self.optimizer = optimizer
        self.kind = cfg.scheduler
        self.total_updates = cfg.epochs * updates_per_epoch
        self.warmup_updates = round(cfg.warmup_epochs * updates_per_epoch)
        self.num_updates = 0
        self.plateau_patience: int | None = None  # plateau only: validations without improvement
        self._timm: CosineLRScheduler | StepLRScheduler | None = None
        self._plateau: ReduceLROnPlateau | None = None
        self._onecycle: OneCycleLR | None = None
        base = optimizer.param_groups[0]["lr"]
        self.base_lr = float(base)
        warm = self.warmup_updates
        if warm >= self.total_updates and self.kind in ("cosine", "onecycle"):
            raise UserError(
                f"warmup_epochs={cfg.warmup_epochs} covers the whole run of {cfg.epochs} epochs; "
                "make it shorter than epochs"
            )
        warmup_init = base / (warm + 1)
        if self.kind == "cosine":
            self._timm = CosineLRScheduler(
                optimizer, t_initial=self.total_updates - warm, lr_min=cfg.min_lr, warmup_t=warm,
                warmup_lr_init=warmup_init, warmup_prefix=True, t_in_epochs=False,
            )
        elif self.kind == "step":
            self._timm = StepLRScheduler(
                optimizer, decay_t=cfg.step_size * updates_per_epoch, decay_rate=cfg.gamma, warmup_t=warm,
                warmup_lr_init=warmup_init, warmup_prefix=False, t_in_epochs=False,
            )
        elif self.kind in ("constant", "plateau"):
            self._timm = StepLRScheduler(
                optimizer, decay_t=1, decay_rate=1.0, warmup_t=warm, warmup_lr_init=warmup_init,
                t_in_epochs=False,
            )
            if self.kind == "plateau":
                self.plateau_patience = max(1, cfg.patience // 2) if cfg.patience else 5
                self._plateau = ReduceLROnPlateau(
                    optimizer, mode=cfg.mode, factor=cfg.gamma, patience=self.plateau_patience,
                    threshold=cfg.min_delta, threshold_mode="abs", min_lr=cfg.min_lr,
                )
        elif self.kind == "onecycle":
            self._onecycle = self._build_onecycle(optimizer, cfg, base)
        else:
            raise UserError(
                f"unknown scheduler {cfg.scheduler!r}; choose cosine, step, plateau, onecycle or constant"
            )

    def _build_onecycle(self, optimizer: torch.optim.Optimizer, cfg: TrainConfig, base: float) -> OneCycleLR:
        total = self.total_updates
        if total < 3:
            raise UserError(f"the onecycle schedule needs at least 3 optimizer updates, this run has {total}")
        rise = self.warmup_updates or round(ONECYCLE_DEFAULT_WARMUP * total)
        self.warmup_updates = min(max(rise, 1), total - 2)
        initial = base / (self.warmup_updates + 1)
        # torch puts the peak at step pct_start * total - 1; we want it after W updates.
        return OneCycleLR(
            optimizer, max_lr=base, total_steps=total, pct_start=(self.warmup_updates + 1) / total,
            anneal_strategy="linear", div_factor=self.warmup_updates + 1,
            final_div_factor=initial / cfg.min_lr if cfg.min_lr > 0 else 1e4,
        )

    def step_update(self) -> None:
        """Call after every APPLIED optimizer update."""
        self.num_updates += 1
        if self._onecycle is not None:
            if self.num_updates < self.total_updates:  # torch refuses to step past the end
                self._onecycle.step()
        elif self._plateau is None or self.num_updates <= self.warmup_updates:
            self._timm.step_update(self.num_updates)

    def step_epoch(self, metric: float) -> None:
        """Call after validation with the monitored metric; only ``plateau`` reacts (after warmup)."""
        if self._plateau is not None and self.num_updates >= self.warmup_updates:
            self._plateau.step(metric)

    def current_lr(self) -> float:
        """The learning rate the next update will use (first parameter group)."""
        return float(self.optimizer.param_groups[0]["lr"])

    def state_dict(self) -> dict[str, Any]:
        """Plain data (weights_only-safe): the update count, the group rates, inner torch state."""
        state: dict[str, Any] = {
            "kind": self.kind,
            "base_lr": self.base_lr,
            "num_updates": self.num_updates,
            "lrs": [float(g["lr"]) for g in self.optimizer.param_groups],
        }
        if self._plateau is not None:
            state["plateau"] = self._plateau.state_dict()
        if self._onecycle is not None:
            state["onecycle"] = self._onecycle.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue exactly where ``state`` was taken; the schedule must be built from the same config."""
        if state.get("kind") != self.kind:
            raise IncompatibleResumeError(
                f"the checkpoint used the {state.get('kind')!r} LR schedule, this run asks for {self.kind!r}"
            )
        if self._onecycle is not None and state["onecycle"]["total_steps"] != self.total_updates:
            # torch's OneCycleLR keeps its saved length and raises once stepped past it, so a
            # resume with more epochs would crash mid-run; its curve cannot be stretched.
            raise IncompatibleResumeError(
                f"the onecycle LR schedule was planned for {state['onecycle']['total_steps']} updates, "
                f"this run has {self.total_updates} (epochs changed?): onecycle's length is fixed for "
                "the whole run; resume with the original --epochs"
            )
        self.num_updates = int(state["num_updates"])
        if self._plateau is not None:
            self._plateau.load_state_dict(state["plateau"])
        if self._onecycle is not None:
            self._onecycle.load_state_dict(state["onecycle"])
        for group, lr in zip(self.optimizer.param_groups, state["lrs"], strict=True):
            group["lr"] = lr
        saved_base = float(state.get("base_lr", self.base_lr))
        if saved_base != self.base_lr:
            self._rebase(saved_base)

    def _rebase(self, saved_base: float) -> None:
        """Continue at the same point of the schedule, scaled to a new base rate (a resume after
        a divergence with a lower ``--lr``): every rate so far, warmup and decays included, is
        multiplied by new/old. The optimizer's state_dict brought back the old ``initial_lr``;
        timm's schedules compute from the base rate they were built with, which is the new one."""
        if self._onecycle is not None:
            raise IncompatibleResumeError(
                "the onecycle LR schedule cannot change its learning rate mid-run; resume with the "
                "old --lr, or delete the stage's folder to train it again with the new one"
            )
        ratio = self.base_lr / saved_base
        for group in self.optimizer.param_groups:
            group["lr"] *= ratio
            if "initial_lr" in group:
                group["initial_lr"] *= ratio


def build_schedule(optimizer: torch.optim.Optimizer, cfg: TrainConfig, updates_per_epoch: int) -> LRSchedule:
    """The schedule for ``cfg.scheduler``; ``updates_per_epoch`` counts optimizer updates."""
    return LRSchedule(optimizer, cfg, updates_per_epoch)
