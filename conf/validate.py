"""Value checks that types alone cannot express, and path resolution.

Only checks that need no domain code live here (``conf`` imports nothing above
``pipelines.errors``); the ones that do (timeframes, backtest semantics) are in
``pipelines.config``, which every entry point loads through.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping
from pathlib import Path

import pandas as pd

from conf.schema import BEST_METRICS, Config, ServeConfig
from pipelines.errors import ConfigError

_DEVICE = re.compile(r"^(auto|cpu|cuda(:\d+)?|mps)$")


def _need(ok: bool, msg: str) -> None:
    if not ok:
        raise ConfigError(msg)


def check(cfg: Config) -> None:
    m, t, f = cfg.model, cfg.train, cfg.features
    _need(
        bool(re.fullmatch(r"[A-Za-z0-9_.-]+", cfg.run.name)),
        f"run.name={cfg.run.name!r}: use letters, digits, '_', '.', '-' only (it names an actor and an MLflow experiment)",
    )
    _need(
        m.d_model > 0 and m.n_heads > 0 and m.d_model % m.n_heads == 0,
        f"model.d_model={m.d_model} must be a positive multiple of model.n_heads={m.n_heads}",
    )
    _need(m.n_layers >= 1, f"model.n_layers={m.n_layers} must be >= 1")
    _need(0.0 <= m.dropout < 1.0, f"model.dropout={m.dropout} must be in [0, 1)")
    _need(
        bool(_DEVICE.match(m.device)),
        f"model.device={m.device!r}: use auto, cpu, cuda, cuda:N or mps",
    )
    _need(f.window >= 4, f"features.window={f.window} must be >= 4")
    _need(
        t.batch_size >= 1 and t.epochs >= 0, "train.batch_size must be >= 1 and train.epochs >= 0"
    )
    _need(t.lr > 0, f"train.lr={t.lr} must be > 0")
    _need(
        0.0 < t.holdout_fraction < 1.0,
        f"train.holdout_fraction={t.holdout_fraction} must be in (0, 1)",
    )
    _need(t.batches_per_call >= 1, "train.batches_per_call must be >= 1")
    _need(t.workers >= 1, f"train.workers={t.workers} must be >= 1 (1: no data parallelism)")
    _need(
        t.worker_num_cpus >= 0 and t.worker_num_gpus >= 0,
        "train.worker_num_cpus and train.worker_num_gpus must be >= 0",
    )
    _need(
        t.placement_strategy in ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"),
        f"train.placement_strategy={t.placement_strategy!r}: use PACK (ranks on few nodes), "
        "SPREAD (one per node where possible), STRICT_PACK or STRICT_SPREAD",
    )
    check_resources("train.worker_resources", t.worker_resources)
    _need(
        t.trend_window >= 1,
        f"train.trend_window={t.trend_window} must be >= 1 (steps in the rolling metrics, "
        "the trend and the best-checkpoint cadence); e.g. train.trend_window=50",
    )
    _need(cfg.labels.pivot_bars >= 1, f"labels.pivot_bars={cfg.labels.pivot_bars} must be >= 1")
    _need(
        cfg.labels.move_threshold >= 0,
        f"labels.move_threshold={cfg.labels.move_threshold} must be >= 0",
    )
    _need(
        cfg.checkpoint.every_steps >= 1 and cfg.checkpoint.keep_last >= 1,
        "checkpoint.every_steps and checkpoint.keep_last must be >= 1",
    )
    _need(
        cfg.checkpoint.best_metric in BEST_METRICS,
        f"checkpoint.best_metric={cfg.checkpoint.best_metric!r} is not a metric the trainer "
        f"reports; use one of {', '.join(BEST_METRICS)} (e.g. checkpoint.best_metric=total_loss)",
    )
    _need(cfg.ray.call_timeout_s > 0, f"ray.call_timeout_s={cfg.ray.call_timeout_s} must be > 0")
    _need(cfg.ray.max_restarts >= -1, "ray.max_restarts must be >= -1 (-1: restart forever)")
    check_ray_address(cfg.ray.address)
    check_database_url(cfg.run.database_url)
    _need(
        cfg.ray.placement_timeout_s > 0,
        f"ray.placement_timeout_s={cfg.ray.placement_timeout_s} must be > 0 seconds (e.g. 60)",
    )
    _need(
        cfg.ray.actor_num_cpus >= 0 and cfg.ray.actor_num_gpus >= 0 and cfg.live.host_num_cpus >= 0,
        "ray.actor_num_cpus, ray.actor_num_gpus and live.host_num_cpus must be >= 0",
    )
    check_resources("ray.actor_resources", cfg.ray.actor_resources)
    check_resources("live.host_resources", cfg.live.host_resources)
    check_resources("backtest.task_resources", cfg.backtest.task_resources)
    _need(
        len(cfg.data.symbols) >= 1, "data.symbols is empty; name at least one, e.g. [sample:EURUSD]"
    )
    _need(cfg.live.max_sessions >= 1, f"live.max_sessions={cfg.live.max_sessions} must be >= 1")
    check_serve(cfg.serve)
    check_sweep(cfg)
    for key in ("since", "until"):
        value = getattr(cfg.data, key)
        if value is not None:
            try:
                pd.Timestamp(value)
            except (ValueError, TypeError) as exc:
                raise ConfigError(
                    f"data.{key}={value!r} is not an ISO date; use e.g. 2024-01-01"
                ) from exc


def check_sweep(cfg: Config) -> None:
    """The sweep section (``candleray sweep``); the metric name is checked by the sweep itself."""
    w = cfg.sweep
    _need(w.scheduler in ("asha", "fifo"), f"sweep.scheduler={w.scheduler!r}: use asha or fifo")
    _need(w.mode in ("min", "max"), f"sweep.mode={w.mode!r}: use min (losses) or max (accuracies)")
    _need(w.trials >= 1, f"sweep.trials={w.trials} must be >= 1 (samples drawn from the space)")
    _need(
        w.max_concurrent >= 0,
        f"sweep.max_concurrent={w.max_concurrent} must be >= 0 (0: as many as resources allow)",
    )
    _need(w.grace_period >= 1, f"sweep.grace_period={w.grace_period} must be >= 1 epoch")
    _need(
        w.reduction_factor > 1,
        f"sweep.reduction_factor={w.reduction_factor} must be > 1 (ASHA keeps the best "
        "1/reduction_factor at each rung; e.g. 2)",
    )
    _need(
        w.trial_num_cpus >= 0 and w.trial_num_gpus >= 0 and w.trial_num_cpus + w.trial_num_gpus > 0,
        f"sweep.trial_num_cpus={w.trial_num_cpus} and sweep.trial_num_gpus={w.trial_num_gpus} "
        "must be >= 0 and not both 0 (a trial with no resources would never be limited)",
    )
    check_resources("sweep.trial_resources", w.trial_resources)


def check_serve(s: ServeConfig) -> None:
    """The serve section; also the rule ``reconfigure()`` applies to live batching changes."""
    _need(
        s.max_batch_size >= 1,
        f"serve.max_batch_size={s.max_batch_size} must be >= 1 (1 turns batching off)",
    )
    _need(
        0.0 <= s.batch_wait_timeout_s <= 1.0,
        f"serve.batch_wait_timeout_s={s.batch_wait_timeout_s} must be in [0, 1] seconds "
        "(a lone request waits this long for its batch to fill); e.g. 0 or 0.002",
    )
    _need(
        s.max_ongoing_requests >= s.max_batch_size,
        f"serve.max_ongoing_requests={s.max_ongoing_requests} must be >= serve.max_batch_size="
        f"{s.max_batch_size}, or a replica never holds enough requests to fill a batch",
    )
    _need(s.replicas >= 1, f"serve.replicas={s.replicas} must be >= 1")
    _need(
        s.topology in ("single", "composed"),
        f"serve.topology={s.topology!r} must be 'single' (the HTTP ingress holds the model) or "
        "'composed' (CPU ingress replicas call predictor replicas, e.g. GPU ones)",
    )
    _need(
        s.predictor_transport in ("ray", "grpc"),
        f"serve.predictor_transport={s.predictor_transport!r} must be 'ray' (Ray actor calls) "
        "or 'grpc' (Serve's gRPC between replicas); it applies to serve.topology=composed",
    )
    _need(s.ingress_replicas >= 1, f"serve.ingress_replicas={s.ingress_replicas} must be >= 1")
    _need(
        s.replica_num_cpus >= 0 and s.replica_num_gpus >= 0 and s.ingress_num_cpus >= 0,
        "serve.replica_num_cpus, serve.replica_num_gpus and serve.ingress_num_cpus must be >= 0",
    )
    _need(1 <= s.port <= 65535, f"serve.port={s.port} must be in 1..65535")
    check_resources("serve.replica_resources", s.replica_resources)
    check_resources("serve.ingress_resources", s.ingress_resources)
    _need(s.weights_poll_s > 0, f"serve.weights_poll_s={s.weights_poll_s} must be > 0")
    _need(s.max_request_bytes >= 1, f"serve.max_request_bytes={s.max_request_bytes} must be >= 1")
    _need(
        s.max_running_jobs >= 1 and s.keep_finished_jobs >= 0,
        f"serve.max_running_jobs={s.max_running_jobs} must be >= 1 and "
        f"serve.keep_finished_jobs={s.keep_finished_jobs} >= 0",
    )
    _need(
        s.body_timeout_s > 0 and s.request_timeout_s > 0 and s.keep_alive_timeout_s >= 1,
        f"serve.body_timeout_s={s.body_timeout_s} and serve.request_timeout_s="
        f"{s.request_timeout_s} must be > 0 seconds, serve.keep_alive_timeout_s="
        f"{s.keep_alive_timeout_s} >= 1 (they end connections a client holds open)",
    )


# Ray's own names: asked for through their own keys (num_cpus/num_gpus), never as custom ones
_RAY_RESOURCES = ("CPU", "GPU", "memory", "object_store_memory")
# beside a *_num_gpus key
_WITH_GPUS = (
    "ray.actor_resources",
    "serve.replica_resources",
    "train.worker_resources",
    "sweep.trial_resources",
)


def check_resources(key: str, resources: Mapping[str, float]) -> None:
    """A custom-resource mapping (name -> amount per actor, replica or task), as Ray takes it:
    names Ray does not reserve, finite amounts > 0 in Ray's 0.0001 steps."""
    for name, amount in resources.items():
        _need(
            bool(name.strip()) and not name.startswith("node:"),
            f"{key}: resource name {name!r} is not allowed; name a custom resource the nodes "
            "were started with (ray start --resources='{\"gpu_node\": 1}'), e.g. gpu_node",
        )
        if name in _RAY_RESOURCES:
            cpus, gpus = (key.replace("_resources", f"_num_{k}") for k in ("cpus", "gpus"))
            own = f"CPUs are {cpus}" + (f", GPUs {gpus}" if key in _WITH_GPUS else "")
            raise ConfigError(
                f"{key}: {name} is not a custom resource, Ray reserves the name; {own} "
                f"(e.g. {cpus}=1), and {key} holds custom ones such as {{gpu_node: 0.01}}"
            )
        _need(
            math.isfinite(amount) and amount >= 1e-4,
            f"{key}.{name}={amount} must be a finite amount >= 0.0001 (Ray's smallest step); "
            "a fraction such as 0.01 takes a sliver of a node's unit, to pin without filling it",
        )


def check_ray_address(address: str | None) -> None:
    """``ray.address`` has a form Ray connects to; whether it answers is checked at connect
    (``pipelines.cluster``)."""
    if address is None or address == "auto":
        return
    scheme, sep, rest = address.partition("://")
    if sep and scheme != "ray":
        raise ConfigError(
            f"ray.address={address!r}: use host:port of the head (e.g. 10.0.0.5:6379), auto on a "
            "node of the cluster, or ray://head:10001; an http:// address is the dashboard's, "
            "for `ray job submit --address`"
        )
    _need(
        bool((rest if sep else address).strip()),
        f"ray.address={address!r} is empty; use host:port, auto, ray://head:10001 or null",
    )


DATABASE_SCHEMES = ("postgresql", "postgresql+psycopg", "sqlite")


def check_database_url(url: str | None) -> None:
    """``run.database_url`` names a database SQLAlchemy reaches here; whether it answers is
    checked when a host opens its journal (``pipelines.database``)."""
    if url is None:
        return
    scheme, sep, rest = url.partition("://")
    _need(
        bool(sep) and scheme in DATABASE_SCHEMES and bool(rest.strip("/")),
        f"run.database_url={url.split('@')[-1]!r} is not a database URL candleray uses; use "
        "postgresql+psycopg://user:password@host:5432/dbname (one server for every node's "
        "journals and annotations), sqlite:////abs/path.db, or null for SQLite files under "
        "run.home",
    )


def _abs(home: Path, p: str) -> str:
    if "://" in p:
        return p
    q = Path(p).expanduser()
    return str(q if q.is_absolute() else (home / q).resolve())


def resolve(cfg: Config) -> Config:
    """Make every path absolute (actors may run elsewhere); fill the default tracking URI."""
    home = Path(cfg.run.home).expanduser().resolve()
    run = dataclasses.replace(cfg.run, home=str(home))
    data = dataclasses.replace(cfg.data, cache_dir=_abs(home, cfg.data.cache_dir))
    ckpt = dataclasses.replace(cfg.checkpoint, uri=_abs(home, cfg.checkpoint.uri))
    uri = cfg.tracking.uri or f"sqlite:///{home / 'mlflow.db'}"
    tracking = dataclasses.replace(cfg.tracking, uri=uri)
    sweep = dataclasses.replace(cfg.sweep, storage=_abs(home, cfg.sweep.storage))
    return dataclasses.replace(
        cfg, run=run, data=data, checkpoint=ckpt, tracking=tracking, sweep=sweep
    )
