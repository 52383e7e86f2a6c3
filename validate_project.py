#!/usr/bin/env python3
"""The checks to pass before every commit: layout, imports, the CSV contract, fast tests, smoke runs.

Prints one line per check (``[ok] name`` or ``[FAIL] name: why``), then ``All validations
passed`` and exits 0, or exits 1 when any check failed. Run it from anywhere:
``python validate_project.py`` (``make validate``).
"""
from __future__ import annotations

import argparse
import importlib
import pkgutil
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent

# the top-level names the project promises (docs/CONTRACTS.md, "Layout")
LAYOUT = [
    "requirements.txt", "README.md", "Makefile", "pyproject.toml", ".ci/run", "validate_project.py",
    "clean.sh", "cnn_distillation/train.py", "cnn_distillation/configs/", "vit_distillation/train.py",
    "vit_distillation/configs/", "src/__init__.py", "src/utils/training_guards.py", "src/utils/logger.py",
    "src/utils/reproducibility.py", "src/utils/metrics.py", "tests/", "bench/", "docs/",
]  # fmt: skip
# teacher (labels only) + direct (the student distilled from that teacher): both objectives in
# two stages. "teacher,student" is refused by design: the student distils from the assistant.
SMOKE_ARGS = [
    "--subset", "60", "--epochs", "1", "--image-size", "8", "--batch-size", "16",
    "--stages", "teacher,direct", "--resume", "never", "--device", "cpu",
    "--set", "report.benchmark=false",  # the cost measurement has its own tests; here it is 3 s per run
]  # fmt: skip
TAIL_LINES = 15


class CheckFailed(Exception):
    """A check's one-line reason, optionally with captured output to show under it."""

    def __init__(self, reason: str, details: str = "") -> None:
        super().__init__(reason)
        self.details = details


def check_layout() -> None:
    missing = [name for name in LAYOUT if not (ROOT / name).exists()]
    if missing:
        raise CheckFailed("missing " + ", ".join(missing))
    if not (ROOT / "clean.sh").stat().st_mode & 0o111:
        raise CheckFailed("clean.sh is not executable")


def check_imports() -> None:
    import src

    failures = []
    names = ["src"] + [m.name for m in pkgutil.walk_packages(src.__path__, prefix="src.")]
    for name in names:
        try:
            importlib.import_module(name)
        except Exception as exc:  # report every broken module, not just the first
            failures.append(f"{name} ({type(exc).__name__}: {exc})")
    if failures:
        raise CheckFailed(f"{len(failures)} of {len(names)} modules fail: " + "; ".join(failures))


def check_csv_schema() -> None:
    from src.utils.logger import REQUIRED_COLUMNS, EpochLogger, SchemaError

    expected = (
        "epoch", "train_loss", "train_accuracy", "train_precision", "train_recall", "train_f1_score",
        "val_loss", "val_accuracy", "val_precision", "val_recall", "val_f1_score",
        "learning_rate", "epoch_time_sec", "gpu_memory_mb",
    )  # fmt: skip
    if tuple(REQUIRED_COLUMNS) != expected:
        raise CheckFailed(f"REQUIRED_COLUMNS drifted from the contract: {list(REQUIRED_COLUMNS)}")
    row = {column: 0.5 for column in REQUIRED_COLUMNS}
    row["epoch"] = 1
    columns = list(REQUIRED_COLUMNS)
    columns[1], columns[2] = columns[2], columns[1]
    with tempfile.TemporaryDirectory() as folder:
        logger = EpochLogger(Path(folder) / "epochs.csv")
        try:
            logger.log({column: row[column] for column in columns})
        except SchemaError:
            pass
        else:
            raise CheckFailed("EpochLogger accepted a row with reordered columns")
        logger.log(row)
        if [r["epoch"] for r in EpochLogger(Path(folder) / "epochs.csv", resume_from_epoch=1).rows] != [1]:
            raise CheckFailed("EpochLogger did not read back the row it wrote")


def _run(command: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(
            command, cwd=ROOT, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
        )
    except subprocess.TimeoutExpired as exc:
        output = exc.stdout.decode(errors="replace") if isinstance(exc.stdout, bytes) else exc.stdout or ""
        raise CheckFailed(f"timed out after {timeout:.0f} s", output[-2000:]) from None


def _tail(result: subprocess.CompletedProcess[str]) -> str:
    return "\n".join((result.stdout + result.stderr).strip().splitlines()[-TAIL_LINES:])


def check_tests() -> None:
    result = _run([sys.executable, "-m", "pytest", "-q", "-m", "not slow", "-x"], timeout=900)
    if result.returncode != 0:
        raise CheckFailed(f"pytest exited {result.returncode}", _tail(result))


def smoke_check(preset: str) -> Callable[[], None]:
    """One preset's entry script on its default config, tiny (SMOKE_ARGS)."""
    def check() -> None:
        from src.config.presets import PRESETS

        script = ROOT / PRESETS[preset].package / "train.py"
        if not script.is_file():
            raise CheckFailed(f"{script.relative_to(ROOT)} missing")
        output_dir = ROOT / ".smoke" / preset
        shutil.rmtree(output_dir, ignore_errors=True)
        command = [sys.executable, str(script.relative_to(ROOT)), *SMOKE_ARGS,
                   "--output-dir", str(output_dir.relative_to(ROOT))]  # fmt: skip
        result = _run(command, timeout=600)
        if result.returncode != 0:
            raise CheckFailed(f"exit code {result.returncode}", _tail(result))
        if not (output_dir / "summary.csv").is_file():
            raise CheckFailed(f"exit 0 but no {output_dir.relative_to(ROOT)}/summary.csv", _tail(result))

    return check


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Run the checks a contributor should pass before committing "
        "(layout, imports, CSV schema, fast tests, a smoke run of every preset).",
    )
    parser.add_argument(
        "--skip-tests", action="store_true", help="skip the fast test suite (pytest -m 'not slow')"
    )
    parser.add_argument("--skip-smoke", action="store_true",
                        help="skip the 1-epoch smoke run of every preset")
    args = parser.parse_args(argv)

    checks: list[tuple[str, Callable[[], None]]] = [
        ("layout", check_layout),
        ("imports", check_imports),
        ("csv schema", check_csv_schema),
    ]
    if not args.skip_tests:
        checks.append(("tests", check_tests))
    if not args.skip_smoke:
        from src.config.presets import PRESETS

        checks += [(f"smoke {preset}", smoke_check(preset)) for preset in PRESETS]

    failed = 0
    for name, check in checks:
        start = time.perf_counter()
        try:
            check()
        except CheckFailed as exc:
            failed += 1
            print(f"[FAIL] {name}: {exc}", flush=True)
            if exc.details:
                print("       " + exc.details.replace("\n", "\n       "), flush=True)
        except Exception as exc:  # a check that crashes is a failed check, with its traceback
            failed += 1
            print(f"[FAIL] {name}: {type(exc).__name__}: {exc}", flush=True)
            print(traceback.format_exc(), flush=True)
        else:
            print(f"[ok] {name} ({time.perf_counter() - start:.1f} s)", flush=True)
    if failed:
        print(f"{failed} of {len(checks)} validations failed")
        return 1
    print("All validations passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
