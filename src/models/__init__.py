"""Any timm classifier in any role: names, small-image adaptations, the learning-rate rule and
gradient checkpointing."""
