"""kd-pipeline: teacher -> assistant -> student knowledge distillation for timm classifiers."""
