"""The REST API and the dashboard page as a FastAPI app over a ``Backend`` (docs/API.md).

``build_api(backend, serve_cfg)`` is plain: the Serve ingress passes the Ray-connected backend
(``serve.backend.RayBackend``), tests may pass a fake. Request bodies are pydantic models
(422 names the field and the reason); the project's errors map to status codes in one place
(``STATUS``); a refused request changes nothing, because every check runs before any call
that changes state.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Annotated, Any, Literal, Protocol

import numpy as np
import pandas as pd
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    model_validator,
)

from conf import ServeConfig
from pipelines.errors import (
    ActorCallTimeout,
    CandlerayError,
    CapacityError,
    CheckpointError,
    ConflictError,
    DataSourceError,
    InvalidInputError,
    ModeError,
    NotFoundError,
    TemporaryError,
    TrackingError,
    UnavailableError,
)
from serve.checks import checkpoint_choice, safe_errors, time_in_range, timeframe_in_range
from serve.security import Guard
from serve.windows import Bars

WEB = Path(__file__).resolve().parent / "web"
CHART_JS = WEB / "node_modules" / "lightweight-charts" / "dist"
CHART_JS_FILE = "lightweight-charts.standalone.production.js"
SWAGGER_UI = WEB / "node_modules" / "swagger-ui-dist"
# what the dashboard and /docs load: nothing else under serve/web (node_modules, package
# files) is served
PAGE_FILES = {"app.js": "text/javascript", "style.css": "text/css"}
VENDOR_FILES = {
    "lightweight-charts.js": (CHART_JS / CHART_JS_FILE, "text/javascript"),
    "swagger-ui-bundle.js": (SWAGGER_UI / "swagger-ui-bundle.js", "text/javascript"),
    "swagger-ui.css": (SWAGGER_UI / "swagger-ui.css", "text/css"),
    "swagger-favicon.png": (SWAGGER_UI / "favicon-32x32.png", "image/png"),
}

# most specific first: the first class an error is an instance of gives its status
STATUS: tuple[tuple[type[CandlerayError], int], ...] = (
    (ModeError, 409),
    (ConflictError, 409),
    (CapacityError, 429),
    (NotFoundError, 404),
    (CheckpointError, 404),
    (TemporaryError, 503),
    (DataSourceError, 404),
    (InvalidInputError, 422),
    (ActorCallTimeout, 504),
    (UnavailableError, 503),
    (TrackingError, 503),
    (CandlerayError, 422),
)

MODES = ("none", "pivots_only", "every_candle", "manual")
Mode = Literal["none", "pivots_only", "every_candle", "manual"]


def _iso_time(value: Any) -> Any:
    """A request's time must be ISO 8601 text (no zone = UTC): pydantic alone would also take
    a number, or numeric text, as seconds since 1970, so a mistyped field became a 1970 date."""
    if isinstance(value, dt.datetime):
        return value
    if isinstance(value, str):
        try:
            return dt.datetime.fromisoformat(value)
        except ValueError:
            pass
    raise ValueError('a time is ISO 8601 text, e.g. "2024-01-01T00:00:00Z"')


# pandas' nanosecond clock spans 1677-2262 only: a time outside it is refused here, with the
# range, instead of overflowing in a route (500)
Time = Annotated[
    dt.datetime, BeforeValidator(_iso_time), AfterValidator(time_in_range), Field(strict=False)
]


_START_FORMS = (
    "a replay's 'start' is a row offset as a JSON integer (-300: the last 300 bars, after a "
    "warm-up on the bars before; 500: from row 500) or an ISO 8601 time as text (e.g. "
    '"2024-03-01T00:00:00Z")'
)


def _replay_start(value: Any) -> int | str:
    """A JSON integer is a row (as the CLI's ``--start -300``); text must be an ISO time,
    sent on as UTC ISO text: numeric text such as "-300" was read by pandas as the year -300."""
    if isinstance(value, int) and not isinstance(value, bool):
        if abs(value) > 10**9:
            raise ValueError(f"{_START_FORMS}; a row offset is at most 10^9 either way")
        return value
    if isinstance(value, str) and len(value) <= 40:
        try:
            t = time_in_range(dt.datetime.fromisoformat(value))
        except ValueError:
            pass
        else:
            return str(_iso(t))
    raise ValueError(_START_FORMS)


ReplayStart = Annotated[int | str, BeforeValidator(_replay_start)]


class _Body(BaseModel):
    # strict: a field takes its own JSON type only (no "1.5" for a number, 1.0 or true for an
    # integer); times are ISO text (``Time``). A refused body changes nothing.
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, strict=True)


class CandleIn(_Body):
    time: Time
    open: float = Field(gt=0)
    high: float = Field(gt=0)
    low: float = Field(gt=0)
    close: float = Field(gt=0)
    volume: float = Field(ge=0)


class PredictIn(_Body):
    candles: list[CandleIn] | None = Field(default=None, min_length=2, max_length=20_000)
    symbol: str | None = Field(default=None, min_length=1, max_length=200)
    end: Time | None = None

    @model_validator(mode="after")
    def _one_source(self) -> PredictIn:
        if (self.candles is None) == (self.symbol is None):
            raise ValueError(
                "give either 'candles' (a window, oldest first) or 'symbol' (and 'end')"
            )
        if self.end is not None and self.symbol is None:
            raise ValueError(
                "'end' goes with 'symbol'; with 'candles' the window ends at the last one"
            )
        return self


class SessionIn(_Body):
    symbol: str = Field(min_length=1, max_length=200)
    timeframe: Annotated[str, AfterValidator(timeframe_in_range)] | None = Field(
        default=None, max_length=10
    )
    mode: Mode
    source: Literal["replay", "ccxt"] = "replay"
    speed: float = Field(default=5.0, ge=0, le=10_000)
    start: ReplayStart | None = None


class ModeIn(_Body):
    mode: Mode


class ManualTrainIn(_Body):
    action: Literal["BUY", "SELL", "HOLD"]


class TrainingJobIn(_Body):
    kind: Literal["annotations", "history"]
    epochs: int | None = Field(default=None, ge=1, le=1000)


class BacktestIn(_Body):
    symbols: list[str] = Field(min_length=1, max_length=200)
    since: Time | None = None
    until: Time | None = None
    checkpoint: str | None = Field(default=None, max_length=1000)

    @model_validator(mode="after")
    def _order(self) -> BacktestIn:
        if (
            self.since is not None
            and self.until is not None
            and _utc(self.since) > _utc(self.until)
        ):
            raise ValueError("'since' is after 'until'; give the start first")
        return self


class AnnotationIn(_Body):
    symbol: str = Field(min_length=1, max_length=200)
    timeframe: Annotated[str, AfterValidator(timeframe_in_range)] = Field(
        min_length=1, max_length=10
    )
    side: Literal["long", "short"]
    entry_time: Time
    entry_price: float = Field(gt=0)
    exit_time: Time
    exit_price: float = Field(gt=0)
    note: str = Field(default="", max_length=2000)


class CheckpointIn(_Body):
    path: str = Field(min_length=1, max_length=2000)


def _utc(t: dt.datetime) -> pd.Timestamp:
    ts = pd.Timestamp(t)
    return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")


def _iso(t: dt.datetime | None) -> str | None:
    return None if t is None else _utc(t).isoformat()


class Backend(Protocol):
    """What the API needs; ``serve.backend.RayBackend`` is the real one."""

    async def predict(
        self, candles: Bars | None, symbol: str | None, end: str | None
    ) -> dict[str, Any]: ...
    async def start_session(self, spec: dict[str, Any]) -> dict[str, Any]: ...
    async def sessions(self) -> list[dict[str, Any]]: ...
    async def session(self, session_id: str) -> dict[str, Any]: ...
    async def chart(self, session_id: str, since: str | None) -> dict[str, Any]: ...
    async def set_mode(self, session_id: str, mode: str) -> dict[str, Any]: ...
    async def manual_train(self, session_id: str, action: str) -> dict[str, Any]: ...
    async def stop_session(self, session_id: str) -> dict[str, Any]: ...
    async def start_job(self, kind: str, params: dict[str, Any]) -> str: ...
    async def job(self, job_id: str) -> dict[str, Any]: ...
    async def jobs(self) -> list[dict[str, Any]]: ...
    async def cancel_job(self, job_id: str) -> dict[str, Any]: ...
    async def training_metrics(self) -> dict[str, Any]: ...
    async def add_annotation(self, fields: dict[str, Any]) -> dict[str, Any]: ...
    async def annotations(
        self, symbol: str | None, timeframe: str | None
    ) -> list[dict[str, Any]]: ...
    async def remove_annotation(self, annotation_id: str) -> dict[str, Any]: ...
    async def checkpoints(self) -> list[dict[str, Any]]: ...
    async def load_checkpoint(self, path: str) -> dict[str, Any]: ...
    async def mark_best(self, path: str) -> dict[str, Any]: ...
    async def health(self) -> dict[str, Any]: ...


_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)


def _ns(t: dt.datetime) -> int:
    """ns since the epoch of a request's time (no zone = UTC), exact to the microsecond."""
    d = (t if t.tzinfo is not None else t.replace(tzinfo=dt.timezone.utc)) - _EPOCH
    return (d.days * 86_400 + d.seconds) * 1_000_000_000 + d.microseconds * 1_000


def _bars(candles: list[CandleIn]) -> Bars:
    """The request's candles as arrays (a small frame costs pandas more than the features)."""
    return Bars(
        np.array([_ns(c.time) for c in candles], dtype=np.int64),
        np.array([(c.open, c.high, c.low, c.close, c.volume) for c in candles], dtype=np.float64),
    )


def build_api(backend: Backend, s: ServeConfig) -> FastAPI:
    app = FastAPI(
        title="candleray",
        version="1",
        description="Train, serve and backtest an OHLCV transformer: live sessions in four modes, "
        "batch training, backtests, annotations, checkpoints. See docs/API.md.",
        # FastAPI's own pages load Swagger UI / ReDoc from a CDN: /docs is served below from
        # the npm package instead, so it works offline; ReDoc is not shipped
        docs_url=None,
        redoc_url=None,
    )
    app.add_middleware(Guard, serve=s)
    if s.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(s.cors_origins),
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=["Authorization", "Content-Type"],
        )

    @app.exception_handler(CandlerayError)
    async def _known(request: Request, exc: CandlerayError) -> JSONResponse:
        status = next(code for cls, code in STATUS if isinstance(exc, cls))
        return JSONResponse({"detail": str(exc)}, status_code=status)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        # FastAPI's own handler echoes each bad input whole: a NaN cannot be encoded (500),
        # and a big body came back in full
        return JSONResponse({"detail": safe_errors(exc.errors())}, status_code=422)

    # ---- dashboard ----------------------------------------------------------------------
    @app.get("/", include_in_schema=False)
    async def dashboard() -> FileResponse:
        return FileResponse(WEB / "index.html")

    @app.get("/static/vendor/{name}", include_in_schema=False)
    async def vendor_file(name: str) -> FileResponse:
        if name not in VENDOR_FILES:
            raise NotFoundError(f"no file /static/vendor/{name}")
        path, media_type = VENDOR_FILES[name]
        if not path.exists():
            # the server's install is incomplete; the client can do nothing about it
            raise UnavailableError(
                f"/static/vendor/{name} is not installed on this server (its npm packages in "
                "serve/web are missing)"
            )
        return FileResponse(path, media_type=media_type)

    @app.get("/static/{name}", include_in_schema=False)
    async def page_file(name: str) -> FileResponse:
        if name not in PAGE_FILES:
            raise NotFoundError(f"no file /static/{name}")
        return FileResponse(WEB / name, media_type=PAGE_FILES[name])

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        # relative URLs: they work behind a proxy that mounts the app under a path
        return get_swagger_ui_html(
            openapi_url="openapi.json",
            title="candleray API",
            swagger_js_url="static/vendor/swagger-ui-bundle.js",
            swagger_css_url="static/vendor/swagger-ui.css",
            swagger_favicon_url="static/vendor/swagger-favicon.png",
        )

    # ---- inference ----------------------------------------------------------------------
    @app.post("/predict", tags=["inference"])
    async def predict(body: PredictIn) -> dict[str, Any]:
        candles = _bars(body.candles) if body.candles is not None else None
        return await backend.predict(candles, body.symbol, _iso(body.end))

    # ---- sessions -----------------------------------------------------------------------
    @app.post("/sessions", status_code=201, tags=["sessions"])
    async def start_session(body: SessionIn) -> dict[str, Any]:
        return await backend.start_session(body.model_dump())

    @app.get("/sessions", tags=["sessions"])
    async def sessions() -> list[dict[str, Any]]:
        return await backend.sessions()

    @app.get("/sessions/{session_id}", tags=["sessions"])
    async def session(session_id: str) -> dict[str, Any]:
        return await backend.session(session_id)

    @app.get("/sessions/{session_id}/chart", tags=["sessions"])
    async def chart(session_id: str, since: Time | None = None) -> dict[str, Any]:
        return await backend.chart(session_id, _iso(since))

    @app.post("/sessions/{session_id}/mode", tags=["sessions"])
    async def set_mode(session_id: str, body: ModeIn) -> dict[str, Any]:
        return await backend.set_mode(session_id, body.mode)

    @app.post("/sessions/{session_id}/train", tags=["sessions"])
    async def manual_train(session_id: str, body: ManualTrainIn) -> dict[str, Any]:
        return await backend.manual_train(session_id, body.action)

    @app.delete("/sessions/{session_id}", tags=["sessions"])
    async def stop_session(session_id: str) -> dict[str, Any]:
        return await backend.stop_session(session_id)

    # ---- training and backtests (jobs) --------------------------------------------------
    @app.post("/training/jobs", status_code=202, tags=["training"])
    async def start_training(body: TrainingJobIn) -> dict[str, str]:
        return {"job_id": await backend.start_job("training", body.model_dump())}

    @app.get("/training-metrics", tags=["training"])
    async def training_metrics() -> dict[str, Any]:
        return await backend.training_metrics()

    @app.post("/backtests", status_code=202, tags=["backtests"])
    async def start_backtest(body: BacktestIn) -> dict[str, str]:
        checkpoint = None
        if body.checkpoint is not None:
            # only what the store lists (or best / latest): a path or URL of the client's
            # choosing would be fetched by the server (SSRF) and its errors reveal files
            checkpoint = checkpoint_choice(body.checkpoint, await backend.checkpoints())
        params = {
            "symbols": body.symbols,
            "since": _iso(body.since),
            "until": _iso(body.until),
            "checkpoint": checkpoint,
        }
        return {"job_id": await backend.start_job("backtest", params)}

    @app.get("/jobs", tags=["jobs"])
    async def jobs() -> list[dict[str, Any]]:
        return await backend.jobs()

    @app.get("/jobs/{job_id}", tags=["jobs"])
    async def job(job_id: str) -> dict[str, Any]:
        return await backend.job(job_id)

    @app.post("/jobs/{job_id}/cancel", status_code=202, tags=["jobs"])
    async def cancel_job(job_id: str) -> dict[str, Any]:
        """Ask a running job to stop: it shows ``cancel_requested`` until it stops, then
        ``state: cancelled`` (a training job stops after the call in flight, with the steps it
        applied in its error). 404 for an unknown job, 409 for one that has ended."""
        return await backend.cancel_job(job_id)

    # ---- annotations --------------------------------------------------------------------
    @app.post("/annotations", status_code=201, tags=["annotations"])
    async def add_annotation(body: AnnotationIn) -> dict[str, Any]:
        fields = body.model_dump()
        fields["entry_time"], fields["exit_time"] = _iso(body.entry_time), _iso(body.exit_time)
        return await backend.add_annotation(fields)

    @app.get("/annotations", tags=["annotations"])
    async def annotations(
        symbol: str | None = Query(default=None, max_length=200),
        timeframe: str | None = Query(default=None, max_length=10),
    ) -> list[dict[str, Any]]:
        return await backend.annotations(symbol, timeframe)

    @app.delete("/annotations/{annotation_id}", tags=["annotations"])
    async def remove_annotation(annotation_id: str) -> dict[str, Any]:
        return await backend.remove_annotation(annotation_id)

    # ---- checkpoints --------------------------------------------------------------------
    @app.get("/checkpoints", tags=["checkpoints"])
    async def checkpoints() -> list[dict[str, Any]]:
        return await backend.checkpoints()

    @app.post("/checkpoints/load", tags=["checkpoints"])
    async def load_checkpoint(body: CheckpointIn) -> dict[str, Any]:
        return await backend.load_checkpoint(body.path)

    @app.post("/checkpoints/best", tags=["checkpoints"])
    async def mark_best(body: CheckpointIn) -> dict[str, Any]:
        return await backend.mark_best(body.path)

    # ---- health -------------------------------------------------------------------------
    @app.get("/health", tags=["health"])
    async def health() -> dict[str, Any]:
        return await backend.health()

    return app
