"""A run directory and what it holds: its layout, lock, seed chains and the stages' saved models."""
