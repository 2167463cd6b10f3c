"""Engine core: models, data, log-probs, training loop, checkpoints, logging, config."""
