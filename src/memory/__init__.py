"""GPU memory planning under a VRAM budget."""
