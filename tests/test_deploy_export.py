"""export.py and evaluate.py on ONNX: a real exported digits model scores through ONNX Runtime
exactly as through PyTorch; a mismatching export is refused and leaves nothing; bad input is one
``error:`` line with exit code 2; missing ONNX packages say how to install them."""
from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from src.cli.evaluate import main as evaluate_main
from src.cli.export import main as export_main
from src.cli.train import main as train_main
from src.data.build import build_datasets
from src.deploy import export as export_module
from src.evidence.chance import ChanceTest
from src.rundirs.rundir import RunDirectory

# A 4-epoch labels-only ResNet-18 (the student's architecture) on 8 px digits (30% test accuracy):
# trained, so its predictions are spread over the classes and "the same accuracy" means something.
TRAIN = ["--stages", "baseline", "--epochs", "4", "--subset", "150", "--image-size", "8", "--device", "cpu",
         "--lr", "0.01", "--set", "train.warmup_epochs=0", "--set", "report.benchmark=false"]


def one_error_line(err: str) -> str:
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    return err


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("export") / "run"
    assert train_main("cnn", ["--output-dir", str(out), *TRAIN]) == 0
    return out


def scores(checkpoint: Path, capsys: pytest.CaptureFixture[str], *extra: str) -> dict:
    assert evaluate_main(["--checkpoint", str(checkpoint), "--device", "cpu", *extra]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.slow
def test_onnx_export_scores_the_same_test_accuracy_as_pytorch(run_dir: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    assert export_main(["--run-dir", str(run_dir), "--stage", "baseline"]) == 0
    printed = capsys.readouterr().out
    onnx_file = run_dir / "baseline" / "model.onnx"
    assert f"exported stage baseline to {onnx_file} (ONNX opset 20" in printed
    assert "top-1 agrees on 150/150" in printed and "largest logit difference" in printed
    contract = json.loads((run_dir / "baseline" / "model.onnx.json").read_text())
    data = build_datasets(RunDirectory(run_dir).saved_config().data, run_dir, 42, write=False)
    assert contract["input"]["shape"] == ["batch", 3, 8, 8] and contract["input"]["channel_order"] == "RGB"
    assert contract["input"]["mean"] == list(data.mean) and contract["input"]["std"] == list(data.std)
    assert contract["class_names"] == data.class_names and contract["opset"] == 20
    assert contract["check"]["top1_agree"] == contract["check"]["images"] == 150
    through_ort = scores(onnx_file, capsys)
    through_torch = scores(run_dir / "baseline" / "model.safetensors", capsys)
    recorded = json.loads((run_dir / "baseline" / "result.json").read_text())["test"]
    assert through_ort["samples"] == through_torch["samples"] == 150
    assert through_ort["accuracy"] == through_torch["accuracy"] == pytest.approx(recorded["accuracy"])
    # a trained model, not a constant guess: above 1/10 by the exact test, with margin on any CPU
    assert not ChanceTest("baseline", round(150 * through_ort["accuracy"]), 150, 10).at_chance
    assert through_ort["f1_score"] == pytest.approx(through_torch["f1_score"])
    assert through_ort["loss"] == pytest.approx(through_torch["loss"], abs=1e-5)
    assert scores(onnx_file, capsys, "--split", "val", "--batch-size", "7")["samples"] == 150


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
def test_torchscript_export_is_checked_too(run_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert export_main(["--run-dir", str(run_dir), "--stage", "baseline", "--format", "torchscript",
                        "--images", "30"]) == 0
    assert "top-1 agrees on 30/30" in capsys.readouterr().out
    traced = torch.jit.load(str(run_dir / "baseline" / "model.torchscript.pt"))
    assert traced(torch.zeros(5, 3, 8, 8)).shape == (5, 10)  # the batch dimension is free
    contract = json.loads((run_dir / "baseline" / "model.torchscript.pt.json").read_text())
    assert contract["format"] == "torchscript" and contract["check"]["top1_agree"] == 30


@pytest.mark.slow
def test_an_export_that_differs_from_pytorch_fails_and_writes_nothing(
        run_dir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    real_export = export_module._export_onnx

    def export_perturbed(model: nn.Module, image_size: int, path: Path) -> None:
        broken = copy.deepcopy(model)
        with torch.no_grad():
            broken.fc.bias[0] += 50.0  # class 0 wins almost everywhere in the exported file
        real_export(broken, image_size, path)

    monkeypatch.setattr(export_module, "_export_onnx", export_perturbed)
    stage_dir = run_dir / "baseline"
    before = {p.name: p.stat().st_mtime_ns for p in stage_dir.iterdir()}
    assert export_main(["--run-dir", str(run_dir), "--stage", "baseline", "--images", "40"]) == 1
    err = one_error_line(capsys.readouterr().err)
    assert "does not match PyTorch" in err and "nothing was written" in err
    assert {p.name: p.stat().st_mtime_ns for p in stage_dir.iterdir()} == before  # no temp file left


@pytest.mark.slow
def test_bad_input_is_one_error_line_and_exit_2(run_dir: Path, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    def refused(*argv: str) -> str:
        try:
            code = export_main(list(argv))
        except SystemExit as exc:  # argparse's own errors exit from inside parse_args
            code = exc.code
        assert code == 2
        return one_error_line(capsys.readouterr().err)

    err = refused("--run-dir", str(run_dir), "--stage", "student")
    assert "stage 'student' has not finished" in err and "export a finished one (baseline)" in err
    err = refused("--run-dir", str(tmp_path), "--stage", "baseline")
    assert "is not a run directory (no config.yaml)" in err
    assert "invalid choice: 'tflite'" in refused("--run-dir", str(run_dir), "--format", "tflite")
    weights = run_dir / "baseline" / "model.safetensors"
    hidden = weights.with_name("moved.safetensors")
    weights.rename(hidden)
    try:
        err = refused("--run-dir", str(run_dir), "--stage", "baseline")
    finally:
        hidden.rename(weights)
    assert f"weights {weights} are missing" in err and "re-run the training command" in err
    garbage = tmp_path / "model.onnx"
    garbage.write_bytes(b"not an onnx model")
    score_garbage = ["--checkpoint", str(garbage), "--run-dir", str(run_dir), "--stage", "baseline"]
    assert evaluate_main(score_garbage) == 2
    assert "is not a readable ONNX model" in one_error_line(capsys.readouterr().err)
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(sys.modules, "onnxruntime", None)
        assert evaluate_main(score_garbage) == 2
    assert "running an ONNX model needs onnxruntime (onnxruntime not installed); install them with: " \
        "python -m pip install -r requirements-export.txt" in one_error_line(capsys.readouterr().err)


@pytest.mark.slow
def test_an_onnx_file_of_another_run_is_refused(run_dir: Path, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    other = tmp_path / "baseline" / "model.onnx"
    other.parent.mkdir()
    export_module._export_onnx(nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 10)).eval(), 16, other)
    assert evaluate_main(["--checkpoint", str(other), "--run-dir", str(run_dir)]) == 2
    err = one_error_line(capsys.readouterr().err)
    assert "feeds this stage 8x8 RGB images of 10 classes; pass the --run-dir (and --stage)" in err
    assert evaluate_main(["--checkpoint", str(other), "--run-dir", str(run_dir), "--device", "cuda"]) == 2
    assert "drop --device cuda" in one_error_line(capsys.readouterr().err)


@pytest.mark.parametrize("hidden", ["onnxruntime", "onnxscript"])
def test_missing_onnx_packages_say_how_to_install_them(hidden: str, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setitem(sys.modules, hidden, None)  # `import hidden` now raises ImportError
    assert export_main(["--run-dir", str(tmp_path)]) == 2
    err = one_error_line(capsys.readouterr().err)
    assert err == (f"error: ONNX export needs onnx, onnxscript, onnxruntime ({hidden} not installed); "
                   "install them with: python -m pip install -r requirements-export.txt\n")
    assert (Path(__file__).resolve().parents[1] / "requirements-export.txt").read_text().count(hidden) == 1


@pytest.mark.slow
def test_an_export_of_weights_the_stage_no_longer_holds_is_not_scored_as_the_stage(
        run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Continuing a stage after export.py left the old model.onnx beside the new weights, and
    evaluate.py scored the old export as the stage."""
    import shutil

    from safetensors.torch import load_file, save_file

    from src.utils.weights import tensors_sha256

    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    assert export_main(["--run-dir", str(run), "--stage", "baseline", "--images", "8"]) == 0
    # the stage trained on after the export: other weights, recorded in its result.json
    weights, result_path = run / "baseline" / "model.safetensors", run / "baseline" / "result.json"
    tensors = {k: v + 0.01 if v.is_floating_point() else v for k, v in load_file(str(weights)).items()}
    save_file(tensors, str(weights))
    result = json.loads(result_path.read_text())
    result["weights_sha256"] = tensors_sha256(tensors)
    result_path.write_text(json.dumps(result))
    capsys.readouterr()
    score = ["--checkpoint", str(run / "baseline" / "model.onnx"), "--device", "cpu"]
    assert evaluate_main(score) == 2
    err = one_error_line(capsys.readouterr().err)
    assert "was exported from other weights than stage baseline's current" in err and "is stale" in err
    assert err.rstrip().endswith(f"re-export it: python export.py --run-dir {run} --stage baseline")
    assert export_main(["--run-dir", str(run), "--stage", "baseline", "--images", "8"]) == 0  # the advice
    capsys.readouterr()
    assert scores(run / "baseline" / "model.onnx", capsys)["samples"] == 150
