"""Ray actors: the ModelActor (weights, optimizer, checkpoints, metrics) and the session hosts."""

from actors.core import ModelCore, Snapshot, spec_from_config
from actors.model_actor import ModelActor, ModelClient, model_actor
from actors.session_host import (
    SessionHost,
    assign_host,
    find_hosts,
    host_call,
    host_name,
    host_of,
    start_hosts,
    stop_hosts,
)

__all__ = [
    "ModelActor",
    "ModelClient",
    "ModelCore",
    "SessionHost",
    "Snapshot",
    "assign_host",
    "find_hosts",
    "host_call",
    "host_name",
    "host_of",
    "model_actor",
    "spec_from_config",
    "start_hosts",
    "stop_hosts",
]
