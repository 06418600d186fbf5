"""A live session: one (symbol, timeframe, mode) with its own state, driven candle by candle.

A host drives many sessions per closed candle::

    win = session.on_candle(candle)            # settle, paper fills, due samples; the window
    ...one forward pass over the windows of all sessions (``predict_windows``)...
    session.apply_prediction(row.candle, row.probs, row.version)   # ghost, signal, paper order
    queue.put(session.take_samples()); journal.write(session.take_records())

``on_candle`` returns None (and the bar trades as HOLD) until a full window exists, and for a
bad candle (NaN or broken candle rules, duplicate, out of order: counted, journaled and
skipped). If the host never answers a window, the next candle trades the bar as HOLD and
counts a missed prediction.

A prediction settles against the next candle that arrives, whatever its time: the next row,
the candle the model is trained to predict (``candle_targets``) and that backtests score it
against (``model_stats``). Bars that never come (a market closure: weekends, holidays; or a
hole in the feed, which the feed reports) are a jump in time, not bad data: counted in
``gaps`` and journaled as a ``gap`` event, and nothing is lost. Paper trades count bars as
``simulate`` does, row by row, so a closure changes neither. Only a session's end (``end``:
stopped, or its feed finished) leaves a prediction unsettled for good: counted ``expired``.

Which samples each mode trains, and when: ``pipelines.live.policy``.

Sample weighting (more for badly predicted samples, extra for a wrong direction) is applied
by ``Trainer`` when the batch trains, from the model's own errors at that step; samples carry
no weight of their own, so the rule lives in one place.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipelines.backtest.inference import confidence_actions, trade_signals
from pipelines.data.candles import COLUMNS, timeframe_seconds
from pipelines.data.features import denormalise
from pipelines.data.labels import ACTIONS
from pipelines.errors import InvalidInputError, ModeError
from pipelines.live.config import SessionSettings, check_mode
from pipelines.live.history import (
    Candle,
    CandleHistory,
    check_candle,
    history_capacity,
    windows_of_many,
)
from pipelines.live.metrics import SessionMetrics, settle
from pipelines.live.paper import PaperBook, PaperState, Trade
from pipelines.live.policy import due_samples
from pipelines.live.queue import Sample, TrainCounts

log = logging.getLogger(__name__)

Record = tuple[str, int, dict[str, Any]]  # (kind, bar time ns, data) for the journal


@dataclass(frozen=True)
class LiveWindow:
    """The model input of one session at bar ``time``: x (T, F) float32, its sigma and anchor close."""

    session_id: str
    time: int
    x: np.ndarray
    sigma: float
    anchor: float


@dataclass(frozen=True)
class LivePrediction:
    """What a session publishes for the next bar: ghost o/h/l/c (4,), probs (3,), action, signal."""

    time: int  # the bar it was made at
    target: int  # when the bar it predicts opens if none is missing (time + one timeframe);
    # it settles against the next candle that arrives, after a market closure too
    ghost: np.ndarray
    probs: np.ndarray
    action: str
    signal: int
    version: int


@dataclass(frozen=True)
class CandleStep:
    """A candle ``begin_candle`` took: its due samples and the window ends (bars back) it needs."""

    candle: Candle
    due: tuple[tuple[int, int, str], ...]
    backs: tuple[int, ...]
    full: bool
    window: int


class Session:
    def __init__(
        self, session_id: str, symbol: str, timeframe: str, mode: str, settings: SessionSettings
    ) -> None:
        self.session_id, self.symbol, self.timeframe = session_id, symbol, timeframe
        self.settings = settings
        self.mode = check_mode(mode)
        self.step_ns = timeframe_seconds(timeframe) * 1_000_000_000
        cap = history_capacity(
            settings.window, settings.pivot_bars, timeframe, settings.extra_timeframes
        )
        self.history = CandleHistory(cap, timeframe, settings.extra_timeframes)
        self.book = PaperBook(settings.spec)
        self.metrics = SessionMetrics(rolling=deque(maxlen=settings.rolling_window))
        self.last_time: int | None = None
        self.pending: dict[str, Any] | None = None  # the prediction waiting for its candle
        self.awaiting: dict[str, Any] | None = None  # the newest bar waiting for its prediction
        self.manual: tuple[int, int] | None = None  # (bar time, action) asked, queued next bar
        self.trades: deque[Trade] = deque(maxlen=1000)  # recent closed trades (all in the journal)
        self.ended = False  # stopped or finished: takes no more candles (``end``)
        self._samples: list[Sample] = []
        self._records: list[Record] = []

    # -- the step -----------------------------------------------------------------------------
    def on_candle(self, c: Candle) -> LiveWindow | None:
        """Take one closed candle; returns the window to predict, or None (see module doc)."""
        step = self.begin_candle(c)
        if step is None:
            return None
        built = windows_of_many([(self.history, step.backs)], step.window) if step.backs else []
        return self.end_candle(step, *(built[0] if built else (None, None)))

    def begin_candle(self, c: Candle) -> CandleStep | None:
        """``on_candle`` up to the windows it needs (None: a bad candle, skipped); a tick builds
        the windows of all its sessions in one call (``windows_of_many``), then ``end_candle``."""
        if self.ended:
            raise InvalidInputError(
                f"{self.session_id} has ended (stopped or finished) and takes no more candles; "
                "start a new session to go on"
            )
        bad = check_candle(c, self.last_time, self.symbol)
        if bad is not None:
            kind, why = bad
            self.metrics.count_bad(kind)
            self._record("bad_data", c.time, {"kind": kind, "detail": why})
            log.warning("%s: skipped a candle at %s: %s", self.session_id, c.timestamp, why)
            return None
        if self.awaiting is not None:  # the host never answered the previous window
            self.metrics.missed += 1
            self._close_bar(0)
        if self.last_time is not None and c.time > self.last_time + self.step_ns:
            # a closure or a feed's hole, told apart by neither: reported, not bad data
            missing = (c.time - self.last_time) // self.step_ns - 1
            self.metrics.gaps += 1
            self._record("gap", c.time, {"bars_missing": int(missing)})
        self.history.append(c)
        self.metrics.candles += 1
        self.last_time = c.time
        self._record(
            "candle",
            c.time,
            dict(zip(COLUMNS, c.values(), strict=True)),
        )
        self._trades(self.book.open_bar(c.time, c.open))
        self._settle(c)
        s = self.settings
        due, self.manual = due_samples(self.mode, self.history, s, self.manual, c.time)
        full = self.history.has_window(s.window)
        backs = tuple(b for b, _, _ in due) + ((0,) if full else ())
        return CandleStep(c, tuple(due), backs, full, s.window)

    def prime(self, candles: list[Candle]) -> int:
        """Load past candles (e.g. from the source's history) before the first live one, so
        the session predicts from its first live candle instead of after a window of them.

        Primed bars are journaled and feed windows and labels, but are not predicted, settled
        or paper-traded. Returns how many were taken (bad ones are skipped, as live).
        """
        if self.metrics.candles:
            raise InvalidInputError(
                f"{self.session_id}: prime() is for a new session; this one has taken "
                f"{self.metrics.candles} live candles already"
            )
        taken = 0
        for c in candles:
            if check_candle(c, self.last_time, self.symbol) is None:
                self.history.append(c)
                self.last_time = c.time
                self._record("candle", c.time, dict(zip(COLUMNS, c.values(), strict=True)))
                taken += 1
        return taken

    def apply_prediction(self, candle: Any, probs: Any, version: int) -> LivePrediction:
        """The model's row for this session's window: candle (5,) normalised, probs (3,)."""
        a = self.awaiting
        if a is None:
            raise InvalidInputError(
                f"{self.session_id}: no window is waiting for a prediction; call on_candle first"
            )
        pred = np.asarray(candle, dtype=np.float64).reshape(-1)
        p = np.asarray(probs, dtype=np.float64).reshape(-1)
        if (
            pred.shape != (5,)
            or p.shape != (3,)
            or not (np.isfinite(pred).all() and np.isfinite(p).all())
        ):
            raise InvalidInputError(
                f"{self.session_id}: a prediction is a finite candle (5,) and probs (3,); "
                f"got shapes {pred.shape} and {p.shape}"
            )
        s = self.settings
        ghost = denormalise(pred[None], np.array([a["anchor"]]), np.array([a["sigma"]]))[0]
        act = int(confidence_actions(p[None], s.confidence)[0])
        signal = int(trade_signals(np.array([act]))[0])
        out = LivePrediction(
            a["time"], a["time"] + self.step_ns, ghost, p, ACTIONS[act], signal, int(version)
        )
        self.metrics.predictions += 1
        self.metrics.weights_version = int(version)
        self.pending = {**a, "target": out.target, "pred": pred.tolist(), "ghost": ghost.tolist()}
        self._record(
            "prediction",
            a["time"],
            {
                "target": out.target,
                "ghost": ghost.tolist(),
                "probs": p.tolist(),
                "action": out.action,
                "signal": signal,
                "version": int(version),
            },
        )
        self._close_bar(signal)
        return out

    # -- training requests ---------------------------------------------------------------------
    def manual_sample(self, action: str | int) -> dict[str, Any]:
        """Mark the newest closed bar with ``action`` (BUY/SELL/HOLD) for training (module doc)."""
        if self.mode != "manual":
            raise ModeError(
                f"{self.session_id} is in {self.mode!r} mode, which trains "
                f"{'never' if self.mode == 'none' else 'by itself'}; manual training needs "
                "mode 'manual': switch with set_mode('manual') (candleray live --mode manual)"
            )
        a = (
            ACTIONS.index(action.upper())
            if isinstance(action, str) and action.upper() in ACTIONS
            else action
        )
        if a not in (0, 1, 2):
            raise InvalidInputError(f"manual action {action!r} is not one of {list(ACTIONS)}")
        if self.last_time is None or not self.history.has_window(self.settings.window):
            raise InvalidInputError(
                f"{self.session_id}: no full window of {self.settings.window} candles yet; "
                "wait for more candles before training manually"
            )
        self.manual = (self.last_time, int(a))
        self._record("manual", self.last_time, {"action": ACTIONS[int(a)]})
        return {
            "bar": self.last_time,
            "action": ACTIONS[int(a)],
            "queued_at": self.last_time + self.step_ns,
        }

    def set_mode(self, mode: str) -> None:
        """Switch the training mode now; samples due from the next candle on follow it."""
        old, self.mode = self.mode, check_mode(mode)
        if self.mode != "manual":
            self.manual = None
        self._record("mode", self.last_time or 0, {"from": old, "to": self.mode})

    def end(self) -> bool:
        """The session takes no more candles (stopped, or its feed finished): the prediction
        still waiting for its next candle can never settle, so it is counted ``expired`` and
        journaled (an ``expired`` event; the state with the next write). True if it ended now,
        False if it had ended before (counted once, a restored session included)."""
        if self.ended:
            return False
        self.ended = True
        p = self.pending
        if p is not None:
            self.metrics.expired += 1
            self._record("expired", p["time"], {"target": p["target"]})
        return True

    def reopen(self) -> None:
        """Undo ``end`` whose write did not commit (a stop that failed): the session runs on,
        its prediction pending again, as the journal still has it."""
        if not self.ended:
            return
        self.ended = False
        if self.pending is not None:
            self.metrics.expired -= 1
            self._records = [r for r in self._records if r[0] != "expired"]

    def take_samples(self) -> list[Sample]:
        out, self._samples = self._samples, []
        return out

    def take_records(self) -> list[Record]:
        """This step's journal records, ending with the session's state (written atomically)."""
        out, self._records = self._records, []
        if out:
            out.append(("state", self.last_time or 0, self.state_dict()))
        return out

    def return_records(self, records: list[Record]) -> None:
        """Take back records a journal write did not commit, ahead of any newer ones, so the
        next ``take_records`` carries them (its own state record replaces this one's)."""
        self._records[:0] = [r for r in records if r[0] != "state"]

    # -- internals -----------------------------------------------------------------------------
    def _settle(self, c: Candle) -> None:
        p, self.pending = self.pending, None
        if p is None:
            return
        s = settle(  # against the candle that arrived, the next row (module doc)
            np.array(p["pred"]),
            np.array(p["ghost"]),
            p["anchor"],
            p["sigma"],
            np.array([c.open, c.high, c.low, c.close]),
        )
        self.metrics.add(s)
        self._record("settlement", c.time, {"made_at": p["time"], **s.as_dict()})

    def end_candle(
        self, step: CandleStep, x: np.ndarray | None, sigma: np.ndarray | None
    ) -> LiveWindow | None:
        """Queue the due samples and return the window to predict, from the windows (x, sigma)
        ending ``step.backs`` bars before the newest (None when there are none)."""
        c, due, h = step.candle, step.due, self.history
        if step.backs:
            assert x is not None and sigma is not None
            y = h.targets(step.window, step.backs, tuple(range(len(due))), sigma)
            bars = h.candles()
            for k, (back, act, reason) in enumerate(due):
                t = bars[-1 - back].time
                self._samples.append(Sample(self.session_id, t, x[k], y[k], act, reason, c.time))
                self.metrics.samples += 1
                self._record(
                    "train_request", t, {"action": ACTIONS[act], "reason": reason, "due": c.time}
                )
        if not step.full:
            self._close_bar(0)
            return None
        assert x is not None and sigma is not None
        self.awaiting = {"time": c.time, "sigma": float(sigma[-1]), "anchor": c.close}
        return LiveWindow(self.session_id, c.time, x[-1], float(sigma[-1]), c.close)

    def window_to_predict(self) -> LiveWindow | None:
        """The window still waiting for a prediction (e.g. after a restore), else None."""
        if self.awaiting is None:
            return None
        x, sigma, _ = self.history.windows(self.settings.window, (0,))
        return LiveWindow(
            self.session_id, self.awaiting["time"], x[0], float(sigma[0]), self.awaiting["anchor"]
        )

    def _close_bar(self, signal: int) -> None:
        last = self.history.last
        assert last is not None
        self.awaiting = None
        self._trades(self.book.close_bar(last.close, signal))

    def _trades(self, trades: list[Trade]) -> None:
        for t in trades:
            self.trades.append(t)
            self._record("trade", t.exit_time, t.as_dict())

    def _record(self, kind: str, time: int, data: dict[str, Any]) -> None:
        self._records.append((kind, int(time), data))

    # -- state ---------------------------------------------------------------------------------
    def summary(self, train: TrainCounts | None = None) -> dict[str, Any]:
        """The per-session metrics a user sees (``train``: this session's queue accounting)."""
        st = self.book.st
        opened = self.book.open_trade()
        return {
            "session_id": self.session_id,
            "symbol": self.symbol,
            "timeframe": self.timeframe,
            "mode": self.mode,
            "last_time": self.last_time,
            **self.metrics.summary(),
            "equity": st.equity,
            "paper_pnl": st.equity - self.settings.spec.cash,
            "closed_pnl": st.pnl,
            "trades": st.trades,
            "win_rate": st.wins / st.trades if st.trades else float("nan"),
            "open_trade_pnl": opened.pnl if opened else 0.0,
            "skipped_entries": st.skipped_entries,
            **(train or TrainCounts()).summary(),
        }

    def state_dict(self) -> dict[str, Any]:
        return {
            "session_id": self.session_id,
            "symbol": self.symbol,
            "timeframe": self.timeframe,
            "mode": self.mode,
            "last_time": self.last_time,
            "seen": self.history.seen,
            "pending": self.pending,
            "awaiting": self.awaiting,
            "manual": list(self.manual) if self.manual else None,
            "ended": self.ended,
            "metrics": self.metrics.to_json(),
            # every field is a number or None: a shallow copy is asdict's result, without its
            # recursive deep copy, which the journal paid for every session on every tick
            "paper": {k: getattr(self.book.st, k) for k in self.book.st.__dataclass_fields__},
        }

    @classmethod
    def restore(
        cls,
        state: dict[str, Any],
        candles: list[Candle],
        settings: SessionSettings,
        trades: Sequence[Trade] = (),
    ) -> Session:
        """Rebuild a session from its journaled state, newest candles and closed trades."""
        s = cls(state["session_id"], state["symbol"], state["timeframe"], state["mode"], settings)
        for c in candles[-s.history.capacity :]:
            s.history.append(c)
        s.history.seen = int(state["seen"])
        s.last_time, s.pending, s.awaiting = state["last_time"], state["pending"], state["awaiting"]
        s.manual = tuple(state["manual"]) if state["manual"] else None
        s.ended = bool(state.get("ended", False))  # states journaled before end() have none
        s.metrics = SessionMetrics.from_json(state["metrics"])
        s.book = PaperBook(settings.spec, PaperState(**state["paper"]))
        s.trades.extend(trades)
        return s
