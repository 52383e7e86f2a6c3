"""The memory layout a model trains in: channels-last for CNNs on CUDA, the default otherwise.

Channels-last (NHWC) lets cuDNN use its fastest convolution kernels, and changes both speed and
activation memory, so the memory planner must measure the model in the layout that trains.
The rule lives here alone; ``to_training_layout`` applies it (once is enough, again is a no-op):
the planner does so before its first probe, the Trainer for callers that do not plan.
"""
from __future__ import annotations

import torch
from torch import nn

from src.engine.settings import TrainConfig


def is_cnn(model: nn.Module) -> bool:
    """CNNs (several conv layers) benefit from channels-last; a ViT's single patch conv does not."""
    return sum(isinstance(m, nn.Conv2d) for m in model.modules()) > 1


def wants_channels_last(model: nn.Module, cfg: TrainConfig, device: torch.device) -> bool:
    """The rule: ``cfg.channels_last`` asks for it, and only CNNs on CUDA get it."""
    return cfg.channels_last and device.type == "cuda" and is_cnn(model)


def to_training_layout(model: nn.Module, cfg: TrainConfig, device: torch.device) -> bool:
    """Put ``model``'s weights in the layout it trains in; returns whether its inputs must be
    channels-last too."""
    channels_last = wants_channels_last(model, cfg, device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    return channels_last
