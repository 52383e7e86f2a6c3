"""Evidence for "did distillation help?": paired statistics, the verdict, the multi-seed report."""
