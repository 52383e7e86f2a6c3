"""Running training sums kept on the device, read only at log intervals and epoch ends.

Reading a loss every step would stall a GPU; adding into device tensors does not. A tally's
state is plain tensors and numbers, so a mid-epoch checkpoint carries it and a resumed epoch
reports exactly what an uninterrupted one would have.
"""
from __future__ import annotations

from typing import Any

import torch

from src.engine.objective import StepOutput

_LOSS, _FINITE_SAMPLES, _CORRECT = range(3)


class Tally:
    """Sample-weighted sums over one span: an epoch or a log interval."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.reset()

    def reset(self) -> None:
        self.sums = torch.zeros(3, dtype=torch.float64, device=self.device)
        self.parts: dict[str, torch.Tensor] = {}
        self.grad_norm_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        self.samples = 0
        self.updates = 0
        self.skipped = 0

    def add_micro_batch(self, contribution: torch.Tensor, parts: dict[str, torch.Tensor],
                        samples: int) -> None:
        """``contribution`` comes from :func:`micro_batch_contribution`; ``parts`` are
        already multiplied by the micro-batch size."""
        self.sums += contribution
        for name, value in parts.items():
            if name in self.parts:
                self.parts[name] += value
            else:
                self.parts[name] = value.clone()
        self.samples += samples

    def add_update(self, applied: bool, grad_norm: torch.Tensor) -> None:
        self.updates += 1
        if applied:
            self.grad_norm_sum += grad_norm.double()
        else:
            self.skipped += 1

    def read(self) -> dict[str, float]:
        """Host values (this is the sync): mean loss over finite-loss samples, accuracy,
        mean loss parts and mean grad norm over applied updates."""
        values = torch.cat([self.sums, self.grad_norm_sum.reshape(1),
                            *(v.double().reshape(1) for v in self.parts.values())]).tolist()  # one read
        loss_sum, finite, correct, grad_norm_sum, *parts = values
        applied = self.updates - self.skipped
        samples = max(self.samples, 1)
        return {
            "loss": loss_sum / finite if finite else float("nan"),
            "accuracy": correct / self.samples if self.samples else 0.0,
            **{name: value / samples for name, value in zip(self.parts, parts, strict=True)},
            "grad_norm": grad_norm_sum / applied if applied else float("nan"),
        }

    def state_dict(self) -> dict[str, Any]:
        return {
            "sums": self.sums.cpu(),
            "parts": {name: value.cpu() for name, value in self.parts.items()},
            "grad_norm_sum": self.grad_norm_sum.cpu(),
            "samples": self.samples,
            "updates": self.updates,
            "skipped": self.skipped,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.sums = state["sums"].to(self.device)
        self.parts = {name: value.to(self.device) for name, value in state["parts"].items()}
        self.grad_norm_sum = state["grad_norm_sum"].to(self.device)
        self.samples = int(state["samples"])
        self.updates = int(state["updates"])
        self.skipped = int(state["skipped"])


def micro_batch_contribution(out: StepOutput, finite: torch.Tensor, labels: torch.Tensor
                             ) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
    """[loss * n (0 when not finite), n when finite, correct], the parts times n, and the
    predicted classes, all on the device; computed once per micro-batch and added to both the
    epoch and interval tallies (the predictions also feed the epoch's macro metrics)."""
    n = labels.shape[0]
    loss = out.loss.detach().double()
    kept = torch.where(finite, loss * n, torch.zeros_like(loss))
    preds = out.logits.detach().argmax(dim=1)
    correct = (preds == labels).sum().double()
    contribution = torch.stack([kept, finite.double() * n, correct])
    parts = {name: value.detach().double() * n for name, value in out.parts.items()}
    return contribution, parts, preds
