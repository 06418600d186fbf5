"""SessionHost: a named Ray actor holding many live sessions of one model (``actors.hosts.core``).

``live.hosts`` hosts per model, named ``<run.name>-host-<i>`` in ``ray.namespace`` so any
process (the CLI, the Serve app) finds them; each restarts up to ``ray.max_restarts`` times
and takes ``live.host_num_cpus`` CPUs and ``live.host_resources`` (a host mostly waits for
candles; its forward passes need a fraction of a core). A restarted host resumes its sessions
from its journal
``<run.name>-host-<i>`` (one writer per journal: in the database server of ``run.database_url``
on a cluster, else ``<run.home>/<live.journal_dir>/<run.name>-host-<i>.sqlite``) right after
the last journaled candle. A clean end (``shutdown``, ``stop_hosts``: Ctrl-C of ``candleray
live``, the end of ``candleray serve``) journals every session stopped, so the next host of the
same run name starts with none of them: only a crash resumes.

API (every method answers at once; errors are ``CandlerayError`` subclasses)::

    start_session(symbol, timeframe, mode, source, speed=None, start=None,
                  max_candles=None) -> status   (finished after max_candles candles)
    list_sessions() -> [status]          status(id) -> status (with "metrics")
    chart(id, since=None) -> {"candles", "ghosts", "pivots", "signals", "trades": [records]}
    set_mode(id, mode) -> status         manual_train(id, action) -> {"queued": 1, ...}
    stop_session(id) -> {"stopped": id}  stats() -> queue counts, timeouts, ticks, latency
    pid() -> int                         shutdown(timeout_s) -> report (``HostCore.close``)

Session ids start with ``h<i>-``: ``host_of(id)`` names the host holding it; ``assign_host``
picks the least loaded host for a new one.

Concurrency: a threaded actor (``max_concurrency``): API calls run on Ray's threads, the loop
(``HostCore.step``) and the weights refresher on two threads of their own; ``HostCore.lock``
serializes them. An exchange session's feed polls on a thread of its own, outside the lock,
and wakes the loop when its candles arrive. The refresher asks the ModelActor's read group for ``weights_version``
(never waits behind training) and loads a new snapshot outside the lock, then swaps it in.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
import warnings
from collections.abc import Callable
from typing import Any, TypeVar

import ray

from actors.hosts.core import HostCore, assign_host, host_of
from actors.hosts.runs_writer import RayRunsSink
from actors.hosts.tracking import SessionRuns
from actors.model.actor import ModelClient
from actors.model.core import spec_from_config
from conf import Config
from pipelines.database import open_engine
from pipelines.errors import CandlerayError, DatabaseError
from pipelines.live import Journal, journal_path
from pipelines.placement import Request, exists, reserve

log = logging.getLogger(__name__)
T = TypeVar("T")

WEIGHTS_POLL_S = 0.1  # a newly published version reaches predictions within about this


class RayTrainCalls:
    """``train_batch`` through the ModelClient, looked at with ``ray.wait(timeout=0)``."""

    def __init__(self, client: ModelClient) -> None:
        self.client = client

    def submit(self, x: Any, y_candle: Any, y_action: Any) -> Any:
        return self.client.submit("train_batch", x, y_candle, y_action, kind="live")

    def poll(self, handle: Any) -> tuple[str, Any] | None:
        ready, _ = ray.wait([handle], timeout=0)
        if not ready:
            return None
        try:
            return "done", self.client.wait(handle, "train_batch", timeout_s=0)
        except (CandlerayError, ray.exceptions.RayError) as exc:
            return "failed", exc


def host_journal(cfg: Config, index: int) -> Journal:
    """Host ``index``'s journal ``<run.name>-host-<i>``: rows in the database server of
    ``run.database_url`` (every node reaches it: a host restarted elsewhere finds it), or by
    default a SQLite file of that name beside ``journal_path``. A server that cannot be reached
    is a ``DatabaseError`` naming run.database_url, raised here at host start."""
    name = f"{cfg.run.name}-host-{index}"
    if cfg.run.database_url:
        return Journal(cfg.run.database_url, name=name)
    return Journal(journal_path(cfg).with_name(f"{name}.sqlite"), name=name)


def open_host_journal(
    cfg: Config,
    index: int,
    *,
    wait_s: float,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> Journal:
    """``host_journal``, waiting up to ``wait_s`` for a database server that does not answer
    yet. A host that Ray restarts after a node loss must not die for good because the server
    blinked at that moment (an actor whose start fails is not restarted again); a new host
    does not wait (``start_hosts`` checked the server just before)."""
    return wait_for_database(
        cfg, index, lambda: host_journal(cfg, index), wait_s=wait_s, sleep=sleep, clock=clock
    )


def wait_for_database(
    cfg: Config,
    index: int,
    attempt: Callable[[], T],
    *,
    wait_s: float,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> T:
    """``attempt()``, tried again while it raises a ``DatabaseError`` (a server that blinked,
    a writers' row still locked by a dead node's connection) for up to ``wait_s``; then the
    error. SQLite files are not waited for: their errors do not pass."""
    deadline = clock() + wait_s
    delay = 1.0
    while True:
        try:
            return attempt()
        except DatabaseError as exc:
            if not cfg.run.database_url or clock() + delay > deadline:
                raise
            log.warning("host %d: %s; trying again in %.0f s", index, exc, delay)
            sleep(delay)
            delay = min(2 * delay, 10.0)


@ray.remote(max_concurrency=8)
class SessionHost:
    def __init__(self, cfg: Config, index: int) -> None:
        import torch

        from serve.predictor import Predictor

        logging.basicConfig(level=logging.INFO)
        torch.set_num_threads(1)  # one core's worth: the ModelActor trains beside it
        self.client = ModelClient.find(
            cfg
        )  # created by the driver; one made here would die with us
        predictor = Predictor(spec_from_config(cfg), "cpu")
        runs = None
        if cfg.tracking.enabled:  # written by an actor of its own: MLflow never takes our GIL
            name = f"{host_name(cfg, index)}-mlflow"
            experiment = f"{cfg.run.name}-live"
            assert cfg.tracking.uri, "conf.validate.resolve fills tracking.uri"
            runs = SessionRuns(RayRunsSink(cfg.tracking.uri, experiment, name, cfg.ray.namespace))
        self._stop = threading.Event()
        self._wake = threading.Event()
        restarted = _restarted_by_ray()
        wait_s = cfg.ray.placement_timeout_s if restarted else 0.0
        journal = open_host_journal(cfg, index, wait_s=wait_s)
        # this host is the journal's writer now: one that was declared dead but still runs
        # (a node cut off from the cluster) can write nothing more beside it. Its connection
        # may still hold the writers' row (a node that died mid-write): the claim fails at
        # the lock timeout until the server ends that connection, so every host waits here
        claim_wait_s = cfg.ray.placement_timeout_s
        wait_for_database(cfg, index, journal.claim, wait_s=claim_wait_s)
        self.core = HostCore(
            cfg,
            index,
            predictor,
            RayTrainCalls(self.client),
            journal,
            clock=time.monotonic,
            runs=runs,
            wake=self._wake.set,  # an exchange's candles are taken as soon as a poll brings them
        )
        # only a host Ray restarts (a crash, a lost node) resumes its sessions; a new host of
        # the run name stops what a dead run left running instead of replaying it unseen
        # a blip after connecting must not kill the host for good either. Run again, a
        # restore skips what it journaled stopped and resumes the rest from the journal
        wait_for_database(
            cfg, index, lambda: self.core.restore(resume=restarted), wait_s=claim_wait_s
        )
        threading.Thread(target=self._loop, name="host-loop", daemon=True).start()
        threading.Thread(target=self._weights, name="host-weights", daemon=True).start()

    # -- background ------------------------------------------------------------------------
    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                wait = self.core.step()
            except Exception:  # one bad step must not end every session's loop: log, count
                log.exception("host %d: a loop step failed", self.core.index)
                self.core.counters["loop_errors"] += 1
                wait = 0.5
            # never straight back into the lock: a lock is not fair, and API calls waiting for
            # it would starve behind an unpaced replay that always has a candle due. Cleared
            # before the next step, never after it: a feed queues its candles before it sets
            # the event, so a set() that this clear() swallows is one whose candles that step
            # takes, and one during the step makes the next wait return at once.
            self._wake.wait(max(wait, 0.001))
            self._wake.clear()

    def _refresh(self) -> None:
        p = self.core.predictor
        if self.client.call("weights_version") == (p.generation, p.version):
            return
        snap = self.client.call("weights_snapshot")
        state = ray.get(snap["ref"], timeout=self.client.timeout_s)
        self.core.load_weights(state, snap["version"], snap["generation"])

    def _weights(self) -> None:
        while not self._stop.is_set():
            try:
                self._refresh()
            except (CandlerayError, ray.exceptions.RayError) as exc:
                log.warning("host %d: weights refresh failed (retrying): %s", self.core.index, exc)
                self._stop.wait(1.0)
            self._stop.wait(WEIGHTS_POLL_S)

    # -- API -------------------------------------------------------------------------------
    def start_session(
        self,
        symbol: str,
        timeframe: str | None,
        mode: str,
        source: str,
        speed: float | None = None,
        start: int | str | None = None,
        max_candles: int | None = None,
    ) -> dict[str, Any]:
        out = self.core.start_session(symbol, timeframe, mode, source, speed, start, max_candles)
        self._wake.set()
        return out

    def list_sessions(self) -> list[dict[str, Any]]:
        return self.core.list_sessions()

    def status(self, session_id: str) -> dict[str, Any]:
        return self.core.status(session_id)

    def chart(self, session_id: str, since: int | str | None = None) -> dict[str, Any]:
        return self.core.chart(session_id, since)

    def set_mode(self, session_id: str, mode: str) -> dict[str, Any]:
        return self.core.set_mode(session_id, mode)

    def manual_train(self, session_id: str, action: str) -> dict[str, Any]:
        return self.core.manual_train(session_id, action)

    def stop_session(self, session_id: str) -> dict[str, Any]:
        return self.core.stop_session(session_id)

    def stats(self) -> dict[str, Any]:
        return self.core.stats()

    def reset_latencies(self) -> None:
        self.core.reset_latencies()

    def pid(self) -> int:
        return os.getpid()

    def shutdown(self, timeout_s: float = 60.0) -> dict[str, Any]:
        """Stop the loop, journal every session stopped, end their MLflow runs (waited for at
        most ``timeout_s``); the report says whether each part was done (``HostCore.close``)."""
        self._stop.set()
        self._wake.set()
        return self.core.close(timeout_s)


def _restarted_by_ray() -> bool:
    """Whether Ray restarted this actor (a crash, a lost node), not a new start.

    Ray 2.60's ``was_current_actor_reconstructed`` reads its own deprecated ``actor_id``, and
    the warning would reach every command's terminal through the worker's stderr.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return bool(ray.get_runtime_context().was_current_actor_reconstructed)


def host_name(cfg: Config, index: int) -> str:
    return f"{cfg.run.name}-host-{index}"


def host_request(cfg: Config) -> Request:
    """What one session host asks Ray for: ``live.host_num_cpus`` and ``live.host_resources``."""
    return Request(
        f"a session host of {cfg.run.name!r}",
        cfg.live.host_num_cpus,
        "live.host_num_cpus",
        cfg.live.host_resources,
        "live.host_resources",
    )


def start_hosts(cfg: Config) -> list[Any]:
    """The model's ``live.hosts`` hosts, created if missing (any process may call this).

    The missing ones are created only once all of them can be placed: ``PlacementError`` at
    once when no node has their resources, or after ``ray.placement_timeout_s`` when busy.
    """
    request = host_request(cfg)
    ns = cfg.ray.namespace
    missing = [i for i in range(cfg.live.hosts) if not exists(host_name(cfg, i), ns)]
    if missing and cfg.run.database_url:
        # the journals' server answers, or the command says so (DatabaseError naming
        # run.database_url), instead of a Ray traceback of hosts that could not start
        open_engine(cfg.run.database_url, what="live journal", pooled=False).dispose()
    if missing:
        reserve(request, len(missing), cfg.ray.placement_timeout_s, "ray.placement_timeout_s")
    hosts = []
    for i in range(cfg.live.hosts):
        opts: dict[str, Any] = {
            "name": host_name(cfg, i),
            "namespace": cfg.ray.namespace,
            "get_if_exists": True,
            "max_restarts": cfg.ray.max_restarts,
            "max_task_retries": 0,  # API calls are not replayed: start_session is not idempotent
            **request.options(),
        }
        if cfg.ray.detached:
            opts["lifetime"] = "detached"
        # @ray.remote turns the class into an ActorClass; mypy keeps a decorated class's own type
        hosts.append(SessionHost.options(**opts).remote(cfg, i))  # type: ignore[attr-defined]
    return hosts


def stop_hosts(hosts: list[Any], timeout_s: float = 60.0) -> list[dict[str, Any]]:
    """End each host cleanly and kill it without a restart: its sessions are journaled stopped
    (no later host resumes them) and their MLflow runs end on their final figures within
    ``timeout_s``. Returns each host's report (``HostCore.close``; ``{"error": ...}`` for a
    host that did not answer); what was not done is logged as a warning. A host already gone
    is skipped."""
    reports = []
    for h in hosts:
        try:
            # the host waits timeout_s for its MLflow writer; this call waits a little longer
            report = ray.get(h.shutdown.remote(timeout_s), timeout=timeout_s + 30.0)
        except ray.exceptions.RayError as exc:
            report = {"error": f"the host did not shut down: {exc}", "errors": [str(exc)]}
        finally:
            with contextlib.suppress(ray.exceptions.RayError, ValueError):
                ray.kill(h, no_restart=True)  # killed even when its shutdown failed
        if report.get("errors") or report.get("journaled") is False:
            log.warning("session host shutdown incomplete: %s", report)
        reports.append(report)
    return reports


def find_hosts(cfg: Config) -> list[Any]:
    """Handles of the running hosts (ValueError from Ray if one is not running)."""
    return [
        ray.get_actor(host_name(cfg, i), namespace=cfg.ray.namespace) for i in range(cfg.live.hosts)
    ]


def not_resumed(hosts: list[Any], timeout_s: float) -> list[str]:
    """Sessions that new hosts found left running by a run that died, and stopped at start."""
    refs = [h.stats.remote() for h in hosts]  # all asked at once, gathered once
    return [sid for st in ray.get(refs, timeout=timeout_s) for sid in st["not_resumed"]]


def not_resumed_note(hosts: list[Any], timeout_s: float) -> str | None:
    """The line a command prints when its new hosts stopped an earlier run's sessions."""
    ids = not_resumed(hosts, timeout_s)
    if not ids:
        return None
    return (
        f"{len(ids)} session(s) left running by an earlier run whose host died were stopped, "
        f"not resumed: {', '.join(ids)} (only a host Ray restarts resumes its sessions)"
    )


def host_call(ref: Any, what: str, timeout_s: float) -> Any:
    """``ray.get`` with a deadline, unwrapping our own errors from Ray's wrapper."""
    try:
        return ray.get(ref, timeout=timeout_s)
    except ray.exceptions.GetTimeoutError as exc:
        raise CandlerayError(f"session host did not answer {what} within {timeout_s:.0f}s") from exc
    except ray.exceptions.RayTaskError as exc:
        if isinstance(exc.cause, CandlerayError):
            raise exc.cause from None
        raise


__all__ = [
    "SessionHost",
    "assign_host",
    "find_hosts",
    "host_call",
    "host_name",
    "host_of",
    "start_hosts",
    "stop_hosts",
]
