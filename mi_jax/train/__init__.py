"""Training: state, optimisers, sharded steps, checkpoints, metric logging, the train job."""
