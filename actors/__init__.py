"""Ray actors: the ModelActor (weights, optimizer, checkpoints, metrics)."""

from actors.core import ModelCore, Snapshot, spec_from_config
from actors.model_actor import ModelActor, ModelClient, model_actor

__all__ = ["ModelActor", "ModelClient", "ModelCore", "Snapshot", "model_actor", "spec_from_config"]
