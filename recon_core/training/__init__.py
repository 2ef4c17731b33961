"""Training: simulated datasets, Jacobian-free training loop, checkpoints without pickle."""
