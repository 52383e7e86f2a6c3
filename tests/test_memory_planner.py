"""The memory planner: search and checkpointing decisions against made-up memory models (CPU),
the probe's promise to leave the model untouched (CPU), and the real CUDA probe (gpu marker).
plan_stage's CUDA wiring on a fake device is in tests/test_cuda_paths.py."""
from __future__ import annotations

import json
import math

import pytest
import torch

from src.distillation.distiller import DistillationObjective
from src.engine.device import resolve_device
from src.engine.objective import CrossEntropyObjective
from src.engine.settings import TrainConfig
from src.errors import UserError
from src.memory.allocator import configure_cuda_allocator
from src.memory.planner import MemoryPlan, agree_across_ranks, choose_plan, plan_stage, search_micro_batch
from src.memory.probe import run_probe_steps
from src.memory.search import GIB, divisors
from src.models.factory import create_model

MIB = 1 << 20


def linear_memory(fixed: int, per_image: int, oom_above: int | None = None, log: list[int] | None = None):
    """peak = fixed + per_image * b; the allocator fails outright above ``oom_above`` images."""

    def measure(b: int) -> int | None:
        if log is not None:
            log.append(b)
        if oom_above is not None and b > oom_above:
            return None
        return fixed + per_image * b

    return measure


def brute_force(effective: int, measure, limit: int) -> int | None:
    ok = [d for d in divisors(effective) if (p := measure(d)) is not None and p <= limit]
    return max(ok) if ok else None


@pytest.mark.parametrize("effective", [1, 7, 45, 64, 67, 96, 128, 360])
def test_search_finds_largest_fitting_divisor_and_keeps_effective_batch(effective: int) -> None:
    fixed, per_image, budget, margin = 500 * MIB, 40 * MIB, 4 * GIB, 0.1
    limit = int(budget * (1 - margin))
    for oom_above in (None, 3, 20, 50):
        measure = linear_memory(fixed, per_image, oom_above)
        plan = search_micro_batch(effective, measure, budget, margin)
        expected = brute_force(effective, measure, limit)
        assert plan.fits and plan.micro_batch == expected
        assert effective % plan.micro_batch == 0
        assert plan.micro_batch * plan.accumulation_steps == plan.effective_batch == effective
        assert plan.peak_bytes == measure(plan.micro_batch) <= limit


def test_search_tries_full_batch_first_and_stops_when_it_fits() -> None:
    calls: list[int] = []
    plan = search_micro_batch(64, linear_memory(100 * MIB, MIB, log=calls), 6 * GIB)
    assert calls == [64]
    assert (plan.micro_batch, plan.accumulation_steps) == (64, 1)


@pytest.mark.parametrize("effective", [64, 96, 128, 360, 720])
def test_search_measures_each_candidate_once_and_few_in_total(effective: int) -> None:
    n_div = len(divisors(effective))
    bound = 2 * math.ceil(math.log2(n_div)) + 1
    for per_image in (1, 10, 40, 100, 400, 2000, 10_000):  # answers from the top of the list to "nothing"
        calls: list[int] = []
        search_micro_batch(effective, linear_memory(100 * MIB, per_image * MIB, log=calls), 6 * GIB)
        assert len(calls) == len(set(calls)) <= bound, (per_image, calls)


def test_margin_rejects_a_peak_inside_the_budget_but_above_the_margin() -> None:
    budget = 1000 * MIB
    measure = linear_memory(0, 30 * MIB)  # micro 32 -> 960 MiB: under the budget, over budget * 0.9
    assert search_micro_batch(32, measure, budget, margin=0.0).micro_batch == 32
    plan = search_micro_batch(32, measure, budget, margin=0.1)
    assert (plan.micro_batch, plan.accumulation_steps) == (16, 2)
    assert plan.peak_bytes <= plan.limit_bytes == int(budget * 0.9)


def test_start_caps_the_first_candidate() -> None:
    calls: list[int] = []
    plan = search_micro_batch(64, linear_memory(0, MIB, log=calls), 6 * GIB, start=20)
    assert calls == [16] and plan.micro_batch == 16 and plan.accumulation_steps == 4


def test_nothing_fits_is_reported_not_guessed() -> None:
    plan = search_micro_batch(12, linear_memory(7 * GIB, MIB), 6 * GIB)
    assert not plan.fits
    assert plan.peak_bytes is None
    assert 1 in [b for b, _ in plan.tried]
    assert "even micro-batch 1" in plan.reason


def test_checkpointing_is_switched_on_only_when_needed() -> None:
    state = {"gc": False}
    switch_calls: list[bool] = []

    def checkpointing(on: bool) -> bool:
        switch_calls.append(on)
        state["gc"] = on
        return True

    def measure_for(per_image_plain: int, per_image_gc: int):
        return lambda b: 1 * GIB + b * (per_image_gc if state["gc"] else per_image_plain)

    # Fits comfortably without it: never touched.
    plan = choose_plan(64, measure_for(20 * MIB, 5 * MIB), 6 * GIB, checkpointing)
    assert (plan.micro_batch, plan.gradient_checkpointing, switch_calls) == (64, False, [])

    # Only micro-batch 2 fits without it, 64 with it: on, and both searches are on record.
    plan = choose_plan(64, measure_for(1500 * MIB, 60 * MIB), 6 * GIB, checkpointing)
    assert (plan.micro_batch, plan.accumulation_steps, plan.gradient_checkpointing) == (64, 1, True)
    assert state["gc"] is True
    assert plan.tried_without_checkpointing and plan.tried == [(64, 1 * GIB + 64 * 60 * MIB)]
    assert "checkpointing on" in plan.reason

    # Checkpointing does not buy a larger micro-batch: switched back off.
    switch_calls.clear()
    plan = choose_plan(64, measure_for(1500 * MIB, 1500 * MIB), 6 * GIB, checkpointing)
    assert (plan.micro_batch, plan.gradient_checkpointing, switch_calls) == (2, False, [True, False])

    # Forced (ViT-Base): kept on whatever the search finds, the switch is not asked.
    switch_calls.clear()
    state["gc"] = True
    plan = choose_plan(64, measure_for(1500 * MIB, 20 * MIB), 6 * GIB, checkpointing,
                       force_checkpointing=True)
    assert (plan.micro_batch, plan.gradient_checkpointing, switch_calls) == (64, True, [])

    # train.grad_checkpointing=off: never asked, and the plan says why it stayed off.
    state["gc"] = False
    plan = choose_plan(64, measure_for(1500 * MIB, 20 * MIB), 6 * GIB, checkpointing,
                       allow_checkpointing=False)
    assert (plan.micro_batch, plan.gradient_checkpointing, switch_calls) == (2, False, [])
    assert plan.reason.endswith("train.grad_checkpointing is off (auto lets the planner try it)")

    # A model that cannot checkpoint: planned without it, and the plan says so.
    plan = choose_plan(64, measure_for(1500 * MIB, 20 * MIB), 6 * GIB, lambda on: not on)
    assert (plan.micro_batch, plan.gradient_checkpointing) == (2, False)
    assert plan.reason.endswith("the model cannot use gradient checkpointing")


def test_nothing_fits_even_with_checkpointing_is_a_user_error_listing_the_tries() -> None:
    expected = r"does not fit a 6\.00 GiB .*micro-batch 1.*with checkpointing 8: oom"
    with pytest.raises(UserError, match=expected):
        choose_plan(8, lambda b: None, 6 * GIB, lambda on: True, what="stage resnet50")


@pytest.mark.parametrize(("allowed", "why"), [(True, "the model cannot use gradient checkpointing"),
                                               (False, "train.grad_checkpointing is off")])
def test_nothing_fits_without_checkpointing_says_why_it_was_not_tried(allowed: bool, why: str) -> None:
    with pytest.raises(UserError) as refused:
        choose_plan(8, lambda b: None, 6 * GIB, lambda on: not on, allow_checkpointing=allowed,
                    what="stage dla46_c")
    message = str(refused.value)
    assert "\n" not in message and message.startswith("stage dla46_c does not fit a 6.00 GiB")
    assert f"without checkpointing 8: oom, 4: oom, 1: oom); {why}" in message
    assert message.endswith("; use smaller images or models, or raise --vram-budget")


def test_plan_on_cpu_keeps_the_configured_split() -> None:
    model = create_model("resnet18", num_classes=3, image_size=8)
    sample = (torch.randn(2, 3, 8, 8), torch.tensor([0, 1]))
    cfg = TrainConfig(batch_size=16, accumulation_steps=4)
    cpu = torch.device("cpu")
    plan = plan_stage(model, CrossEntropyObjective(), sample, cfg, cpu, 6.0, model_name="resnet18")
    assert (plan.micro_batch, plan.accumulation_steps, plan.gradient_checkpointing) == (16, 4, False)
    assert plan.reason.startswith("planner inactive: no CUDA")
    assert plan.apply(cfg).batch_size == 16 and plan.apply(cfg).accumulation_steps == 4
    no_budget = plan_stage(model, CrossEntropyObjective(), sample, cfg, cpu, None)
    assert no_budget.reason.startswith("planner inactive: no budget")
    assert not model.grad_checkpointing


def test_the_planner_follows_the_checkpointing_setting_not_the_model() -> None:
    model = create_model("vit_tiny", num_classes=3, image_size=16)
    sample = (torch.randn(2, 3, 16, 16), torch.tensor([0, 1]))
    cpu = torch.device("cpu")
    on = TrainConfig(batch_size=8, grad_checkpointing="on")
    plan = plan_stage(model, CrossEntropyObjective(), sample, on, cpu, 6.0)  # on: even on the CPU
    assert plan.gradient_checkpointing and model.grad_checkpointing
    for setting in ("auto", "off"):  # the model was left checkpointing; the setting decides
        model.set_grad_checkpointing(True)
        cfg = TrainConfig(batch_size=8, grad_checkpointing=setting)
        plan = plan_stage(model, CrossEntropyObjective(), sample, cfg, cpu, 6.0)
        assert not plan.gradient_checkpointing and not model.grad_checkpointing


def test_on_for_a_model_that_cannot_checkpoint_is_a_user_error() -> None:
    model = create_model("dla46_c", num_classes=3, image_size=8)  # timm: checkpointing "not supported"
    sample = (torch.randn(2, 3, 8, 8), torch.tensor([0, 1]))
    with pytest.raises(UserError, match="train.grad_checkpointing=on asks for gradient checkpointing, but "
                                        "dla46_c does not support it; set it to auto or off"):
        plan_stage(model, CrossEntropyObjective(), sample, TrainConfig(grad_checkpointing="on"),
                   torch.device("cpu"), 6.0, model_name="dla46_c")


def test_plan_dict_is_json_ready_and_marks_oom() -> None:
    plan = MemoryPlan(micro_batch=32, accumulation_steps=2, peak_bytes=3 * GIB, budget_bytes=6 * GIB,
                      margin=0.1, tried=[(64, None), (32, 3 * GIB)], reason="r")
    d = json.loads(json.dumps(plan.to_dict()))
    assert d["effective_batch"] == 64 and d["peak_mib"] == 3072.0
    assert d["tried"] == [{"micro_batch": 64, "peak_bytes": "oom"},
                          {"micro_batch": 32, "peak_bytes": 3 * GIB}]


def test_ddp_ranks_agree_on_the_smallest_micro_batch_and_keep_the_effective_batch() -> None:
    plan = search_micro_batch(96, linear_memory(0, 100 * MIB), 6 * GIB)  # this rank fits 48
    assert plan.micro_batch == 48
    assert agree_across_ranks(plan, [48, 48]) is plan
    agreed = agree_across_ranks(plan, [48, 24, 32])
    assert (agreed.micro_batch, agreed.accumulation_steps, agreed.effective_batch) == (24, 4, 96)
    assert "agreed across ranks" in agreed.reason


class CountingObjective(CrossEntropyObjective):
    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def training_step(self, model, images, labels):
        self.calls += 1
        return super().training_step(model, images, labels)


class CountingKD(DistillationObjective):
    def __init__(self, teacher: torch.nn.Module) -> None:
        super().__init__(teacher)
        self.calls = 0

    def training_step(self, model, images, labels):
        self.calls += 1
        return super().training_step(model, images, labels)


@pytest.mark.parametrize("optimizer,kd", [("sgd", False), ("adamw", True)])
def test_probe_trains_then_leaves_model_teacher_and_rng_exactly_as_before(optimizer: str, kd: bool) -> None:
    torch.manual_seed(0)
    model = create_model("resnet18", num_classes=3, image_size=8)
    model.eval()
    teacher = create_model("resnet18", num_classes=3, image_size=8)
    objective = CountingKD(teacher) if kd else CountingObjective()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    teacher_before = {k: v.clone() for k, v in teacher.state_dict().items()}
    images, labels = torch.randn(4, 3, 8, 8), torch.tensor([0, 1, 2, 0])
    cfg = TrainConfig(optimizer=optimizer, lr=0.5, grad_clip=1.0)
    rng = torch.get_rng_state()
    run_probe_steps(model, objective, images, labels, cfg, torch.device("cpu"), accumulation_steps=4)
    assert objective.calls == 4  # two windows of two micro-batches: gradients alive across a window
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # weights and BatchNorm statistics
    assert all(p.grad is None for p in model.parameters())
    assert not model.training
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(torch.equal(teacher_before[k], v) for k, v in teacher.state_dict().items())
    assert teacher.training is not kd  # the KD teacher stays frozen in eval mode


def test_allocator_setting_respects_the_user() -> None:
    env: dict[str, str] = {}
    assert configure_cuda_allocator(env) == "expandable_segments:True"
    assert env == {"PYTORCH_ALLOC_CONF": "expandable_segments:True"}
    for name in ("PYTORCH_ALLOC_CONF", "PYTORCH_CUDA_ALLOC_CONF"):
        env = {name: "max_split_size_mb:128"}
        assert configure_cuda_allocator(env) == "max_split_size_mb:128"
        assert env == {name: "max_split_size_mb:128"}


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_real_probe_fits_the_budget_and_leaves_the_model_untouched() -> None:
    device = resolve_device("cuda")  # indexed: torch.cuda.set_per_process_memory_fraction needs it
    model = create_model("resnet18", num_classes=10, image_size=32).to(device)
    before = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    sample = (torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,)))
    cfg = TrainConfig(batch_size=256, accumulation_steps=1)
    try:
        plan = plan_stage(model, CrossEntropyObjective(), sample, cfg, device, 1.0, model_name="resnet18")
        assert plan.fits and plan.micro_batch * plan.accumulation_steps == 256
        assert plan.peak_bytes <= plan.limit_bytes
        assert any(p is None or p > plan.limit_bytes for _, p in plan.tried) or plan.micro_batch == 256
        after = model.state_dict()
        assert all(torch.equal(before[k], after[k].cpu()) for k in before)
        assert all(p.grad is None for p in model.parameters())
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0, device)
