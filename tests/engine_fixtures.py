"""Tiny real pieces for the engine tests: sklearn's 8x8 digits as keyed datasets, a timm model
with dropout and drop-path, and a runnable training script (``python -m`` or torchrun) that the
kill/resume and DDP tests start as real processes."""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path
from typing import Any

import timm
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import Dataset

from src.engine.objective import CrossEntropyObjective, Objective, StepOutput
from src.engine.settings import TrainConfig
from src.utils.reproducibility import derive_seed

NUM_CLASSES = 10


def digits_tensors(count: int, offset: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``count`` digits as [N, 1, 8, 8] floats in [0, 1] and their labels."""
    data = load_digits()
    images = torch.tensor(data.images[offset : offset + count], dtype=torch.float32).unsqueeze(1) / 16.0
    return images, torch.tensor(data.target[offset : offset + count], dtype=torch.long)


class KeyedTrain(Dataset):
    """Training set keyed by (epoch, index): noise and flips drawn from derive_seed(seed, epoch,
    index), as the product's datasets do, so a resumed run must reproduce them."""

    def __init__(self, count: int, seed: int = 0) -> None:
        self.images, labels = digits_tensors(count)
        self.targets = labels.tolist()
        self.num_classes = NUM_CLASSES
        self.seed = seed

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, int]:
        epoch, index = key
        generator = torch.Generator().manual_seed(derive_seed(self.seed, epoch, index))
        image = self.images[index] + 0.05 * torch.randn(self.images[index].shape, generator=generator)
        if torch.rand((), generator=generator) < 0.5:
            image = image.flip(-1)
        return image, self.targets[index]


class PlainEval(Dataset):
    """Validation/test set with int keys and no randomness."""

    def __init__(self, count: int, offset: int = 1000) -> None:
        self.images, labels = digits_tensors(count, offset)
        self.targets = labels.tolist()
        self.num_classes = NUM_CLASSES

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.images[index], self.targets[index]


class ScriptedLoss(Objective):
    """Cross-entropy, except that chosen calls return a non-finite loss: NaN times the loss
    (connected to the graph) or loss + inf (grads stay finite: only the engine's guard can
    catch it)."""

    def __init__(self, bad_calls: set[int], kind: str = "nan") -> None:
        self.bad_calls, self.kind, self.calls = bad_calls, kind, 0

    def training_step(self, model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor) -> StepOutput:
        self.calls += 1
        logits = model(images)
        loss = F.cross_entropy(logits, labels)
        if self.calls in self.bad_calls:
            loss = loss * float("nan") if self.kind == "nan" else loss + float("inf")
        return StepOutput(logits, loss, {"ce": loss.detach()})


class OutOfMemoryAt(Objective):
    """Cross-entropy that raises the real torch.OutOfMemoryError on chosen calls, after the
    forward (as a GPU does when the backward's buffers do not fit); the injected stand-in for
    a CUDA out-of-memory error, which cannot happen on the CPU."""

    def __init__(self, bad_calls: set[int]) -> None:
        self.bad_calls, self.calls = bad_calls, 0

    def training_step(self, model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor) -> StepOutput:
        self.calls += 1
        logits = model(images)
        if self.calls in self.bad_calls:
            raise torch.OutOfMemoryError(f"CUDA out of memory (injected at call {self.calls})")
        loss = F.cross_entropy(logits, labels)
        return StepOutput(logits, loss, {"ce": loss.detach()})


class CrossEntropyAt(CrossEntropyObjective):
    """Cross-entropy that does something at its ``call``-th training step (subclasses say what);
    it has cross-entropy's fingerprint, so a resume with plain cross-entropy accepts it."""

    def __init__(self, call: int) -> None:
        super().__init__()
        self.call, self.calls = call, 0

    def fingerprint(self) -> dict[str, Any]:
        return CrossEntropyObjective().fingerprint()

    def due(self) -> bool:
        """Count one step; True on the chosen one."""
        self.calls += 1
        return self.calls == self.call


def tiny_cnn(seed: int = 0, in_chans: int = 1) -> nn.Module:
    """timm's smallest ResNet, with dropout and drop-path so RNG restore matters."""
    torch.manual_seed(seed)
    return timm.create_model("test_resnet", num_classes=NUM_CLASSES, in_chans=in_chans, drop_rate=0.2,
                             drop_path_rate=0.1)


def tiny_vit(seed: int = 0, drop: float = 0.0) -> nn.Module:
    """timm's smallest ViT (no batch norm) on 8x8 inputs."""
    torch.manual_seed(seed)
    return timm.create_model("test_vit", num_classes=NUM_CLASSES, in_chans=1, img_size=8, patch_size=4,
                             drop_rate=drop)


def engine_config(**overrides: Any) -> TrainConfig:
    base = dict(epochs=2, batch_size=16, lr=0.05, scheduler="cosine", warmup_epochs=0.0, log_interval=2,
                progress="off", patience=None, weight_decay=1e-4)
    base.update(overrides)
    return TrainConfig(**base)


def fingerprint(**extra: Any) -> dict[str, Any]:
    facts = {"model": "test_resnet", "data": "digits-8x8", "image_size": 8, "num_classes": NUM_CLASSES}
    return {**facts, **extra}


def record_writes_under(folder: Path) -> list[str]:
    """Audit-hook record of every file this process creates, renames, removes or opens for
    writing inside ``folder`` (how the DDP test proves that only rank 0 writes)."""
    writes: list[str] = []
    root = str(folder.resolve())

    def hook(event: str, args: tuple[Any, ...]) -> None:
        if event == "open" and isinstance(args[0], (str, Path)):
            mode, flags = args[1] or "", args[2] or 0
            if not (set(str(mode)) & set("wax+") or flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT)):
                return
        elif event not in ("tempfile.mkstemp", "os.rename", "os.remove", "os.mkdir"):
            return
        path = str(args[0])
        if path.startswith(root):
            writes.append(f"{event} {path}")

    sys.addaudithook(hook)
    return writes


def main(argv: list[str] | None = None) -> int:
    """Train the tiny CNN into ``stage_dir`` (resuming when a checkpoint is there) and write
    the final weights to ``stage_dir/final.pt``; used as a real process by the tests."""
    parser = argparse.ArgumentParser()
    parser.add_argument("stage_dir", type=Path)
    parser.add_argument("--config", default="{}", help="TrainConfig overrides as JSON")
    parser.add_argument("--train", type=int, default=192)
    parser.add_argument("--val", type=int, default=64)
    parser.add_argument("--ddp", action="store_true")
    parser.add_argument("--oom", default="", help="RANK:CALL,...: out-of-memory errors to inject")
    parser.add_argument("--nan", default="", help="RANK:CALL,...: NaN losses to inject")
    parser.add_argument("--dump-ranks", action="store_true",
                        help="every rank writes rank<R>.pt (weights) and rank<R>.json (split, updates)")
    parser.add_argument("--data", choices=("keyed", "digits"), default="keyed",
                        help="keyed: KeyedTrain/PlainEval; digits: the product's datasets (batched path, "
                        "augmentation on, at most --train samples per split)")
    args = parser.parse_args(argv)

    from src.config.schema import RuntimeConfig
    from src.data.build import build_datasets
    from src.data.settings import DataConfig
    from src.engine.distributed import DistributedContext, keep_exit_code_under_torchrun
    from src.engine.trainer import Trainer
    from src.errors import KDPipelineError
    from src.utils.reproducibility import setup_reproducibility

    torch.set_num_threads(1)
    setup_reproducibility(0, deterministic=RuntimeConfig().deterministic)  # the product's default
    dist = DistributedContext.from_env(torch.device("cpu")) if args.ddp else None
    writes = record_writes_under(args.stage_dir) if dist is not None and not dist.is_main else None
    cfg = engine_config(**json.loads(args.config))
    rank = dist.rank if dist is not None else 0
    def calls(script: str) -> set[int]:
        return {int(call) for where in script.split(",") if where for r, call in [where.split(":")]
                if int(r) == rank}

    objective = (OutOfMemoryAt(calls(args.oom)) if args.oom else ScriptedLoss(calls(args.nan)) if args.nan
                 else CrossEntropyObjective())
    if args.data == "digits":
        data = build_datasets(DataConfig(image_size=8, subset=args.train), None, seed=0)
        model, train, val = tiny_cnn(in_chans=3), data.train, data.val
    else:
        model, train, val = tiny_cnn(), KeyedTrain(args.train), PlainEval(args.val)
    trainer = Trainer(model, objective, train, val, cfg, args.stage_dir,
                      device=torch.device("cpu"), seed=0, run_fingerprint=fingerprint(), dist=dist)
    try:
        result = trainer.fit()
    except KDPipelineError as exc:
        keep_exit_code_under_torchrun()  # as src/cli/train.py does
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    finally:
        if dist is not None:
            dist.destroy()
        if writes is not None:
            report = args.stage_dir.parent / f"writes_rank{trainer.dist.rank}.json"
            report.write_text(json.dumps(writes))
    if args.dump_ranks:
        torch.save(trainer.model.state_dict(), args.stage_dir / f"rank{rank}.pt")
        split = {"micro_batch": result.micro_batch, "accumulation_steps": result.accumulation_steps,
                 "global_step": trainer.global_step, "updates": trainer.schedule.num_updates,
                 "oom_history": trainer.oom_history}
        (args.stage_dir / f"rank{rank}.json").write_text(json.dumps(split))
    if trainer.dist.is_main:
        torch.save(trainer.model.state_dict(), args.stage_dir / "final.pt")
        summary = {k: str(v) for k, v in dataclasses.asdict(result).items()}
        (args.stage_dir / "result.json").write_text(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
