"""Each dataset's channel statistics: the mean/std a from-scratch model's input is standardised with.

Which statistics a run uses (these, or a pretrained teacher's) is decided by the run's
settings (src/runs/inputs.py)."""

from __future__ import annotations

from src.data.transforms import Normalize

# Channel statistics. CIFAR: the published per-channel values of the official train sets.
# Digits: mean/std of all 1797 scikit-learn digits scaled to [0, 1] (grey, so equal per channel);
# fixed constants rather than per-split values, so the numbers never depend on the seed.
# Image folders: ImageNet's statistics, the convention of most photos and of timm's ResNets.
DATASET_STATS: dict[str, Normalize] = {
    "digits": Normalize((0.3053, 0.3053, 0.3053), (0.3760, 0.3760, 0.3760)),
    "cifar10": Normalize((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": Normalize((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "imagefolder": Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}
