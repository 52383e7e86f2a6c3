"""The training engine: trains any classifier for one stage, given an objective."""
