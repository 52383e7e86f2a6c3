"""argparse pieces every command shares: the one-line error contract and path flags."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import NoReturn


class OneLineParser(argparse.ArgumentParser):
    """argparse reporting a bad flag as the contract's one ``error:`` line (exit 2), not a usage block."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {message} (see --help)\n")


def user_path(text: str) -> Path:
    """A path flag with ``~`` expanded: the shell leaves ``--output-dir=~/x`` (after ``=``) alone."""
    return Path(text).expanduser()
