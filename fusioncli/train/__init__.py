"""Training: run configuration, the training loop, metrics, probes and checkpoints."""
