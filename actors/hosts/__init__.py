"""The session hosts and their helpers: the actor shell (host), its plain logic (core), the
candle feeds, the training driver, and the MLflow runs of its sessions (tracking, runs_writer)."""

from actors.hosts.host import (
    SessionHost,
    assign_host,
    find_hosts,
    host_call,
    host_journal,
    host_name,
    host_of,
    start_hosts,
    stop_hosts,
)

__all__ = [
    "SessionHost",
    "assign_host",
    "find_hosts",
    "host_call",
    "host_journal",
    "host_name",
    "host_of",
    "start_hosts",
    "stop_hosts",
]
