"""The weights a backtest runs: a checkpoint, or the ModelActor's current published version.

A backtest never holds the live training tensors: a checkpoint is read from storage, and the
actor's weights come from its published snapshot (a CPU copy in the object store).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from conf import Config
from pipelines.data.features import n_features
from pipelines.errors import BacktestError, CheckpointError
from pipelines.model.checkpoints import CheckpointStore
from pipelines.model.network import ModelSpec
from pipelines.storage import filesystem, translated

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BacktestWeights:
    """A model's weights and what is needed to feed it.

    spec: rebuilds the network (window length and feature count included).
    state: the model's state dict on CPU.
    source: ``"checkpoint"`` or ``"actor"``; version: the checkpoint path or
    ``<generation>/v<version>`` of the actor; step: its training step.
    extra_timeframes: the higher timeframes the model was trained with (they set its features).
    """

    spec: ModelSpec
    state: Mapping[str, torch.Tensor]
    source: str
    version: str
    step: int
    extra_timeframes: tuple[str, ...]

    def describe(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "version": self.version,
            "step": self.step,
            "extra_timeframes": list(self.extra_timeframes),
            "spec": self.spec.to_dict(),
        }


def _checked(spec: ModelSpec, extra: tuple[str, ...], where: str) -> tuple[str, ...]:
    if n_features(len(extra)) != spec.n_features:
        raise BacktestError(
            f"{where}: the model takes {spec.n_features} features per bar but extra timeframes "
            f"{list(extra)} give {n_features(len(extra))}; run the backtest with the "
            "data.extra_timeframes the model was trained with"
        )
    return extra


def weights_from_checkpoint(path: str, cfg: Config) -> BacktestWeights:
    """Load ``path`` (a .pt listed by ``candleray checkpoints``), or ``best`` / ``latest`` of ``run.name``.

    The features follow the checkpoint's own config (its ``data.extra_timeframes``), so a
    model trained with other settings than the current ones is still fed what it expects.
    """
    store_uri = f"{cfg.checkpoint.uri.rstrip('/')}/{cfg.run.name}"
    if path in ("best", "latest"):
        store = CheckpointStore(store_uri, cfg.checkpoint.keep_last)
        if path == "latest":
            got = store.load_latest_good()
        else:
            best = store.best()
            got = None if best is None else store.load(best.path)
        if got is None:
            raise CheckpointError(
                f"no {path} checkpoint of model {cfg.run.name!r} under {store_uri}; train "
                "first (POST /training/jobs or `candleray train`) or name a checkpoint the "
                "store lists (GET /checkpoints or `candleray checkpoints`)"
            )
        state, meta = got
        path = f"{store_uri}/{meta['file']}" if "file" in meta else path
    else:
        with translated(setting="checkpoint", uri=path, action="looking up the checkpoint"):
            fs, local = filesystem(path)
            found = fs.exists(local)
        if not found:
            raise CheckpointError(
                f"checkpoint {path} does not exist; name one the store lists (GET "
                "/checkpoints or `candleray checkpoints`), or best / latest"
            )
        state, meta = CheckpointStore(path.rsplit("/", 1)[0] if "/" in path else ".").load(path)
    if "model" not in state or "spec" not in state:
        raise CheckpointError(
            f"checkpoint {path} holds no model weights and spec; "
            "it was not written by candleray's trainer"
        )
    spec = ModelSpec(**state["spec"])
    saved = meta.get("config", {}).get("data", {}).get("extra_timeframes")
    extra = tuple(saved) if saved is not None else cfg.data.extra_timeframes
    return BacktestWeights(
        spec,
        state["model"],
        "checkpoint",
        str(path),
        int(meta.get("step", 0)),
        _checked(spec, extra, f"checkpoint {path}"),
    )


def weights_from_actor(cfg: Config) -> BacktestWeights | None:
    """The ModelActor's current published weights, or None when no actor ``run.name`` is running.

    Only looks the actor up by name: a backtest never starts a ModelActor.
    """
    import ray

    from actors.model.actor import ModelClient

    try:
        handle = ray.get_actor(cfg.run.name, namespace=cfg.ray.namespace)
    except ValueError:
        return None
    client = ModelClient(handle, cfg.ray.call_timeout_s, cfg.run.name)
    snap = client.call("weights_snapshot")
    state = ray.get(snap["ref"], timeout=cfg.ray.call_timeout_s)
    spec = ModelSpec(**snap["spec"])
    return BacktestWeights(
        spec,
        state,
        "actor",
        f"{snap['generation']}/v{snap['version']}",
        int(snap["version"]),
        _checked(spec, cfg.data.extra_timeframes, "ModelActor"),
    )


def resolve_weights(cfg: Config, checkpoint: str | None = None) -> BacktestWeights:
    """``checkpoint`` if given; else the running ModelActor's weights; else the newest checkpoint."""
    if checkpoint is not None:
        return weights_from_checkpoint(checkpoint, cfg)
    got = weights_from_actor(cfg)
    if got is not None:
        return got
    log.info("no ModelActor %r is running; using its newest checkpoint", cfg.run.name)
    try:
        return weights_from_checkpoint("latest", cfg)
    except CheckpointError as exc:
        raise CheckpointError(
            f"no ModelActor named {cfg.run.name!r} is running (namespace "
            f"{cfg.ray.namespace!r}), and {exc}"
        ) from exc
