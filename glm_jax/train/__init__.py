"""Training: optimizer, train state, partitioning, train/eval steps, checkpoints, metrics and the loop."""
