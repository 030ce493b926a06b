"""Training: the train state, optimizer, pure train step, device mesh, checkpoints,
metric writing and the loop."""
