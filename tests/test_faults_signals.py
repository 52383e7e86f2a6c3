"""Ctrl-C or SIGTERM outside training (the report's plots, the cost measurement) ends the command
with 130/143 and one line, never exit 0 or a silent death; the handlers are the caller's again
afterwards, so nothing later in the same process is affected."""
from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from src.cli import train as cli
from src.pipeline import report

QUICK = ["--subset", "30", "--epochs", "1", "--image-size", "8", "--device", "cpu", "--stages", "baseline",
         "--set", "models.student=test_resnet", "--set", "models.small_input=false",
         "--set", "report.benchmark=false"]


class _SignalInFinalizer:
    """A signal whose handler runs where Python ignores exceptions ("Exception ignored in ...")."""

    def __init__(self, signum: int) -> None:
        self.signum = signum

    def __del__(self) -> None:
        os.kill(os.getpid(), self.signum)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # the finalizer's, on purpose
@pytest.mark.parametrize(("signum", "code", "swallowed"), [(signal.SIGINT, 130, False),
                                                           (signal.SIGTERM, 143, False),
                                                           (signal.SIGINT, 130, True)])
def test_a_signal_while_the_report_is_written_ends_the_command(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
        signum: int, code: int, swallowed: bool) -> None:
    real = report.plot_stage_bars

    def plot_then_signal(*args: object, **kwargs: object) -> object:
        drawn = real(*args, **kwargs)
        if swallowed:
            _SignalInFinalizer(signum)  # dropped at once: __del__ sends the signal
        else:
            os.kill(os.getpid(), signum)
        return drawn

    monkeypatch.setattr(report, "plot_stage_bars", plot_then_signal)
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    assert cli.main("cnn", [*QUICK, "--output-dir", str(tmp_path / "run")]) == code
    err = capsys.readouterr().err
    assert "interrupted: stopped by" in err and "re-run the same command to continue" in err
    assert {s: signal.getsignal(s) for s in before} == before  # the caller's handlers again
    assert (tmp_path / "run" / "baseline" / "result.json").is_file()  # the trained stage is kept
