"""Training: the point-in-time training set, fitting (warm start included), multi-worker
training, and the retraining runs the monitor starts."""
