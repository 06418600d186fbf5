"""The ModelActor and its helpers: its plain logic (core), training and checkpoint calls, the
MLflow writer of its run (tracking_writer, run_plan, upload_staging)."""

from actors.model.actor import ModelActor, ModelClient, model_actor
from actors.model.core import ModelCore, Snapshot, spec_from_config

__all__ = [
    "ModelActor",
    "ModelClient",
    "ModelCore",
    "Snapshot",
    "model_actor",
    "spec_from_config",
]
