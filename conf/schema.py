"""Typed, frozen configuration. YAML in ``conf/`` is read once into these objects.

Each section is a frozen dataclass; the loader (``conf.loader``) rejects unknown keys
and wrong types with the key's dotted path. After loading, config is passed explicitly.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class RunConfig:
    name: str = (
        "candleray"  # model name: names the ModelActor, MLflow experiment and registered model
    )
    seed: int = 7
    home: str = ".candleray"  # relative paths below are resolved against this folder's parent (cwd)
    # None: journals and annotations in SQLite files under home (one node's disk); a cluster
    # names one database server every node reaches: postgresql+psycopg://user:pw@host:5432/db
    # written out (checkpoints, MLflow params, reports) with its password as *** (to_dict)
    database_url: str | None = field(default=None, metadata={"secret": "password"})


@dataclass(frozen=True)
class RayConfig:
    address: str | None = (
        None  # None: start a local cluster; "auto" or "ray://host:10001" for a cluster
    )
    namespace: str = "candleray"
    num_cpus: int | None = 2  # only for a local cluster
    actor_num_cpus: float = 0.5
    actor_num_gpus: float = 0.0
    # custom resources the ModelActor asks for: {gpu_node: 0.01} pins it to nodes started with
    # --resources='{"gpu_node": 1}' (CPUs and GPUs have their own keys); pipelines/placement.py
    actor_resources: dict[str, float] = field(default_factory=dict)
    max_restarts: int = 3
    call_timeout_s: float = 120.0  # deadline for every call the platform makes into an actor
    # an actor (ModelActor, session host) whose resources exist but stay held by others this
    # long is an error naming them, not a silent wait
    placement_timeout_s: float = 60.0
    detached: bool = False  # keep the ModelActor alive after the driver exits (for Serve)
    torch_threads: int = 0  # 0: leave torch's default; >0 pins intra-op threads in the actor


@dataclass(frozen=True)
class SyntheticConfig:
    length: int = 4000
    seed: int = 11
    volatility: float = 0.004  # per-bar std of the noise in log-price
    ar: float = -0.5  # planted pattern: next return leans against the last one
    cycle_period: int = 24  # planted pattern: a cycle in returns with this period (bars)
    cycle_amplitude: float = 0.005
    start: str = "2024-01-01"


@dataclass(frozen=True)
class CcxtConfig:
    limit: int = 1000  # candles per request (exchange max)
    max_retries: int = 5
    backoff_s: float = 0.5  # first wait; doubles each retry
    backoff_max_s: float = 10.0
    timeout_ms: int = 10000
    # exchanges without fetchTime: a candle row opening more than this after the local clock
    # is garbled (skipped as rule future-timestamp); it bounds the laptop's clock skew too
    clock_slack_s: float = 300.0
    options: dict = field(
        default_factory=dict
    )  # passed to the ccxt exchange constructor (keys from env)


@dataclass(frozen=True)
class DataConfig:
    # "source:SYMBOL[@timeframe]"; source is sample, synthetic or any ccxt exchange id
    symbols: tuple[str, ...] = ("sample:EURUSD", "synthetic:SYN0")
    timeframe: str = (
        "1h"  # default timeframe of symbols that do not name one (samples keep their own)
    )
    extra_timeframes: tuple[str, ...] = ()  # higher timeframes aligned onto the base candles
    since: str | None = None  # ISO date; None: from the start of what the source has
    until: str | None = None
    cache_dir: str = "cache"  # below run.home
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    ccxt: CcxtConfig = field(default_factory=CcxtConfig)


@dataclass(frozen=True)
class LabelConfig:
    pivot_bars: int = 3  # a pivot needs this many bars on each side; confirmed that many bars later
    move_threshold: float = 0.0005  # |next close / close - 1| above this is BUY/SELL, else HOLD


@dataclass(frozen=True)
class FeatureConfig:
    window: int = 32  # candles per model input


@dataclass(frozen=True)
class ModelConfig:
    d_model: int = 64
    n_heads: int = 4
    n_layers: int = 2
    dim_feedforward: int = 128
    dropout: float = 0.1
    device: str = "auto"  # auto | cpu | cuda | cuda:N


@dataclass(frozen=True)
class TrainConfig:
    batch_size: int = 64
    epochs: int = 4
    lr: float = 1e-3
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    candle_loss_weight: float = 1.0
    action_loss_weight: float = 1.0
    hard_sample_weight: float = (
        0.5  # extra per-sample weight, proportional to the sample's normalised loss
    )
    wrong_direction_weight: float = 0.5  # extra weight when the predicted close direction is wrong
    holdout_fraction: float = 0.2  # share of all windows held out: those past one cut time
    trend_window: int = 50  # steps compared for the improving/flat/degrading trend
    batches_per_call: int = 32  # batches per call into the ModelActor during batch training
    # data-parallel training (actors/model/ranks.py): 1 trains in the ModelActor itself; N > 1
    # shards each global batch across N DDP ranks (Ray actors in one placement group)
    workers: int = 1
    worker_num_cpus: float = 1.0  # Ray CPUs per rank (its torch threads, unless ray.torch_threads)
    worker_num_gpus: float = 0.0  # 1 per rank on a GPU cluster (NCCL); 0: CPU ranks (gloo)
    worker_resources: dict[str, float] = field(default_factory=dict)  # custom, per rank
    placement_strategy: str = "PACK"  # the ranks' placement group: PACK (one node) or SPREAD


# The metrics the trainer reports (pipelines.model.trainer.METRICS; a test keeps the two
# equal): the choices of checkpoint.best_metric. Losses: lower is better; accuracies: higher.
BEST_METRICS = ("total_loss", "candle_loss", "action_loss", "candle_accuracy", "action_accuracy")


@dataclass(frozen=True)
class CheckpointConfig:
    uri: str = (
        "checkpoints"  # local folder (below run.home) or an fsspec URI (s3://, gs://, file://)
    )
    every_steps: int = 200
    keep_last: int = 3  # plus the best, which is always kept
    on_best: bool = True
    best_metric: str = "total_loss"  # one of BEST_METRICS


@dataclass(frozen=True)
class TrackingConfig:
    uri: str | None = None  # None: sqlite:///<run.home>/mlflow.db ; or http://host:5000
    enabled: bool = True
    log_every_steps: int = 50
    register_best: bool = True
    log_checkpoints: bool = True
    # base of the MLflow UI links commands print; None: tracking.uri when it is a server, else
    # http://127.0.0.1:5000 (`make mlflow-ui`)
    ui_url: str | None = None


@dataclass(frozen=True)
class BacktestConfig:
    """Model-driven backtests (``candleray backtest``); see pipelines/backtest/model_driven.py."""

    cash: float = 10_000.0  # starting cash of each symbol; the portfolio view splits it evenly
    commission: float = 0.0  # fraction of traded value per side (0.001 = 0.1 %)
    fill: str = "next_open"  # next_open | close
    direction: str = "long_only"  # long_only | long_short
    units: str = (
        "fractional"  # fractional | whole (whole units of a 60k BTC never fill on 10k cash)
    )
    at_end: str = "mark"  # mark | close
    bars_per_year: float | None = None  # None: inferred from each symbol's candles
    confidence: float = (
        0.5  # act on the most likely action only if its probability >= this, else HOLD
    )
    inference_batch: int = (
        256  # windows per forward pass; on CPU a few hundred is fastest (more on a GPU)
    )
    walk_forward: str = "none"  # none | pivots_only | every_candle: train a private copy as it goes
    retrain_every: int = 256  # walk-forward chunk: bars predicted between training rounds
    retrain_epochs: int = 1  # passes over the newly known samples at each training round
    task_num_cpus: float = 0.5  # Ray CPUs per symbol task (fractional, so tasks fit on 2 cores)
    task_resources: dict[str, float] = field(default_factory=dict)  # custom resources per task
    since: str | None = None  # ISO date; None: data.since
    until: str | None = None  # ISO date; None: data.until


@dataclass(frozen=True)
class LiveConfig:
    """Live sessions (``pipelines/live``): hosting, metrics, the training queue and the journal."""

    hosts: int = 2  # session host actors; each holds many sessions and predicts them in one pass
    rolling_window: int = 100  # settled candles in the rolling direction accuracy
    queue_capacity: int = 2048  # samples waiting for training; past it new samples are dropped
    trend_window: int = 20  # training results compared for a session's loss trend
    # below run.home: one SQLite journal per host, <run.name>-host-<i>.sqlite (none with
    # run.database_url: the journals are rows of that database)
    journal_dir: str = "live"
    # sessions per host at most (each costs its host ~1.5 MB, README); past it a start is a 429
    max_sessions: int = 500
    host_num_cpus: float = 0.25  # Ray CPUs per host: it mostly waits for candles
    host_resources: dict[str, float] = field(default_factory=dict)  # custom resources per host


@dataclass(frozen=True)
class ServeConfig:
    """Ray Serve app (``serve/``): the batched predictor deployment and the HTTP ingress."""

    host: str = "127.0.0.1"  # a host other than loopback needs serve.token
    port: int = 8000
    # single: each HTTP ingress replica holds the batched model (one Serve hop per /predict);
    # composed: CPU ingress replicas -> predictor replicas (e.g. GPU ones) through a handle
    topology: str = "single"
    # composed only: how the ingress calls the predictor, "ray" (actor calls, arrays by object
    # ref) or "grpc" (Serve's gRPC between replicas, by value; no steady gain: bench/RESULTS.md)
    predictor_transport: str = "ray"
    replicas: int = 1  # replicas that serve /predict: predictors (composed) or ingresses (single)
    replica_num_cpus: float = 0.25  # Ray CPUs per predictor replica (fractional on a laptop)
    replica_num_gpus: float = 0.0  # set 1 (or a fraction) to run replicas on GPUs
    replica_resources: dict[str, float] = field(default_factory=dict)  # custom, per replica
    max_batch_size: int = 16  # requests per forward pass; live-changeable through reconfigure()
    batch_wait_timeout_s: float = 0.0  # wait for more requests; 0: batch what queued meanwhile
    max_ongoing_requests: int = 64  # per replica; >= max_batch_size, so a batch can fill
    weights_poll_s: float = 0.2  # how often a replica asks the ModelActor for a newer version
    max_request_bytes: int = 1_000_000  # bigger requests are refused (HTTP 413)
    # the HTTP ingress holds no state (everything lives in named actors): add replicas when
    # it, not the predictor, is what caps requests/s (bench/RESULTS.md)
    ingress_replicas: int = 1
    ingress_num_cpus: float = 0.1  # Ray CPUs per ingress replica
    ingress_resources: dict[str, float] = field(default_factory=dict)  # custom, per replica
    # bearer token for routes that change state; secret: never logged, echoed or written out
    token: str | None = field(default=None, metadata={"secret": True})
    cors_origins: tuple[str, ...] = ()  # browser origins allowed to call the API; none by default
    # read when serve.token is unset (a path, or CANDLERAY_SERVE_TOKEN): keeps it out of `ps`
    token_file: str | None = None
    # Host header names served besides the loopback ones and serve.host (DNS-rebinding guard);
    # "*" takes any (only behind a proxy that checks Host itself)
    allowed_hosts: tuple[str, ...] = ()
    body_timeout_s: float = 30.0  # a request body not received in full by then gets 408
    request_timeout_s: float = 300.0  # Serve's end-to-end limit per HTTP request (408 past it)
    keep_alive_timeout_s: int = 5  # idle keep-alive connections are closed after this
    max_running_jobs: int = 4  # training and backtest jobs running at once; past it a 429
    keep_finished_jobs: int = 100  # finished jobs (and their results) kept; the oldest go first


@dataclass(frozen=True)
class SweepConfig:
    """Hyperparameter sweeps on Ray Tune (``candleray sweep``); see pipelines/sweep/."""

    trials: int = 4  # samples drawn from the space; a grid is run this many times over
    scheduler: str = "asha"  # asha (stops poor trials early) | fifo (every trial runs all epochs)
    metric: str = (
        "holdout/total_loss"  # a held-out figure each epoch reports (pipelines/sweep/trial.py)
    )
    mode: str = "min"  # min | max
    max_concurrent: int = 2  # trials running at once; 0: as many as the resources allow
    grace_period: int = 1  # epochs every trial runs before ASHA may stop it
    reduction_factor: float = 2.0  # ASHA keeps the best 1/reduction_factor at each rung
    trial_num_cpus: float = 1.0  # Ray CPUs per trial (also its torch threads)
    trial_num_gpus: float = 0.0  # GPUs per trial; a fraction (0.25) puts several on one GPU
    trial_resources: dict[str, float] = field(default_factory=dict)  # custom, per trial
    storage: str = "sweeps"  # below run.home; multi-node: a folder all nodes mount (no URIs)
    model_name: str | None = None  # registered model of the best trial; None: <run.name>-sweep


@dataclass(frozen=True)
class AnnotationConfig:
    """Trades a person marked (``candleray annotate``) and training on them (``train --annotations``)."""

    path: str = "annotations.sqlite"  # the store: a SQLite file below run.home
    price_tolerance: float = 0.001  # fraction a price may lie outside its candle's low-high
    hold_between: bool = True  # the candles between entry and exit become HOLD samples
    epochs: int = 20  # passes over all annotation samples in ``candleray train --annotations``


@dataclass(frozen=True)
class Config:
    run: RunConfig = field(default_factory=RunConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    data: DataConfig = field(default_factory=DataConfig)
    labels: LabelConfig = field(default_factory=LabelConfig)
    features: FeatureConfig = field(default_factory=FeatureConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    backtest: BacktestConfig = field(default_factory=BacktestConfig)
    annotations: AnnotationConfig = field(default_factory=AnnotationConfig)
    live: LiveConfig = field(default_factory=LiveConfig)
    serve: ServeConfig = field(default_factory=ServeConfig)
    sweep: SweepConfig = field(default_factory=SweepConfig)
