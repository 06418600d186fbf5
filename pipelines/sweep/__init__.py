"""Hyperparameter sweeps on Ray Tune, compared in MLflow (``candleray sweep``).

``space`` reads and checks the search space, ``trial`` is the function trainable, ``runner``
sets up the Tuner and reports progress, ``mlflow_runs`` writes the parent and child runs.
"""
