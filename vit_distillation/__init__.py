"""The ViT preset: ViT-Base -> ViT-Small -> ViT-Tiny (`train.py`, `configs/*.yaml`)."""
