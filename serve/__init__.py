"""Inference: predictors that load the ModelActor's published weight snapshots."""

from serve.predictor import Prediction, Predictor

__all__ = ["Prediction", "Predictor"]
