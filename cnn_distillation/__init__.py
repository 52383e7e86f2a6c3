"""The CNN preset: ResNet-50 -> ResNet-34 -> ResNet-18 (`train.py`, `configs/*.yaml`)."""
