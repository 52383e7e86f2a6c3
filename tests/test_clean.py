"""clean.sh removes generated files only, inside the repository, and never follows symlinks."""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # runs a shell script

REPO = Path(__file__).resolve().parents[1]


def make_repo(tmp_path: Path) -> tuple[Path, Path]:
    """A minimal copy of the repository layout, with generated files and protected ones."""
    repo = tmp_path / "repo"
    outside = tmp_path / "outside"
    (outside / "__pycache__").mkdir(parents=True)
    (outside / "__pycache__" / "keep.pyc").write_bytes(b"x")
    (outside / "precious.txt").write_text("keep")
    repo.mkdir()
    shutil.copy2(REPO / "clean.sh", repo / "clean.sh")
    (repo / "validate_project.py").write_text("# placeholder\n")
    for folder in ["src/__pycache__", ".pytest_cache/v", ".ruff_cache", ".smoke/cnn",
                   "runs/cnn-digits/teacher", ".venv/lib/__pycache__", "data/__pycache__",
                   "src/utils/__pycache__"]:
        (repo / folder).mkdir(parents=True)
    for file in ["src/__pycache__/a.cpython-311.pyc", "src/stray.pyc", ".smoke/cnn/summary.csv",
                 "runs/cnn-digits/teacher/result.json", ".venv/lib/__pycache__/b.pyc",
                 "data/__pycache__/c.pyc", "src/keep.py"]:
        (repo / file).write_text("x")
    (repo / "src" / "link_out").symlink_to(outside, target_is_directory=True)
    (repo / "runs" / "link_out").symlink_to(outside, target_is_directory=True)
    return repo, outside


def run(repo: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(repo / "clean.sh"), *args], capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, timeout=60)


def tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def test_dry_run_lists_and_deletes_nothing(tmp_path):
    repo, _ = make_repo(tmp_path)
    before = tree(repo)
    result = run(repo, "--dry-run", "--runs")
    assert result.returncode == 0, result.stderr
    assert "would remove src/__pycache__" in result.stdout
    assert "would remove runs" in result.stdout
    assert tree(repo) == before


def test_default_clean_removes_generated_files_only(tmp_path):
    repo, outside = make_repo(tmp_path)
    result = run(repo)
    assert result.returncode == 0, result.stderr
    for gone in ["src/__pycache__", "src/utils/__pycache__", "src/stray.pyc", ".pytest_cache", ".ruff_cache",
                 ".smoke"]:
        assert not (repo / gone).exists(), gone
    for kept in ["src/keep.py", "runs/cnn-digits/teacher/result.json", ".venv/lib/__pycache__/b.pyc",
                 "data/__pycache__/c.pyc", "validate_project.py"]:
        assert (repo / kept).exists(), kept
    assert (repo / "src" / "link_out").is_symlink()
    assert (outside / "__pycache__" / "keep.pyc").exists()  # not followed through the symlink


def test_runs_needs_confirmation_without_a_terminal(tmp_path):
    repo, _ = make_repo(tmp_path)
    result = run(repo, "--runs")
    assert result.returncode == 2
    assert "--yes" in result.stderr
    assert (repo / "runs" / "cnn-digits" / "teacher" / "result.json").exists()
    assert (repo / "src" / "__pycache__").exists()  # refused before removing anything


def test_runs_yes_removes_runs_but_not_symlink_targets(tmp_path):
    repo, outside = make_repo(tmp_path)
    result = run(repo, "--runs", "--yes")
    assert result.returncode == 0, result.stderr
    assert not (repo / "runs").exists()
    assert (outside / "precious.txt").read_text() == "keep"
    assert (outside / "__pycache__" / "keep.pyc").exists()


def test_refuses_outside_a_repository_and_unknown_options(tmp_path):
    shutil.copy2(REPO / "clean.sh", tmp_path / "clean.sh")
    (tmp_path / "__pycache__").mkdir()
    result = run(tmp_path)
    assert result.returncode == 2 and "refusing" in result.stderr
    assert (tmp_path / "__pycache__").exists()
    repo, _ = make_repo(tmp_path)
    assert run(repo, "--force").returncode == 2
    help_result = run(repo, "--help")
    assert help_result.returncode == 0 and "--runs" in help_result.stdout
    assert os.access(REPO / "clean.sh", os.X_OK)  # `./clean.sh` (make clean) needs the x bit


@pytest.mark.parametrize(("answer", "removed"), [("y\n", True), ("n\n", False)])
def test_runs_asks_on_a_terminal(tmp_path, answer, removed):
    repo, _ = make_repo(tmp_path)
    controller, terminal = os.openpty()
    try:
        os.write(controller, answer.encode())
        result = subprocess.run(["bash", str(repo / "clean.sh"), "--runs"], stdin=terminal,
                                capture_output=True, text=True, timeout=60)
    finally:
        os.close(controller)
        os.close(terminal)
    assert result.returncode == 0, result.stderr
    assert (repo / "runs").exists() is not removed
    assert not (repo / "src" / "__pycache__").exists()
