"""The API's backend on Ray: the model (this replica's own, or the predictor deployment's), the
ModelActor, the session hosts, the JobBoard, the annotation store and the MLflow registry,
each found by name.

Every method is async and awaits Ray object refs, so a slow actor never blocks the ingress's
event loop; every call into an actor has the configured deadline (``ray.call_timeout_s``).
Answers are made JSON-safe here (NaN/inf -> null, timestamps -> ISO text or UNIX seconds).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from typing import Any, Protocol

import numpy as np
import pandas as pd
import ray

from actors.jobs import job_board, start_job
from actors.model.actor import ModelClient
from conf import Config
from pipelines.backtest.report import plain
from pipelines.data.sources import load_candles, parse_symbol
from pipelines.errors import (
    ActorCallTimeout,
    AnnotationError,
    CandlerayError,
    DataSourceError,
    InvalidInputError,
    NotFoundError,
    TemporaryError,
    UnavailableError,
)
from serve.batched import WindowPrediction
from serve.windows import Bars, interpret, model_input, model_input_from_values

log = logging.getLogger(__name__)


def unix(t: Any) -> int:
    return int(pd.Timestamp(t).timestamp())


def chart_json(records: dict[str, list[dict[str, Any]]]) -> dict[str, list[dict[str, Any]]]:
    """A session host's chart records (ISO times) -> the chart library's shape (``time`` in
    UNIX seconds); a trade's side is its direction (long: bought first)."""
    ohlc = ("open", "high", "low", "close")
    out = {
        "candles": [
            {"time": unix(r["time"]), **{k: r[k] for k in ohlc}} for r in records["candles"]
        ],
        "ghosts": [
            {"time": unix(r["time"]), **{k: r[k] for k in ohlc}, "version": r.get("version")}
            for r in records["ghosts"]
        ],
        "pivots": [
            {"time": unix(r["time"]), "kind": r["kind"], "price": r["price"]}
            for r in records["pivots"]
        ],
        "signals": [
            {
                "time": unix(r["time"]),
                "action": r["action"],
                "prob": max(r["p_hold"], r["p_buy"], r["p_sell"]),
            }
            for r in records["signals"]
        ],
        "trades": [
            {
                "entry_time": unix(r["entry_time"]),
                "entry_price": r["entry_price"],
                "exit_time": unix(r["exit_time"]),
                "exit_price": r["exit_price"],
                "side": "long" if r["size"] > 0 else "short",
                "pnl": r["pnl"],
            }
            for r in records["trades"]
        ],
    }
    return plain(out)


class Predictions(Protocol):
    """What answers ``/predict``: the ingress replica's own batched model
    (``serve.predictor_app.ModelReplica``, serve.topology=single) or a handle to the
    predictor deployment (``HandlePredictor``, composed)."""

    async def predict(self, windows: np.ndarray) -> list[WindowPrediction]: ...
    async def info(self) -> dict[str, Any]: ...


class HandlePredictor:
    """``Predictions`` through a ``DeploymentHandle`` of ``BatchedPredictor``."""

    def __init__(self, handle: Any) -> None:
        self.handle = handle

    async def predict(self, windows: np.ndarray) -> list[WindowPrediction]:
        answers: list[WindowPrediction] = await self.handle.predict.remote(windows)
        return answers

    async def info(self) -> dict[str, Any]:
        got: dict[str, Any] = await self.handle.info.remote()
        return got


class RayBackend:
    def __init__(self, cfg: Config, predictor: Predictions) -> None:
        self.cfg = cfg
        self.predictor = predictor
        self.model = ModelClient.find(cfg)  # never created here: it would die with the replica
        self.timeout_s = cfg.ray.call_timeout_s
        self._host_handles: list[Any] | None = None
        self.board = job_board(cfg)  # held: the board lives while a handle does

    async def _get(self, ref: Any, what: str) -> Any:
        try:
            return await asyncio.wait_for(ref, self.timeout_s)
        except asyncio.TimeoutError as exc:
            raise ActorCallTimeout(
                f"{what} did not answer within {self.timeout_s:.0f}s (ray.call_timeout_s)"
            ) from exc
        except ray.exceptions.RayTaskError as exc:
            if isinstance(exc.cause, CandlerayError):
                raise exc.cause from None
            raise

    async def _model(self, method: str, *args: Any) -> Any:
        return await self._get(self.model.submit(method, *args), f"ModelActor.{method}")

    # ---- inference ----------------------------------------------------------------------

    async def predict(
        self, candles: Bars | None, symbol: str | None, end: str | None
    ) -> dict[str, Any]:
        d, f = self.cfg.data, self.cfg.features
        if candles is not None:
            # ~0.1 ms of array work for a window of candles: a thread hop would cost more
            x = model_input_from_values(
                *candles, f.window, d.timeframe, d.extra_timeframes, "request"
            )
        else:
            assert symbol is not None
            spec = parse_symbol(symbol, d.timeframe)
            data = await asyncio.to_thread(
                load_candles, spec, dataclasses.replace(d, since=None, until=end)
            )
            recent = data.tail(_history_bars(f.window, spec.timeframe, d.extra_timeframes))
            x = model_input(recent, f.window, spec.timeframe, d.extra_timeframes, spec.key)
        answers = await self._get(self.predictor.predict(x.x), "the predictor")
        a = answers[0]
        sig = interpret(a.candle, a.probs, x, self.cfg.backtest.confidence)
        return plain(
            {
                "time": x.end,
                "ghost": {"time": sig.time, **sig.ghost},
                "probs": sig.probs,
                "signal": sig.action,
                "version": a.version,
                "generation": a.generation,
            }
        )

    # ---- sessions -----------------------------------------------------------------------

    def _hosts(self) -> list[Any]:
        """The model's session hosts, found by name once (a handle outlives host restarts)."""
        if self._host_handles is None:
            from actors.hosts.host import find_hosts

            try:
                self._host_handles = find_hosts(self.cfg)
            except ValueError as exc:
                raise UnavailableError(
                    f"the session hosts of {self.cfg.run.name!r} are not running in Ray namespace "
                    f"{self.cfg.ray.namespace!r}; `candleray serve` starts them "
                    "(in code: actors.start_hosts(cfg))"
                ) from exc
        return self._host_handles

    async def _gather(self, refs: list[Any], what: str) -> list[Any]:
        return list(await asyncio.gather(*(self._get(r, what) for r in refs)))

    async def start_session(self, spec: dict[str, Any]) -> dict[str, Any]:
        from actors.hosts.host import assign_host

        hosts = self._hosts()
        stats = await self._gather([h.stats.remote() for h in hosts], "session host stats")
        host = hosts[assign_host(spec["symbol"], [s["sessions"] for s in stats])]
        ref = host.start_session.remote(
            spec["symbol"],
            spec.get("timeframe"),
            spec["mode"],
            spec["source"],
            spec.get("speed"),
            spec.get("start"),
        )
        return plain(await self._get(ref, "session host start_session"))

    async def sessions(self) -> list[dict[str, Any]]:
        hosts = self._hosts()
        lists = await self._gather([h.list_sessions.remote() for h in hosts], "list_sessions")
        return plain([s for one in lists for s in one])

    async def _host_of(self, session_id: str) -> tuple[Any, dict[str, Any]]:
        """The host running ``session_id`` and the session's status; NotFoundError if none."""
        from actors.hosts.host import host_of

        missing = NotFoundError(
            f"no running session {session_id!r}; GET /sessions lists the running ones"
        )
        hosts = self._hosts()
        try:
            index = host_of(session_id)
        except InvalidInputError:
            raise missing from None
        if index >= len(hosts):
            raise missing
        try:  # a host's status() refuses only a session it does not hold
            status = await self._get(hosts[index].status.remote(session_id), "host.status")
        except InvalidInputError:
            raise missing from None
        return hosts[index], status

    async def _on_host(self, session_id: str, method: str, *args: Any) -> Any:
        host, _ = await self._host_of(session_id)
        return await self._get(getattr(host, method).remote(session_id, *args), f"host.{method}")

    async def session(self, session_id: str) -> dict[str, Any]:
        _, status = await self._host_of(session_id)
        return plain(status)

    async def chart(self, session_id: str, since: str | None) -> dict[str, Any]:
        return chart_json(await self._on_host(session_id, "chart", since))

    async def set_mode(self, session_id: str, mode: str) -> dict[str, Any]:
        return plain(await self._on_host(session_id, "set_mode", mode))

    async def manual_train(self, session_id: str, action: str) -> dict[str, Any]:
        return plain(await self._on_host(session_id, "manual_train", action))

    async def stop_session(self, session_id: str) -> dict[str, Any]:
        await self._on_host(session_id, "stop_session")
        return {"stopped": session_id}

    # ---- jobs ---------------------------------------------------------------------------

    async def start_job(self, kind: str, params: dict[str, Any]) -> str:
        return await asyncio.to_thread(start_job, self.board, self.cfg, kind, params)

    async def job(self, job_id: str) -> dict[str, Any]:
        got = await self._get(self.board.get.remote(job_id), "JobBoard.get")
        if got is None:
            raise NotFoundError(f"no job {job_id!r}; GET /jobs lists them")
        return plain(got)

    async def jobs(self) -> list[dict[str, Any]]:
        return plain(await self._get(self.board.list.remote(), "JobBoard.list"))

    async def cancel_job(self, job_id: str) -> dict[str, Any]:
        return plain(await self._get(self.board.cancel.remote(job_id), "JobBoard.cancel"))

    async def training_metrics(self) -> dict[str, Any]:
        m = await self._model("metrics")
        served = None
        try:
            info = await self.predictor.info()
            served = info.get("version")
        except Exception as exc:  # the stats still answer while a replica restarts
            log.warning("predictor info unavailable: %s", exc)
        return plain({**m, "served_version": served})

    # ---- annotations --------------------------------------------------------------------

    def _store(self) -> Any:
        from pipelines.data.annotations import AnnotationStore, candle_loader, store_path

        return AnnotationStore(
            store_path(self.cfg),
            loader=candle_loader(self.cfg.data),
            tolerance=self.cfg.annotations.price_tolerance,
        )

    async def add_annotation(self, fields: dict[str, Any]) -> dict[str, Any]:
        from pipelines.data.annotations import Annotation

        a = Annotation.parse(**fields)
        try:
            stored = await asyncio.to_thread(self._store().add, a)
        except AnnotationError as exc:  # an unknown symbol is a 404, as on every route
            cause = exc.__cause__
            if isinstance(cause, DataSourceError) and not isinstance(cause, TemporaryError):
                raise NotFoundError(str(exc)) from exc
            raise
        return plain(stored.to_dict())

    async def annotations(self, symbol: str | None, timeframe: str | None) -> list[dict[str, Any]]:
        items = await asyncio.to_thread(self._store().find, symbol, timeframe)
        return plain([a.to_dict() for a in items])

    async def remove_annotation(self, annotation_id: str) -> dict[str, Any]:
        store = self._store()
        known = {a.id for a in await asyncio.to_thread(store.find)}
        if annotation_id not in known:
            raise NotFoundError(f"no annotation {annotation_id!r}; GET /annotations lists them")
        await asyncio.to_thread(store.remove, [annotation_id])
        return {"removed": annotation_id}

    # ---- checkpoints --------------------------------------------------------------------

    async def checkpoints(self) -> list[dict[str, Any]]:
        return plain(await self._model("list_checkpoints"))

    async def _known_checkpoint(self, path: str) -> dict[str, Any]:
        for c in await self._model("list_checkpoints"):
            if path in (c.get("path"), c.get("name")):
                return c
        raise NotFoundError(f"no checkpoint {path!r}; GET /checkpoints lists them")

    async def load_checkpoint(self, path: str) -> dict[str, Any]:
        c = await self._known_checkpoint(path)
        await self._model("load_checkpoint", c["path"])
        return plain(await self._model("metrics"))

    async def mark_best(self, path: str) -> dict[str, Any]:
        c = await self._known_checkpoint(path)
        return plain(await self._model("mark_best", c["path"]))

    # ---- health -------------------------------------------------------------------------

    async def health(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        ok = True
        try:
            m = await asyncio.wait_for(self.model.submit("metrics"), 5)
            out["model_actor"] = {"ok": True, "steps": m.get("steps"), "version": m.get("version")}
        except Exception as exc:
            ok, out["model_actor"] = False, {"ok": False, "error": str(exc)[:300]}
        try:
            info = await asyncio.wait_for(self.predictor.info(), 5)
            out["predictor"] = {"ok": True, **info}
        except Exception as exc:
            ok, out["predictor"] = False, {"ok": False, "error": str(exc)[:300]}
        try:
            refs = [h.stats.remote() for h in self._hosts()]
            stats = await asyncio.wait_for(asyncio.gather(*refs), 5)
            out["session_hosts"] = [{"ok": True, **s} for s in stats]
        except Exception as exc:
            ok, out["session_hosts"] = False, [{"ok": False, "error": str(exc)[:300]}]
        try:
            # read only, in the actor's read group: a probe never writes the registry and
            # never queues behind training
            t = await asyncio.wait_for(self.model.submit("tracking_status"), 5)
            out["mlflow"] = {"ok": not t.get("errors") and not t.get("pending_error"), **t}
        except Exception as exc:
            out["mlflow"] = {"ok": False, "error": str(exc)[:300]}
        out["status"] = "ok" if ok and out["mlflow"].get("ok", True) else "degraded"
        out["time"] = time.time()
        return plain(out)


def _history_bars(window: int, timeframe: str, extra: tuple[str, ...]) -> int:
    """Bars before the window's end that give its first bar a closed higher candle."""
    from pipelines.data.candles import timeframe_seconds

    base = timeframe_seconds(timeframe)
    ratio = max([timeframe_seconds(tf) // base for tf in extra], default=1)
    return window + 2 * ratio
