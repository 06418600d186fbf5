"""MLflow tracking through an explicit ``MlflowClient``: one run (``tracker``), experiments and
registered models (``experiments``), the links between a model's runs across restarts and
rewinds (``lineage``), and the store boundary where MLflow, HTTP and SQLAlchemy errors become
``TrackingError`` (``store``).

    from pipelines.tracking import Tracker
"""

from pipelines.tracking.experiments import ensure_registered_model, experiment_id_for
from pipelines.tracking.store import call_mlflow
from pipelines.tracking.tracker import Tracker

__all__ = ["Tracker", "call_mlflow", "ensure_registered_model", "experiment_id_for"]
