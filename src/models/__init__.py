"""The timm model factory with small-input options."""
