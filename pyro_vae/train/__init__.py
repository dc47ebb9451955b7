"""Training: :func:`fit` and the pieces of its loop."""

from pyro_vae.train.loop import History, TrainingDivergedError, fit

__all__ = ["History", "TrainingDivergedError", "fit"]
