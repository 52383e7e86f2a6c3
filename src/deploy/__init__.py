"""Deployment: what each stage costs to run (measured side by side) and its ONNX/TorchScript export."""
