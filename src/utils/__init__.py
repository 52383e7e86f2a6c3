"""Shared utilities every stage uses: guards, CSV logging, reproducibility, metrics, atomic files."""
