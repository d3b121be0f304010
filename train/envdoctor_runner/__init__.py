"""Shared pieces of the training recipes: data, model, checkpoints, reporting."""
