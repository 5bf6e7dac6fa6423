"""mer.fusion: fusion models (AGT and baselines), k-fold training, self-training and prediction."""
