"""Training: state and optimizer, the step, the chunk-of-steps builder, the loop with hooks, checkpoints, device placement."""
