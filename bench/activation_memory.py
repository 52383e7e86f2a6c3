"""How much activation memory gradient checkpointing saves, measured on the CPU.

For one training forward of each model it counts the bytes autograd keeps for the backward
(``saved_activation_bytes``: every unique storage once, the model's own weights left out),
with checkpointing off and on (``enforce_gradient_checkpointing``). This is the part of the
GPU peak that checkpointing shrinks; weights, gradients and optimizer state come on top.

The models are every preset's teacher, assistant and student (their shipped GPU configs, loaded
by the product's config loader), built by the product's factory at ``--image-size``. The last
lines report the models a preset always checkpoints (``grad_checkpointing: on`` for their stage:
the ViT preset's ViT-Base teacher).

    python bench/activation_memory.py                 # ViT-Base at 224x224, batch 1, + others
    python bench/activation_memory.py --batch 4 --only vit_base
"""
from __future__ import annotations

import argparse
import time
import warnings

import torch
from _common import GPU_CONFIG, preset_config

from src.config.presets import PRESETS
from src.config.stage_settings import model_name, stage_config
from src.config.stages import STAGES
from src.models.factory import create_model
from src.utils.training_guards import enforce_gradient_checkpointing, saved_activation_bytes


def preset_models() -> tuple[list[str], list[str]]:
    """(every role's model of every preset's GPU config, in order, once each; the models a preset
    always checkpoints)."""
    names: dict[str, None] = {}
    always: dict[str, None] = {}
    for preset in PRESETS:
        cfg = preset_config(preset, GPU_CONFIG)
        for stage in STAGES:
            names[model_name(cfg, stage)] = None
            if stage in cfg.stages and stage_config(cfg, stage).train.grad_checkpointing == "on":
                always[model_name(cfg, stage)] = None
    return list(names), list(always)


def measure(name: str, batch: int, image_size: int, num_classes: int) -> tuple[int, int]:
    """Saved bytes for one training forward without and with gradient checkpointing."""
    torch.manual_seed(0)
    model = create_model(name, num_classes, image_size).train()
    images = torch.randn(batch, 3, image_size, image_size)
    results = []
    for checkpointing in (False, True):
        if checkpointing and not enforce_gradient_checkpointing(model, name, verbose=False):
            raise SystemExit(f"could not enable gradient checkpointing for {name}")
        with saved_activation_bytes(model) as saved:
            logits = model(images)
        del logits  # frees the graph and what it saved
        results.append(saved["bytes"])
    return results[0], results[1]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    models, always = preset_models()
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--num-classes", type=int, default=10)
    parser.add_argument(
        "--only", choices=models, action="append", help="measure only these (repeatable)"
    )
    args = parser.parse_args()

    names = args.only or models
    names = [*(name for name in always if name not in names), *names]  # the headline's models always
    print(f"saved activations for one training forward: batch {args.batch}, "
          f"{args.image_size}x{args.image_size}, {args.num_classes} classes, CPU (MB = 1e6 bytes)")
    print(f"{'model':<10} {'ckpt off MB':>12} {'ckpt on MB':>11} {'ratio on/off':>13} {'time s':>7}")
    ratios = {}
    for name in names:
        start = time.perf_counter()
        off, on = measure(name, args.batch, args.image_size, args.num_classes)
        ratios[name] = on / off
        print(f"{name:<10} {off / 1e6:>12.1f} {on / 1e6:>11.1f} {on / off:>13.3f} "
              f"{time.perf_counter() - start:>7.1f}", flush=True)
    for name in always:
        print(f"{name} saved-activation ratio (ckpt/no-ckpt): {ratios[name]:.2f}")


if __name__ == "__main__":
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        main()
