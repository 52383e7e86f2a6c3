"""One optimizer update: forward/backward over the window's micro-batches, then unscale,
clip, and step only when everything was finite.

A non-finite loss must never reach the weights. Each micro-batch's backward is multiplied by
a device-side factor that is NaN when its loss is not finite, so every gradient it touches
becomes NaN; the global grad norm (computed anyway for clipping and logging) then says
whether the update may be applied. Reading that one flag is the only host read per update:
the learning-rate schedule lives on the host and must not advance on a skipped update
(GradScaler pays the same read in every fp16 loop). On the CPU the read costs nothing.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from src.engine.compiling import CompiledModule
from src.engine.objective import Objective, StepOutput
from src.engine.settings import TrainConfig
from src.errors import UserError


def resolve_precision(amp: str, device: torch.device
                      ) -> tuple[Optional[torch.dtype], Optional[torch.amp.GradScaler]]:
    """Autocast dtype and GradScaler for ``cfg.amp``: mixed precision only on CUDA; ``auto``
    picks bf16 where the GPU supports it natively (no scaler needed) and fp16 with a scaler
    otherwise. torch's default check also accepts bf16 *emulated* on pre-Ampere GPUs (the
    6 GB Pascal/Turing cards this product targets), which is far slower than their fp16."""
    if device.type != "cuda" or amp == "off":
        return None, None
    if amp == "auto":
        amp = "bf16" if torch.cuda.is_bf16_supported(including_emulation=False) else "fp16"
    if amp == "bf16":
        if not torch.cuda.is_bf16_supported():
            raise UserError("amp=bf16 was asked for but this GPU does not support bfloat16; "
                            "use amp=fp16 or auto")
        return torch.bfloat16, None
    return torch.float16, torch.amp.GradScaler("cuda")


@dataclass
class UpdateOutcome:
    """What the window's update did (``grad_norm`` stays on the device)."""

    applied: bool
    loss_nonfinite: bool
    grad_norm: torch.Tensor


class UpdateStep:
    """Runs micro-batches and applies the accumulated update. Gradients accumulate locally: under
    DDP the trainer averages them over ranks between the last micro-batch and ``apply``.
    ``compiled``: the model's compiled forward (``runtime.compile``), used for the forward and
    its backward while it works; None trains eager."""

    def __init__(self, model: nn.Module, objective: Objective, optimizer: torch.optim.Optimizer,
                 cfg: TrainConfig, device: torch.device, autocast_dtype: Optional[torch.dtype],
                 scaler: Optional[torch.amp.GradScaler], channels_last: bool,
                 compiled: Optional[CompiledModule] = None) -> None:
        self.model = model
        self.compiled = compiled
        self.objective = objective
        self.optimizer = optimizer
        self.grad_clip = cfg.grad_clip
        self.device = device
        self.autocast_dtype = autocast_dtype
        self.scaler = scaler
        self.channels_last = channels_last
        self.params = [p for group in optimizer.param_groups for p in group["params"]]
        self._nan = torch.tensor(float("nan"), device=device)
        self._one = torch.tensor(1.0, device=device)

    def forward_backward(self, images: torch.Tensor, labels: torch.Tensor,
                         weight: float) -> tuple[StepOutput, torch.Tensor, torch.Tensor]:
        """One micro-batch: the step output, a 0-dim bool "loss was finite" and the labels
        on the device."""
        images = images.to(self.device, non_blocking=True)
        labels = labels.to(self.device, non_blocking=True)
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        if self.compiled is None:
            return self._forward_backward(self.model, images, labels, weight)
        return self.compiled.run(lambda model: self._forward_backward(model, images, labels, weight))

    def _forward_backward(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                          weight: float) -> tuple[StepOutput, torch.Tensor, torch.Tensor]:
        autocast = (torch.autocast(self.device.type, dtype=self.autocast_dtype)
                    if self.autocast_dtype is not None else contextlib.nullcontext())
        with autocast:
            out = self.objective.training_step(model, images, labels)
        finite = torch.isfinite(out.loss.detach())
        poison = torch.where(finite, self._one, self._nan)  # NaN grads if the loss was not finite
        scaled = out.loss.float() * (poison * weight)
        if self.scaler is not None:
            scaled = self.scaler.scale(scaled)
        scaled.backward()
        return out, finite, labels

    def apply(self, losses_finite: torch.Tensor) -> UpdateOutcome:
        """Unscale, clip, and step if every gradient is finite; always clears the gradients.
        ``losses_finite`` (0-dim bool on the device) says whether every micro-batch loss of
        the window was finite; it is read together with the grad norm in one transfer."""
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        try:
            if self.grad_clip is not None:
                norm = torch.nn.utils.clip_grad_norm_(self.params, self.grad_clip, foreach=True)
            else:
                grads = [p.grad for p in self.params if p.grad is not None]
                norm = torch.nn.utils.get_total_norm(grads, foreach=True) if grads else self._one * 0
            grads_ok, losses_ok = torch.stack([torch.isfinite(norm), losses_finite]).tolist()  # the one read
            applied = bool(grads_ok)
            if applied:
                # Not scaler.step(): the gradients are already unscaled and known finite, and
                # scaler.step would re-read found_inf with .item(), a second stall per update.
                # update() below still takes found_inf from unscale_ to grow or back off the scale.
                self.optimizer.step()
        finally:  # also after an OOM in the step (first-step optimizer state), so a retry starts clean
            if self.scaler is not None:
                self.scaler.update()
            self.optimizer.zero_grad(set_to_none=True)
        return UpdateOutcome(applied=applied, loss_nonfinite=not losses_ok, grad_norm=norm.detach())
