"""Plots that need model internals (ViT attention maps)."""
