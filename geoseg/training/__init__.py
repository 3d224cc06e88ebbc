"""Training: chips from labelled scenes, datasets, the training loop, evaluation and metrics."""
