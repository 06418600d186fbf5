"""A local HTTP server that speaks enough of Binance's spot REST API for ccxt.

Three routes: ``GET /api/v3/exchangeInfo`` (what ``ccxt.binance.load_markets``
reads when told to load spot markets only), ``GET /api/v3/klines`` (what
``fetch_ohlcv`` calls) and ``GET /api/v3/time`` (``fetch_time``). Candles come from a deterministic series, so a test can
compute exactly what a fetch must return; ``startTime`` / ``endTime`` / ``limit``
are honoured as Binance does, so pagination is real.

Faults are scripted per route with :meth:`FakeBinance.plan`; each request to that
route takes the next entry (``"ok"`` once the plan is used up):

- ``"429"`` / ``"418"``: rate limited, with ``Retry-After`` and Binance's JSON body
- ``"500"``, ``"502"``, ``"503"``, ``"504"``: a gateway error page (HTML, not JSON)
- ``"timeout"``: sleep ``slow_s`` (longer than the client timeout), then answer
- ``"hold"``: answer only once the test calls :meth:`FakeBinance.release` (``holding``
  counts the requests held now): an exchange as slow as the test wants, with no timing
- ``"badjson"``: status 200, ``application/json``, a truncated JSON body
- ``"html200"``: status 200, an HTML page instead of JSON
- ``"reset"``: close the connection without an answer
- ``"badrequest"``: 400 with Binance's JSON error ``-1100`` (a client error, not temporary)
- ``"ok"``: answer normally

Every request is recorded in :attr:`FakeBinance.requests`. ``bars`` (how many candles
exist) and ``page_cap`` (most rows per answer) may be changed while serving.

The exchange's clock: by default "now" is half-way through bar ``bars - 1`` (served, still
open). Setting ``now_ms`` instead makes the bars up to the one open at ``now_ms`` exist
(``bars`` is then ignored), and ``/api/v3/time`` answers it.

With ``partial_open_bar = True`` the bar still open is served half-formed (close = open),
as a real exchange serves it, so a client that takes a bar before it closed is caught.

Answers can be rewritten per request with :meth:`FakeBinance.edit_next`: each klines
answer takes the next queued function of its rows (reorder them, repeat them, drop some,
break one), to play a late, repeated or out-of-order exchange.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit, urlunsplit

import ccxt
import numpy as np
import pandas as pd

_INTERVAL_MS = {
    "1m": 60_000,
    "5m": 300_000,
    "15m": 900_000,
    "1h": 3_600_000,
    "4h": 14_400_000,
    "1d": 86_400_000,
}
_FAULTS = {
    "ok",
    "429",
    "418",
    "500",
    "502",
    "503",
    "504",
    "timeout",
    "hold",
    "badjson",
    "html200",
    "reset",
    "badrequest",
}
_ROUTES = ("klines", "exchangeInfo", "time")


@dataclass(frozen=True)
class Request:
    route: str  # "klines", "exchangeInfo" or the raw path of anything else
    params: dict[str, str]
    fault: str


def _market(base: str, quote: str) -> dict:
    return {
        "symbol": base + quote,
        "status": "TRADING",
        "baseAsset": base,
        "baseAssetPrecision": 8,
        "quoteAsset": quote,
        "quotePrecision": 8,
        "quoteAssetPrecision": 8,
        "orderTypes": ["LIMIT", "MARKET"],
        "isSpotTradingAllowed": True,
        "isMarginTradingAllowed": False,
        "permissions": ["SPOT"],
        "filters": [
            {
                "filterType": "PRICE_FILTER",
                "minPrice": "0.01",
                "maxPrice": "1000000.00",
                "tickSize": "0.01",
            },
            {
                "filterType": "LOT_SIZE",
                "minQty": "0.00001",
                "maxQty": "9000.0",
                "stepSize": "0.00001",
            },
        ],
    }


class FakeBinance:
    """Binance spot REST on 127.0.0.1:<ephemeral port>, serving ``bars`` candles from ``start``."""

    def __init__(
        self,
        *,
        start: pd.Timestamp,
        bars: int,
        interval: str = "1h",
        pairs: Iterable[tuple[str, str]] = (("BTC", "USDT"), ("ETH", "USDT")),
        slow_s: float = 1.0,
    ) -> None:
        self.start_ms = int(pd.Timestamp(start).value // 1_000_000)
        self.bars = bars  # tests may grow this to simulate time passing on the exchange
        self.interval = interval
        self.step_ms = _INTERVAL_MS[interval]
        self.pairs = tuple(pairs)
        self.slow_s = slow_s
        self.page_cap = 1000  # most rows per answer, whatever the client asks (Binance: 1000)
        self.requests: list[Request] = []
        self.now_ms: int | None = None  # the exchange's clock; None: half-way through bar bars-1
        # True: the bar still open is served as a real exchange serves it, half-formed (close =
        # open, a small range and volume), so a candle taken before it closed shows
        self.partial_open_bar = False
        self._edits: deque[Callable[[list[list]], list[list]]] = deque()
        self._plans: dict[str, deque[str]] = {r: deque() for r in _ROUTES}
        self._lock = threading.Lock()
        self._released = threading.Event()  # "hold" answers wait for it (release())
        self.holding = 0  # requests held by "hold" now
        self._httpd: ThreadingHTTPServer | None = None  # bound on __enter__

    # -- lifecycle --------------------------------------------------------------------------
    @property
    def url(self) -> str:
        if self._httpd is None:
            raise RuntimeError("FakeBinance is not serving; use it as a context manager")
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> FakeBinance:
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._httpd.daemon_threads = True
        threading.Thread(target=self._httpd.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._released.set()  # no handler thread stays held
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    # -- scripting and inspection -----------------------------------------------------------
    def plan(self, faults: Iterable[str], route: str = "klines") -> None:
        """Queue faults for the next requests to ``route`` ("klines" or "exchangeInfo")."""
        faults = list(faults)
        unknown = sorted(set(faults) - _FAULTS)
        if unknown or route not in _ROUTES:
            raise ValueError(
                f"unknown fault(s) {unknown} or route {route!r}; "
                f"faults are {sorted(_FAULTS)}, routes are {list(_ROUTES)}"
            )
        with self._lock:
            self._plans[route].extend(faults)

    def release(self) -> None:
        """Let every held request (and any later "hold") answer."""
        self._released.set()

    def _hold(self) -> None:
        with self._lock:
            self.holding += 1
        try:
            if not self._released.wait(300):  # a hang guard: a test that forgot to release
                raise RuntimeError("FakeBinance: a held request was never released")
        finally:
            with self._lock:
                self.holding -= 1

    def reset(self) -> None:
        with self._lock:
            self.requests.clear()
            for q in self._plans.values():
                q.clear()
            self._edits.clear()

    def edit_next(self, *edits: Callable[[list[list]], list[list]]) -> None:
        """Rewrite the rows of the next klines answers, one function per answer, in order."""
        with self._lock:
            self._edits.extend(edits)

    def server_ms(self) -> int:
        """The exchange's "now" in ms."""
        if self.now_ms is not None:
            return self.now_ms
        return self.open_ms(self.bars) - self.step_ms // 2

    def last_bar(self) -> int:
        """Index of the newest bar the exchange has (it is still open)."""
        if self.now_ms is not None:
            return (self.now_ms - self.start_ms) // self.step_ms
        return self.bars - 1

    def calls(self, route: str = "klines") -> list[Request]:
        with self._lock:
            return [r for r in self.requests if r.route == route]

    def _next_fault(self, route: str, params: dict[str, str]) -> str:
        with self._lock:
            q = self._plans.get(route)
            fault = q.popleft() if q else "ok"
            self.requests.append(Request(route, params, fault))
            return fault

    # -- the data ---------------------------------------------------------------------------
    def open_ms(self, i: int) -> int:
        return self.start_ms + i * self.step_ms

    def kline(self, symbol: str, i: int) -> list:
        """Bar ``i`` of ``symbol`` in Binance's array format (prices as strings)."""
        base = (100.0 if symbol.startswith("BTC") else 20.0) * (1 + 0.0005 * i)
        o = base * (1 + 0.01 * math.sin(i / 5))
        c = base * (1 + 0.01 * math.sin((i + 1) / 5))
        h = max(o, c) * 1.002
        low = min(o, c) * 0.998
        v = 10.0 + (i * 37) % 11
        t = self.open_ms(i)
        f = "{:.8f}".format
        return [
            t,
            f(o),
            f(h),
            f(low),
            f(c),
            f(v),
            t + self.step_ms - 1,
            f(v * c),
            100 + i % 7,
            f(v / 2),
            f(v * c / 2),
            "0",
        ]

    def expected(self, symbol: str, first: int, last: int) -> pd.DataFrame:
        """Bars ``first..last`` (inclusive) as the candle schema, parsed as ccxt parses them."""
        rows = [self.kline(symbol, i) for i in range(first, last + 1)]
        idx = pd.to_datetime(np.array([r[0] for r in rows], dtype="int64"), unit="ms", utc=True)
        vals = np.array([[float(x) for x in r[1:6]] for r in rows], dtype="float64").reshape(-1, 5)
        return pd.DataFrame(
            vals,
            index=pd.DatetimeIndex(idx, name="time"),
            columns=["open", "high", "low", "close", "volume"],
        )

    def klines(self, params: dict[str, str]) -> tuple[int, object]:
        symbol = params.get("symbol", "")
        if symbol not in {b + q for b, q in self.pairs}:
            return 400, {"code": -1121, "msg": "Invalid symbol."}
        if params.get("interval") != self.interval:
            return 400, {"code": -1120, "msg": "Invalid interval."}
        limit = min(int(params.get("limit", 500)), self.page_cap)
        end = self.last_bar()
        if "endTime" in params:
            end = min(end, (int(params["endTime"]) - self.start_ms) // self.step_ms)
        if "startTime" in params:
            first = max(0, -(-(int(params["startTime"]) - self.start_ms) // self.step_ms))
        else:  # Binance answers the most recent bars
            first = max(0, end - limit + 1)
        last = min(end, first + limit - 1)
        rows = [self.kline(symbol, i) for i in range(first, last + 1)]
        if self.partial_open_bar and rows and rows[-1][0] == self.open_ms(self.last_bar()):
            rows[-1] = _half_formed(rows[-1])
        with self._lock:
            edit = self._edits.popleft() if self._edits else None
        return 200, rows if edit is None else edit(rows)

    def exchange_info(self) -> dict:
        return {
            "timezone": "UTC",
            "serverTime": self.open_ms(self.bars),
            "rateLimits": [],
            "exchangeFilters": [],
            "symbols": [_market(b, q) for b, q in self.pairs],
        }


def _half_formed(row: list) -> list:
    """A kline row as it looks while its bar is still open: only its first trades in it."""
    o = float(row[1])
    f = "{:.8f}".format
    return [row[0], f(o), f(o * 1.0001), f(o * 0.9999), f(o), f(1.0), *row[6:]]


def _handler_for(server: FakeBinance) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:  # keep test output quiet
            pass

        def _send(self, status: int, body: bytes, ctype: str, headers: dict | None = None) -> None:
            try:
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(body)
            except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout test)
                pass

        def _json(self, status: int, obj: object, headers: dict | None = None) -> None:
            self._send(status, json.dumps(obj).encode(), "application/json;charset=UTF-8", headers)

        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            parts = urlsplit(self.path)
            params = {k: v[-1] for k, v in parse_qs(parts.query).items()}
            route = {
                "/api/v3/klines": "klines",
                "/api/v3/exchangeInfo": "exchangeInfo",
                "/api/v3/time": "time",
            }.get(parts.path, parts.path)
            fault = server._next_fault(route, params)
            if route not in _ROUTES:
                self._json(404, {"code": -1, "msg": f"fake exchange has no route {parts.path}"})
                return
            if fault in ("429", "418"):
                self._json(
                    int(fault),
                    {"code": -1003, "msg": "Too many requests; banned."},
                    {"Retry-After": "1"},
                )
                return
            if fault in ("500", "502", "503", "504"):
                self._send(
                    int(fault),
                    f"<html><body>{fault} gateway error</body></html>".encode(),
                    "text/html",
                )
                return
            if fault == "badrequest":
                self._json(400, {"code": -1100, "msg": "Illegal characters found in a parameter."})
                return
            if fault == "reset":
                self.close_connection = True
                return
            if fault == "timeout":
                time.sleep(server.slow_s)
            if fault == "hold":
                server._hold()
            if fault == "badjson":
                self._send(200, b'[[1700000000000,"100.0","101.0",', "application/json")
                return
            if fault == "html200":
                self._send(200, b"<html><body>maintenance</body></html>", "text/html")
                return
            if route == "exchangeInfo":
                self._json(200, server.exchange_info())
            elif route == "time":
                self._json(200, {"serverTime": server.server_ms()})
            else:
                self._json(*server.klines(params))

    return Handler


def binance_client(
    server: FakeBinance, *, timeout_ms: int = 500, fetch_time: bool = True
) -> ccxt.binance:
    """A real ``ccxt.binance`` whose every API URL points at ``server``; spot markets only.

    ``fetch_time=False``: the client looks like one of ccxt's exchanges without fetchTime
    (bitstamp, gemini, ...): ``has['fetchTime']`` is False and ``fetch_time`` raises
    ``NotSupported``, as theirs do.
    """
    ex = ccxt.binance(
        {
            "enableRateLimit": False,
            "timeout": timeout_ms,
            # only GET /api/v3/exchangeInfo in load_markets (no fapi/dapi/sapi requests)
            "options": {"fetchMarkets": {"types": ["spot"]}, "fetchMargins": False},
        }
    )
    local = urlsplit(server.url)
    api = {}
    for name, url in ex.urls["api"].items():
        p = urlsplit(url)
        api[name] = urlunsplit((local.scheme, local.netloc, p.path, p.query, p.fragment))
    ex.urls["api"] = api
    if not fetch_time:
        ex.has = {**ex.has, "fetchTime": False}

        def no_fetch_time(params: object = None) -> int:
            raise ccxt.NotSupported(f"{ex.id} fetchTime() is not supported (a test's exchange)")

        ex.fetch_time = no_fetch_time  # type: ignore[method-assign]
    return ex


def binance_options(server: FakeBinance) -> dict:
    """ccxt constructor options that point ``ccxt.binance`` at ``server`` (spot only).

    For code that builds its own exchange from config (``data.ccxt.options``), e.g. a
    session host in another process: the same URLs and options as :func:`binance_client`.
    """
    ex = binance_client(server)
    return {
        "urls": {"api": dict(ex.urls["api"])},
        "options": {"fetchMarkets": {"types": ["spot"]}, "fetchMargins": False},
    }
