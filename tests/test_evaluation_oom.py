"""An out-of-memory error in a validation or test pass: the pass goes on at half the batch size,
down to one image, with one log line, and the Trainer keeps the smaller batch; a model that
cannot evaluate even one image is one error line. The model computes on the CPU and books its
evaluation activations on the fake card (tests/fake_cuda.py), whose allocator raises torch's
real OutOfMemoryError past the memory fraction."""
from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from engine_fixtures import KeyedTrain, PlainEval, engine_config, fingerprint, tiny_vit
from fake_cuda import MIB, FakeCuda

from src.engine.device import resolve_device
from src.engine.distributed import DistributedContext
from src.engine.evaluation import evaluate_model
from src.engine.objective import CrossEntropyObjective
from src.engine.trainer import Trainer
from src.errors import UserError

CPU = torch.device("cpu")


def book_evaluation(fake: FakeCuda, model: torch.nn.Module, per_image: int, limit: int) -> None:
    """Cap the card at ``limit`` bytes; every eval-mode forward asks for ``per_image`` bytes per
    image of activations, freed when it returns (training forwards book nothing)."""
    torch.cuda.set_per_process_memory_fraction(limit / fake.properties.total_memory, resolve_device("cuda"))

    def hook(module: torch.nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        if not module.training:
            fake.allocator().alloc(per_image * inputs[0].shape[0])()

    model.register_forward_hook(hook)


def test_validation_out_of_memory_halves_the_batch_and_keeps_it(
        fake_cuda: FakeCuda, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """16 images x 40 MiB do not fit under 500 MiB, 8 do: validation goes on at 8 with one line,
    scores what a pass at 8 scores, and the test pass starts at 8 (no second error)."""
    model = tiny_vit(seed=3)
    book_evaluation(fake_cuda, model, 40 * MIB, 500 * MIB)
    trainer = Trainer(model, CrossEntropyObjective(), KeyedTrain(32), PlainEval(24),
                      engine_config(epochs=1, batch_size=16), tmp_path, device=CPU, seed=0,
                      run_fingerprint=fingerprint())
    with caplog.at_level(logging.WARNING, logger="kd_pipeline.engine"):
        trainer.fit()
    notes = [r.getMessage() for r in caplog.records if "out of GPU memory evaluating" in r.getMessage()]
    assert notes == ["out of GPU memory evaluating 16 images at a time; going on with 8"]
    assert trainer.eval_batch == 8 and fake_cuda.allocator().num_ooms == 1
    val = trainer.evaluate(PlainEval(24))
    assert fake_cuda.allocator().num_ooms == 1  # kept: the next pass did not fail again
    reference = evaluate_model(model, PlainEval(24), device=CPU, batch_size=8, num_workers=0, seed=0,
                               num_classes=PlainEval(24).num_classes)
    assert val.loss == pytest.approx(reference.loss) and (val.y_pred == reference.y_pred).all()
    assert len(val.y_pred) == 24


def test_a_model_that_cannot_evaluate_one_image_is_one_error_line(fake_cuda: FakeCuda) -> None:
    model = tiny_vit(seed=3)
    book_evaluation(fake_cuda, model, 600 * MIB, 500 * MIB)
    with pytest.raises(UserError) as caught:
        evaluate_model(model, PlainEval(8), device=CPU, batch_size=4, num_workers=0, seed=0, num_classes=10)
    message = str(caught.value)
    assert message.startswith("out of GPU memory evaluating even one image at a time;")
    assert "\n" not in message
    assert fake_cuda.allocator().num_ooms == 3  # 4, 2, then 1 image
    assert model.training  # left in the mode it came in


class OtherRankGaveUp(DistributedContext):
    """Rank 0 of 2 (no process group): the other rank could not evaluate even one image."""

    def max_codes(self, *codes: int) -> list[int]:
        return [1] * len(codes)

    def all_gather_object(self, obj: object) -> list[object]:
        raise AssertionError("waited in a collective the rank that gave up never joins")


def test_a_rank_that_gives_up_evaluating_stops_every_rank_alike() -> None:
    """This rank scored its share; the other gave up. Both raise the same line at the pass's
    agreement instead of this one waiting for predictions that never come."""
    with pytest.raises(UserError, match="^out of GPU memory evaluating even one image at a time on at least "
                                        "one of the 2 ranks; "):
        evaluate_model(tiny_vit(seed=3), PlainEval(8), device=CPU, batch_size=4, num_workers=0, seed=0,
                       num_classes=10, dist=OtherRankGaveUp(rank=0, world_size=2))
