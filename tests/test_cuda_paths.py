"""The product's CUDA paths, run on the fake device of tests/fake_cuda.py (torch.cuda's own Python
over replaced low-level bindings): device resolution, the planner, the peak-memory bookkeeping,
the allocator setup, the out-of-memory path, stage cleanup, mixed precision and the CUDA RNG.

Every ``torch.cuda.*`` call in the product's source belongs to a scenario (``COVERED_BY``); the
test that runs the scenario checks, with a profiler hook, that each of those calls was reached,
and ``test_every_torch_cuda_call_in_the_product_has_a_scenario`` lists the calls from the source,
so a new call cannot slip in untested.
"""
from __future__ import annotations

import ast
import sys
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import timm
import torch
import torch.distributed as torch_dist
from engine_fixtures import KeyedTrain, PlainEval, engine_config, fingerprint, tiny_cnn, tiny_vit
from fake_cuda import GIB, MIB, FakeCuda, SimulatedStep, StepMemory

import src.deploy.benchmark as benchmark_module
import src.memory.probe as probe_module
from src.deploy.cost import describe_device
from src.engine.device import resolve_device
from src.engine.device_memory import DeviceMemory
from src.engine.distributed import DistributedContext
from src.engine.objective import CrossEntropyObjective, StepOutput
from src.engine.settings import TrainConfig
from src.engine.step import resolve_precision
from src.engine.trainer import Trainer
from src.errors import UserError
from src.memory.allocator import configure_cuda_allocator
from src.memory.planner import CONTEXT_GROWTH_MARGIN, plan_stage
from src.utils.reproducibility import capture_rng_state, restore_rng_state
from src.utils.training_guards import cleanup_training_state, reset_peak_memory_stats

REPO = Path(__file__).resolve().parents[1]
MakeFake = Callable[..., FakeCuda]
CPU = torch.device("cpu")


def small_cnn() -> torch.nn.Module:
    """timm's smallest ResNet (several convolutions: a CNN to the layout rule), 3 channels, 8 px."""
    return timm.create_model("test_resnet", num_classes=3)


def small_vit() -> torch.nn.Module:
    """timm's smallest ViT on 8 px (one patch convolution; supports gradient checkpointing)."""
    return timm.create_model("test_vit", num_classes=3, img_size=8, patch_size=4)


def param_bytes(model: torch.nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


# ------------------------------------------------------------------------------- scenarios
# Each runs one CUDA path of the product on the fake device and returns what it produced; the
# tests below assert on it, and the coverage test checks which torch.cuda calls each reaches.


def devices_scenario(make_fake_cuda: MakeFake, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Single process and a torchrun rank on a two-GPU machine; an impossible local rank."""
    fake = make_fake_cuda(devices=2)
    found: dict[str, Any] = {"auto": resolve_device("auto")}
    torch.cuda.set_device(1)
    found["current"] = resolve_device("cuda")
    torch.cuda.set_device(0)
    for name, value in (("WORLD_SIZE", "2"), ("RANK", "1"), ("LOCAL_RANK", "1")):
        monkeypatch.setenv(name, value)
    found["rank"] = resolve_device("cuda")
    backends: list[str] = []
    monkeypatch.setattr(torch_dist, "is_initialized", lambda: False)
    monkeypatch.setattr(torch_dist, "init_process_group",  # no rendezvous: only the choice of backend
                        lambda backend, **kw: backends.append(backend))
    found["context"] = DistributedContext.from_env(found["rank"])
    found["backends"], found["current_after_join"] = backends, fake.current
    monkeypatch.setenv("LOCAL_RANK", "2")
    with pytest.raises(UserError) as too_many:
        resolve_device("cuda")
    found["too_many"] = str(too_many.value)
    return found


def precision_scenario(make_fake_cuda: MakeFake, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """AMP on an Ampere card and on a Turing card (which only emulates bf16)."""
    make_fake_cuda(capability=(8, 6))
    cuda = resolve_device("cuda")
    found = {"ampere auto": resolve_precision("auto", cuda), "ampere bf16": resolve_precision("bf16", cuda)}
    monkeypatch.undo()
    make_fake_cuda(capability=(7, 5))
    found["turing auto"] = resolve_precision("auto", resolve_device("cuda"))
    return found


def plan_on_fake(fake: FakeCuda, monkeypatch: pytest.MonkeyPatch, model: torch.nn.Module, image_size: int,
                 budget_gb: float, memory: StepMemory, dist: DistributedContext | None = None,
                 checkpointing: str = "auto") -> tuple[Any, type[SimulatedStep]]:
    """plan_stage for ``model`` (effective batch 64) on the fake card, the probe's step booking ``memory``."""
    step = SimulatedStep.using(fake, memory)
    monkeypatch.setattr(probe_module, "UpdateStep", step)
    device = resolve_device("cuda")
    fake.allocator().hold(param_bytes(model), model)  # the weights are on the card
    sample = (torch.randn(2, 3, image_size, image_size), torch.tensor([0, 1]))
    cfg = TrainConfig(batch_size=32, accumulation_steps=2, grad_checkpointing=checkpointing)
    plan = plan_stage(model, CrossEntropyObjective(), sample, cfg, device, budget_gb,
                      model_name=type(model).__name__, dist=dist)
    return plan, step


def planner_scenario(fake_cuda: FakeCuda, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    model = small_cnn()
    plan, step = plan_on_fake(fake_cuda, monkeypatch, model, 8, 6.0, StepMemory(200 * MIB, 50 * MIB))
    return {"plan": plan, "step": step, "model": model}


def allocator_scenario(fake_cuda: FakeCuda, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    for name in ("PYTORCH_ALLOC_CONF", "PYTORCH_CUDA_ALLOC_CONF"):
        monkeypatch.delenv(name, raising=False)
    chosen = configure_cuda_allocator()  # as cli.run does, before anything touches CUDA
    torch.cuda.init()
    monkeypatch.delenv("PYTORCH_ALLOC_CONF")
    too_late = configure_cuda_allocator()
    return {"chosen": chosen, "parsed at init": fake_cuda.allocator_settings, "too late": too_late}


class BookedActivations(CrossEntropyObjective):
    """Cross-entropy whose forward books its activations on the fake card for as long as its
    logits live, then a workspace of the same size on top (where a step runs out of memory)."""

    def __init__(self, fake: FakeCuda, per_image_by_epoch: dict[int, int]) -> None:
        super().__init__()
        self.fake, self.per_image_by_epoch, self.epoch = fake, per_image_by_epoch, 1

    def on_epoch_start(self, epoch: int, total_epochs: int) -> None:
        self.epoch = epoch

    def training_step(self, model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor) -> StepOutput:
        out = super().training_step(model, images, labels)
        size = self.per_image_by_epoch[self.epoch] * images.shape[0]
        self.fake.allocator().hold(size, out.logits)
        self.fake.allocator().alloc(size)()
        return out


def trainer_scenario(fake_cuda: FakeCuda, tmp_path: Path, per_image_by_epoch: dict[int, int],
                     limit: int | None = None) -> dict[str, Any]:
    """A Trainer whose memory bookkeeping reads the fake card; the model computes on the CPU
    (tensors cannot live on the fake device) and books its activations there."""
    objective = BookedActivations(fake_cuda, per_image_by_epoch)
    trainer = Trainer(tiny_vit(seed=3), objective, KeyedTrain(32), PlainEval(8),
                      engine_config(epochs=len(per_image_by_epoch), batch_size=16), tmp_path, device=CPU,
                      seed=0, run_fingerprint=fingerprint())
    cuda = resolve_device("cuda")
    trainer.memory = DeviceMemory(cuda)
    if limit is not None:
        torch.cuda.set_per_process_memory_fraction(limit / fake_cuda.properties.total_memory, cuda)
    at_empty_cache: list[int] = []
    fake_cuda.on_empty_cache.append(lambda: at_empty_cache.append(fake_cuda.allocator().allocated.current))
    result = trainer.fit()
    return {"trainer": trainer, "result": result, "at_empty_cache": at_empty_cache}


def cleanup_scenario(fake_cuda: FakeCuda) -> dict[str, Any]:
    """The training_guards call with model, optimizer, scheduler and scaler the caller keeps holding; every
    tensor of theirs is booked on the fake card for as long as it lives."""
    torch.cuda.init()
    model = tiny_cnn()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1)
    scaler = torch.amp.GradScaler("cuda", enabled=False)
    images, labels = torch.randn(4, 1, 8, 8), torch.tensor([0, 1, 2, 3])
    torch.nn.functional.cross_entropy(model(images), labels).backward()
    optimizer.step()
    torch.nn.functional.cross_entropy(model(images), labels).backward()  # gradients held again
    allocator = fake_cuda.allocator()
    state = [t for s in optimizer.state.values() for t in s.values() if isinstance(t, torch.Tensor)]
    for tensor in [*model.parameters(), *[p.grad for p in model.parameters()], *state]:
        allocator.hold(tensor.numel() * tensor.element_size(), tensor)
    state_refs = [weakref.ref(t) for t in state]
    del state, tensor  # the caller keeps model, optimizer, scheduler and scaler, nothing else
    before = torch.cuda.memory_allocated()
    at_empty_cache: list[int] = []
    fake_cuda.on_empty_cache.append(lambda: at_empty_cache.append(allocator.allocated.current))
    info = cleanup_training_state(model=model, optimizer=optimizer, scheduler=scheduler, scaler=scaler,
                                  verbose=True)
    return {"model": model, "optimizer": optimizer, "before": before, "after": torch.cuda.memory_allocated(),
            "info": info, "state_refs": state_refs, "at_empty_cache": at_empty_cache}


def seed_peak_reset_scenario(fake_cuda: FakeCuda) -> dict[str, Any]:
    reset_peak_memory_stats()  # before CUDA started: nothing to reset, and no error
    found: dict[str, Any] = {"initialized by it": fake_cuda.initialized}
    torch.cuda.init()
    fake_cuda.allocator().alloc(100 * MIB)()
    found["peak before"] = torch.cuda.max_memory_allocated()
    reset_peak_memory_stats()
    found["peak after"] = torch.cuda.max_memory_allocated()
    return found


def rng_scenario(fake_cuda: FakeCuda) -> dict[str, Any]:
    """A checkpoint's RNG capture and restore over the CUDA generators."""
    state = capture_rng_state()
    generator = torch.cuda.default_generators[0]
    first = torch.randn(4, generator=generator)
    restore_rng_state(state)
    return {"state": state, "first": first, "again": torch.randn(4, generator=generator)}


class BookedForward(torch.nn.Module):
    """A classifier that computes on the CPU and books ``per_image`` bytes of activations on the
    fake card, half for its hidden layer and half for its output, each for as long as that tensor
    lives. Past the memory fraction the fake allocator raises torch's real OutOfMemoryError at the
    second booking, as a card would, while the hidden layer is still held by the failing frame."""

    def __init__(self, fake: FakeCuda, per_image: int) -> None:
        super().__init__()
        self.fake, self.per_image = fake, per_image
        self.head = torch.nn.Linear(3, 2)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        hidden = images.mean(dim=(2, 3))
        self.fake.allocator().hold(self.per_image * images.shape[0] // 2, hidden)
        out = self.head(hidden)
        self.fake.allocator().hold(self.per_image * images.shape[0] // 2, out)
        return out


def deploy_scenario(fake_cuda: FakeCuda, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """The report's cost measurement on a card with 1 GiB left: the throughput batch is halved
    until both models fit, then both are timed (device synchronised around every call)."""
    monkeypatch.setattr(benchmark_module, "_images",  # pixels stay on the CPU; the models book memory
                        lambda count, size, device: torch.randn(count, 3, size, size))
    cuda = resolve_device("cuda")
    torch.cuda.set_per_process_memory_fraction(GIB / fake_cuda.properties.total_memory, cuda)
    models = {"teacher": BookedForward(fake_cuda, 40 * MIB), "student": BookedForward(fake_cuda, 10 * MIB)}
    at_empty_cache: list[int] = []
    fake_cuda.on_empty_cache.append(lambda: at_empty_cache.append(fake_cuda.allocator().allocated.current))
    sizes = dict.fromkeys(models, 8)
    batch = benchmark_module.fitting_batch(models, sizes, cuda, 64)
    speeds = benchmark_module.time_models(models, sizes, cuda, batch=batch, budget_s=0.01)
    return {"batch": batch, "speeds": speeds, "device": describe_device(cuda),
            "at_empty_cache": at_empty_cache, "synchronized": fake_cuda.calls.count("_cuda_synchronize")}


# ------------------------------------------------------------------------------- behaviour


def test_fake_device_runs_torch_cuda_python_and_refuses_an_unindexed_device(fake_cuda: FakeCuda) -> None:
    """The fixture itself: torch.cuda's real argument checks run, tensors still cannot be made."""
    assert torch.cuda.is_available() and torch.cuda.device_count() == 1
    with pytest.raises(ValueError, match="specified index"):  # an unindexed device: what every run once hit
        torch.cuda.set_per_process_memory_fraction(0.5, torch.device("cuda"))
    with pytest.raises(TypeError, match="float"):
        torch.cuda.set_per_process_memory_fraction(1, torch.device("cuda", 0))
    torch.cuda.set_per_process_memory_fraction(0.5, torch.device("cuda", 0))
    assert fake_cuda.allocator().limit == 3 * GIB
    with pytest.raises(torch.OutOfMemoryError):
        fake_cuda.allocator().alloc(4 * GIB)
    with pytest.raises(RuntimeError):
        torch.empty(1, device="cuda")


def test_resolve_device_returns_an_indexed_device_for_the_process_and_each_rank(
        make_fake_cuda: MakeFake, monkeypatch: pytest.MonkeyPatch) -> None:
    found = covering("devices", lambda: devices_scenario(make_fake_cuda, monkeypatch))
    assert found["auto"] == torch.device("cuda", 0)
    assert found["current"] == torch.device("cuda", 1)
    assert found["rank"] == torch.device("cuda", 1)  # torchrun's LOCAL_RANK
    context = found["context"]
    assert (context.rank, context.world_size, context.comm_device) == (1, 2, "cuda:1")
    assert found["backends"] == ["nccl"] and found["current_after_join"] == 1
    assert "GPU 2" in found["too_many"] and "2 CUDA device(s)" in found["too_many"]


def test_resolve_device_without_cuda_is_a_user_error_or_the_cpu() -> None:
    assert resolve_device("auto") == CPU and resolve_device("cpu") == CPU
    with pytest.raises(UserError, match="no CUDA device is available; use --device cpu or auto"):
        resolve_device("cuda")


@pytest.mark.slow
def test_planner_caps_the_process_and_fits_the_search_through_torch_cuda(
        fake_cuda: FakeCuda, monkeypatch: pytest.MonkeyPatch) -> None:
    """The cap goes through the real set_per_process_memory_fraction: the device from
    resolve_device carries the index it needs. The probe measures the layout that trains (the CNN
    channels-last, as the Trainer makes it)."""
    found = covering("planner", lambda: planner_scenario(fake_cuda, monkeypatch))
    plan, model = found["plan"], found["model"]
    weights = param_bytes(model)
    # micro 64 and 32 do not fit the 6 GiB card (the fake allocator raises torch's OutOfMemoryError)
    assert [b for b, peak in plan.tried if peak is None] == [64, 32]
    assert (plan.micro_batch, plan.accumulation_steps, plan.gradient_checkpointing) == (16, 4, False)
    # weights + gradients + momentum + 16 images of activations, as booked by the probe's steps
    assert plan.peak_bytes == 3 * weights + 16 * 200 * MIB
    # the 6 GiB card offers 6 GiB less the context margin: the cap is that, not the whole card
    assert fake_cuda.allocator().fraction == (6 * GIB - CONTEXT_GROWTH_MARGIN) / (6 * GIB)
    assert fake_cuda.allocator().num_ooms >= 2
    # the probes left nothing behind, and the stage's peak window starts clean
    assert torch.cuda.memory_allocated(0) == weights == torch.cuda.max_memory_allocated(0)
    assert found["step"].seen and all(seen == (True, True) for seen in found["step"].seen)  # weights, inputs


@pytest.mark.slow
def test_planner_caps_a_larger_card_at_the_budget(fake_cuda: FakeCuda,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    model = small_cnn()
    plan, _ = plan_on_fake(fake_cuda, monkeypatch, model, 8, 3.0, StepMemory(200 * MIB, 50 * MIB))
    assert fake_cuda.allocator().fraction == 0.5  # 3 of the card's 6 GiB
    assert plan.micro_batch == 8 and plan.peak_bytes <= plan.limit_bytes < 3 * GIB


@pytest.mark.slow
def test_ddp_ranks_take_the_smallest_micro_batch_any_rank_fitted(fake_cuda: FakeCuda,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    class OtherRankFitsFour(DistributedContext):  # the other rank's answer, without a process group
        def all_gather_object(self, obj: Any) -> list[Any]:
            return [obj, 4]

    plan, _ = plan_on_fake(fake_cuda, monkeypatch, small_cnn(), 8, 6.0, StepMemory(200 * MIB, 50 * MIB),
                           dist=OtherRankFitsFour(rank=0, world_size=2))
    # this rank fitted 16 (measured); 4 was never measured here, so its peak is unknown
    assert (plan.micro_batch, plan.accumulation_steps, plan.peak_bytes) == (4, 16, None)
    assert "agreed across ranks" in plan.reason


@pytest.mark.slow
def test_planner_turns_checkpointing_on_for_a_vit_when_only_a_tiny_micro_batch_fits(
        fake_cuda: FakeCuda, monkeypatch: pytest.MonkeyPatch) -> None:
    model = small_vit()
    plan, step = plan_on_fake(fake_cuda, monkeypatch, model, 8, 6.0, StepMemory(1500 * MIB, 60 * MIB))
    assert plan.gradient_checkpointing and model.grad_checkpointing
    assert (plan.micro_batch, plan.accumulation_steps) == (64, 1) and plan.tried_without_checkpointing
    assert step.seen and all(seen == (False, False) for seen in step.seen)  # one conv: stays as it is


@pytest.mark.slow
@pytest.mark.parametrize(("make_model", "setting", "why"), [
    (lambda: timm.create_model("dla46_c", num_classes=3), "auto",  # timm: checkpointing "not supported"
     "the model cannot use gradient checkpointing"),
    (small_vit, "off", "train.grad_checkpointing is off (auto lets the planner try it)"),
])
def test_a_stage_that_does_not_fit_without_checkpointing_says_why_it_was_not_tried(
        fake_cuda: FakeCuda, monkeypatch: pytest.MonkeyPatch, make_model: Callable[[], torch.nn.Module],
        setting: str, why: str) -> None:
    model = make_model()
    memory = StepMemory(8 * GIB, 10 * MIB)  # 8 GiB an image: not even micro-batch 1 fits 6 GiB
    with pytest.raises(UserError) as refused:
        plan_on_fake(fake_cuda, monkeypatch, model, 8, 6.0, memory, checkpointing=setting)
    message = str(refused.value)  # one line: what was tried, why checkpointing was not, the fixes
    assert "\n" not in message and "does not fit a 5.75 GiB VRAM budget" in message  # 6 GiB less the margin
    assert "(tried without checkpointing 64: oom" in message
    assert message.endswith(f"1: oom); {why}; use smaller images or models, or raise --vram-budget")
    assert not getattr(model, "grad_checkpointing", False)


def test_allocator_setting_is_in_force_when_cuda_starts(fake_cuda: FakeCuda, monkeypatch: pytest.MonkeyPatch,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    found = covering("allocator", lambda: allocator_scenario(fake_cuda, monkeypatch))
    assert found["chosen"] == found["parsed at init"] == "expandable_segments:True"
    if hasattr(torch._C, "_accelerator_getAllocatorSettings"):  # torch >= 2.14 can say what it parsed
        assert torch._C._accelerator_getAllocatorSettings() == "expandable_segments:True"
    assert found["too late"] is None and "cannot take effect" in caplog.text


def test_epoch_peaks_are_per_epoch_and_result_peaks_include_reserved(fake_cuda: FakeCuda,
                                                                     tmp_path: Path) -> None:
    found = trainer_scenario(fake_cuda, tmp_path, {1: 8 * MIB, 2: 2 * MIB})
    table = pd.read_csv(tmp_path / "epochs.csv")
    # activations booked for a micro-batch of 16, plus a workspace as large: reset at each epoch start
    assert table["gpu_memory_mb"].tolist() == [256.0, 64.0]
    result = found["result"]
    assert result.peak_gpu_memory_mb == 256.0
    assert result.peak_gpu_reserved_mb == 256.0  # the cache kept epoch 1's segments through epoch 2
    records = [r for r in pd.read_json(tmp_path / "metrics.jsonl", lines=True).to_dict("records")
               if r.get("event") == "epoch_memory"]
    assert [(r["epoch"], r["peak_allocated_mb"], r["peak_reserved_mb"]) for r in records] == \
        [(1, 256.0, 256.0), (2, 64.0, 256.0)]


def test_out_of_memory_empties_the_cache_only_after_the_failed_window_is_unreachable(
        fake_cuda: FakeCuda, tmp_path: Path) -> None:
    """On the allocator's own figures: micro-batch 16 books 320 MiB of activations
    (held by its logits) and then runs out of memory asking for its 320 MiB workspace under a
    500 MiB cap. When empty_cache runs those 320 MiB must already be free: an empty_cache inside
    the except clause (whose traceback still holds the logits) would return nothing."""
    found = trainer_scenario(fake_cuda, tmp_path, {1: 20 * MIB}, limit=500 * MIB)
    assert (found["result"].micro_batch, found["result"].accumulation_steps) == (8, 2)
    assert found["trainer"].oom_history == ["micro-batch 16"]
    assert found["at_empty_cache"] == [0]
    assert fake_cuda.allocator().num_ooms == 1


def test_cleanup_releases_what_the_caller_still_holds(fake_cuda: FakeCuda,
                                                      capsys: pytest.CaptureFixture) -> None:
    found = covering("cleanup", lambda: cleanup_scenario(fake_cuda))
    model, optimizer = found["model"], found["optimizer"]
    weights = param_bytes(model)
    assert found["before"] > 3 * weights  # weights, gradients, AdamW's two moments
    assert found["after"] == weights == found["at_empty_cache"][0]  # freed before the cache was emptied
    assert all(ref() is None for ref in found["state_refs"])
    assert all(p.grad is None for p in model.parameters()) and not optimizer.state
    info = found["info"]
    assert info["allocated_mb"] == pytest.approx(weights / 1e6)
    assert info["released_mb"] == pytest.approx((found["before"] - weights) / 1e6)
    assert "Cleanup: released" in capsys.readouterr().out
    torch.nn.functional.cross_entropy(model(torch.randn(2, 1, 8, 8)), torch.tensor([0, 1])).backward()
    optimizer.step()  # the caller's objects still work


def test_seed_reset_peak_memory_stats_before_and_after_cuda_starts(fake_cuda: FakeCuda) -> None:
    """torch's allocator refuses a peak reset before CUDA started ("did you call init?"); the
    seed's reset_peak_memory_stats() is called at epoch starts, possibly before any CUDA use."""
    found = covering("seed peak reset", lambda: seed_peak_reset_scenario(fake_cuda))
    assert found["initialized by it"] is False
    assert (found["peak before"], found["peak after"]) == (100 * MIB, 0)


def test_checkpoint_rng_capture_restores_the_cuda_generators(fake_cuda: FakeCuda) -> None:
    found = covering("rng", lambda: rng_scenario(fake_cuda))
    assert len(found["state"]["cuda"]) == 1
    assert torch.equal(found["first"], found["again"])


def test_auto_precision_follows_the_card(make_fake_cuda: MakeFake,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    found = covering("precision", lambda: precision_scenario(make_fake_cuda, monkeypatch))
    assert found["ampere auto"] == (torch.bfloat16, None) and found["ampere bf16"] == (torch.bfloat16, None)
    dtype, scaler = found["turing auto"]
    assert dtype == torch.float16 and scaler is not None and scaler.is_enabled()


# ------------------------------------------------------------------------------- coverage

# Which scenario reaches the torch.cuda calls of each product function (file, function).
COVERED_BY = {
    ("src/deploy/benchmark.py", "_synchronize"): "deploy",
    ("src/deploy/cost.py", "describe_device"): "deploy",
    ("src/engine/device.py", "resolve_device"): "devices",
    ("src/engine/distributed.py", "from_env"): "devices",
    ("src/engine/step.py", "resolve_precision"): "precision",
    ("src/engine/device_memory.py", "reset_peaks"): "planner",
    ("src/engine/device_memory.py", "peaks"): "planner",
    ("src/engine/device_memory.py", "release_cached"): "planner",
    ("src/engine/device_memory.py", "reset_peak_memory_stats"): "seed peak reset",
    ("src/memory/allocator.py", "configure_cuda_allocator"): "allocator",
    ("src/memory/cleanup.py", "_cuda_memory_mb"): "cleanup",
    ("src/memory/cleanup.py", "cleanup_training_state"): "cleanup",
    ("src/memory/planner.py", "plan_stage"): "planner",
    ("src/memory/planner.py", "usable_budget"): "planner",
    ("src/utils/reproducibility.py", "capture_rng_state"): "rng",
    ("src/utils/reproducibility.py", "restore_rng_state"): "rng",
}
PRODUCT_SOURCES = ("src", "cnn_distillation", "vit_distillation", "evaluate.py")  # bench/ runs on GPUs only


def cuda_call_sites() -> dict[tuple[str, str], set[tuple[int, str]]]:
    """(file, enclosing function) -> {(line, torch.cuda function)} for every ``torch.cuda.X(...)``."""
    sites: dict[tuple[str, str], set[tuple[int, str]]] = {}
    files = [path for root in PRODUCT_SOURCES
             for path in ([REPO / root] if root.endswith(".py") else sorted((REPO / root).rglob("*.py")))]

    def visit(node: ast.AST, path: str, function: str) -> None:
        for child in ast.iter_child_nodes(node):
            inner = child.name if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)) else function
            if isinstance(child, ast.Call) and isinstance(child.func, ast.Attribute):
                owner = child.func.value
                if isinstance(owner, ast.Attribute) and owner.attr == "cuda" \
                        and isinstance(owner.value, ast.Name) and owner.value.id == "torch":
                    sites.setdefault((path, function), set()).add((child.lineno, child.func.attr))
            visit(child, path, inner)

    for file in files:
        visit(ast.parse(file.read_text()), file.relative_to(REPO).as_posix(), "<module>")
    return sites


def reached_sites(run: Callable[[], Any],
                  names: set[str]) -> tuple[Any, set[tuple[str, str, int, str]]]:
    """Run ``run`` and return its result with the (file, function, line, torch.cuda function) of
    every product call to ``torch.cuda.<name>`` it made. The functions are wrapped for the run
    only to note their caller; the real ones still do the work."""
    reached: set[tuple[str, str, int, str]] = set()

    def noting(name: str, function: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            caller = sys._getframe(1)
            path = Path(caller.f_code.co_filename)
            if path.is_relative_to(REPO):
                reached.add((path.relative_to(REPO).as_posix(), caller.f_code.co_name, caller.f_lineno, name))
            return function(*args, **kwargs)
        return call

    with pytest.MonkeyPatch.context() as patch:
        for name in names:
            patch.setattr(torch.cuda, name, noting(name, getattr(torch.cuda, name)))
        result = run()
    return result, reached


def covering(scenario: str, run: Callable[[], Any]) -> Any:
    """Run a scenario and check that it reached every torch.cuda call COVERED_BY gives it."""
    expected = {(path, function, line, name) for (path, function), calls in cuda_call_sites().items()
                if COVERED_BY.get((path, function)) == scenario for line, name in calls}
    result, reached = reached_sites(run, {name for *_, name in expected})
    assert expected and expected <= reached, f"{scenario} did not reach: {sorted(expected - reached)}"
    return result


def test_every_torch_cuda_call_in_the_product_has_a_scenario() -> None:
    missing = sorted(set(cuda_call_sites()) - set(COVERED_BY))
    assert not missing, f"torch.cuda calls with no fake-CUDA scenario (add one to COVERED_BY): {missing}"
    assert not set(COVERED_BY) - set(cuda_call_sites()), "COVERED_BY names functions without torch.cuda calls"
    source = Path(__file__).read_text()
    unchecked = [name for name in set(COVERED_BY.values()) if f'covering("{name}"' not in source]
    assert not unchecked, f"scenarios no test runs through covering(): {unchecked}"


def test_cost_measurement_halves_the_batch_to_fit_and_times_synchronised(
        fake_cuda: FakeCuda, monkeypatch: pytest.MonkeyPatch) -> None:
    found = covering("deploy", lambda: deploy_scenario(fake_cuda, monkeypatch))
    assert found["batch"] == 16  # 64 x 40 MiB and 32 x 40 MiB do not fit 1 GiB; 16 x 40 MiB does
    # the cache was emptied only once the failed forwards' tensors were gone
    assert found["at_empty_cache"] and set(found["at_empty_cache"]) == {0}
    assert set(found["speeds"]) == {"teacher", "student"}
    assert all(speed.batch == 16 for speed in found["speeds"].values())
    assert found["synchronized"] >= 2 * (benchmark_module.MIN_ROUNDS * (benchmark_module.LATENCY_REPEATS + 1))
    assert found["device"] == f"CUDA, {fake_cuda.properties.name}"
