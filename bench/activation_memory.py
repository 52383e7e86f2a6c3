#!/usr/bin/env python3
"""How much activation memory gradient checkpointing saves, measured on the CPU.

For one training forward of each model it counts the bytes autograd keeps for the backward
(``saved_activation_bytes``: every unique storage once, the model's own weights left out),
with checkpointing off and on (``enforce_gradient_checkpointing``). This is the part of the
GPU peak that checkpointing shrinks; weights, gradients and optimizer state come on top.

    python bench/activation_memory.py                 # ViT-Base at 224x224, batch 1, + others
    python bench/activation_memory.py --batch 4 --only vit_base
"""
from __future__ import annotations

import argparse
import time
import warnings

import timm
import torch

from src.utils.training_guards import enforce_gradient_checkpointing, saved_activation_bytes

MODELS = {  # short name -> timm name: the six roles' architectures, ImageNet-shaped (224 px)
    "vit_base": "vit_base_patch16_224",
    "vit_small": "vit_small_patch16_224",
    "vit_tiny": "vit_tiny_patch16_224",
    "resnet50": "resnet50",
    "resnet34": "resnet34",
    "resnet18": "resnet18",
}


def measure(timm_name: str, batch: int, image_size: int, num_classes: int) -> tuple[int, int]:
    """Saved bytes for one training forward without and with gradient checkpointing."""
    torch.manual_seed(0)
    kwargs = {"img_size": image_size} if timm_name.startswith("vit") else {}
    model = timm.create_model(timm_name, num_classes=num_classes, **kwargs).train()
    images = torch.randn(batch, 3, image_size, image_size)
    results = []
    for checkpointing in (False, True):
        if checkpointing and not enforce_gradient_checkpointing(model, timm_name, verbose=False):
            raise SystemExit(f"could not enable gradient checkpointing for {timm_name}")
        with saved_activation_bytes(model) as saved:
            logits = model(images)
        del logits  # frees the graph and what it saved
        results.append(saved["bytes"])
    return results[0], results[1]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--num-classes", type=int, default=10)
    parser.add_argument(
        "--only", choices=sorted(MODELS), action="append", help="measure only these (repeatable)"
    )
    args = parser.parse_args()

    names = args.only or list(MODELS)
    if "vit_base" not in names:
        names.insert(0, "vit_base")  # the last line always reports ViT-Base
    print(f"saved activations for one training forward: batch {args.batch}, "
          f"{args.image_size}x{args.image_size}, {args.num_classes} classes, CPU (MB = 1e6 bytes)")
    print(f"{'model':<10} {'ckpt off MB':>12} {'ckpt on MB':>11} {'ratio on/off':>13} {'time s':>7}")
    ratios = {}
    for name in names:
        start = time.perf_counter()
        off, on = measure(MODELS[name], args.batch, args.image_size, args.num_classes)
        ratios[name] = on / off
        print(f"{name:<10} {off / 1e6:>12.1f} {on / 1e6:>11.1f} {on / off:>13.3f} "
              f"{time.perf_counter() - start:>7.1f}", flush=True)
    print(f"vit_base saved-activation ratio (ckpt/no-ckpt): {ratios['vit_base']:.2f}")


if __name__ == "__main__":
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        main()
