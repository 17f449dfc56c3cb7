"""Training a recipe: the classification Brain, checkpoints, the learning-rate schedule, the embedding cache and a run's start and finish."""
