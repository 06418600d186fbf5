"""Ray actors, a folder per kind: the ModelActor (``actors.model``: weights, optimizer,
checkpoints, metrics) and the session hosts (``actors.hosts``); ``actors.jobs`` is the JobBoard."""

from actors.hosts import (
    SessionHost,
    assign_host,
    find_hosts,
    host_call,
    host_name,
    host_of,
    start_hosts,
    stop_hosts,
)
from actors.model import ModelActor, ModelClient, ModelCore, Snapshot, model_actor, spec_from_config

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
