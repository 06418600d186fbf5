"""A session's bounded candle history, and live windows built by the training code.

Windows, next-candle targets and labels are computed by the very functions training uses
(the array forms of ``pipelines.data.features.make_windows``/``higher_timeframes``/
``candle_targets`` and ``pipelines.data.labels.action_labels``, which their frame forms call)
on the newest bars only, so there is no second feature implementation to drift from the
first (tested equal to the batch windows).

How many bars are enough. A window of T bars ending at bar e, with the sample of bar
e - n still to build (n = ``labels.pivot_bars``), reads bars e - n - T + 1 .. e. For an extra
timeframe H over base B (k = ceil(H / B)), each window bar also reads the last *closed*
higher candle, which opened at most 2H - B before that bar: up to 2k - 1 bars earlier.
``capacity = T + n + 2k + 1`` keeps all of it (gaps only shorten the span in bars), so
truncating the history never changes a number.

Cost. A bar's higher-timeframe row is final once the bar has closed, so each is kept, and
``higher_from_values`` (a resample, the dearest step) runs again only on a bar that
may see a newly closed higher candle: about once per higher bar (tested exact, gaps too).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterator, Sequence

import numpy as np
import pandas as pd

from pipelines.data.candles import COLUMNS, Candle, check_values, timeframe_seconds
from pipelines.data.features import higher_from_values, targets_from_values, windows_from_values
from pipelines.data.labels import UNKNOWN, labels_from_values, pivot_actions
from pipelines.errors import CandleValidationError


def iter_candles(frame: pd.DataFrame) -> Iterator[Candle]:
    """The rows of a candle frame (the schema of ``pipelines.data.candles``) as ``Candle``s."""
    times = frame.index.as_unit("ns").asi8
    for t, row in zip(times.tolist(), frame[list(COLUMNS)].to_numpy().tolist(), strict=True):
        yield Candle(t, *row)


def check_candle(c: Candle, last_time: int | None, symbol: str) -> tuple[str, str] | None:
    """(kind, message) if a feed candle must be skipped, else None.

    kind: ``nan`` or ``invalid`` (the candle schema's rules, checked by ``check_values``,
    whose message names the rule), ``duplicate`` or ``out_of_order`` (not after ``last_time``).
    """
    o, h, lo, cl, v = c.values()
    sound = (
        all(math.isfinite(x) for x in (o, h, lo, cl, v))
        and min(o, h, lo, cl) > 0
        and h >= max(o, cl)
        and lo <= min(o, cl)
        and v >= 0
    )
    if not sound:  # the fast test above is the schema's rules; the validator names the one broken
        try:
            check_values(np.array([c.time]), np.array([c.values()]), symbol)
        except CandleValidationError as exc:
            return ("nan" if exc.rule == "finite" else "invalid"), str(exc)
    if last_time is not None and c.time <= last_time:
        kind = "duplicate" if c.time == last_time else "out_of_order"
        last = pd.Timestamp(last_time, tz="UTC")
        return kind, f"candle at {c.timestamp} is not after the last one ({last})"
    return None


def history_capacity(window: int, pivot_bars: int, timeframe: str, extra: tuple[str, ...]) -> int:
    """Bars a session keeps: enough for every window, target, label and higher candle it builds."""
    base = timeframe_seconds(timeframe)
    k = max((math.ceil(timeframe_seconds(tf) / base) for tf in extra), default=0)
    return max(window + pivot_bars + 2 * k + 1, 2 * pivot_bars + 2)


_COL = {c: i for i, c in enumerate(COLUMNS)}


def windows_of_many(
    asks: Sequence[tuple[CandleHistory, tuple[int, ...]]], window: int
) -> list[tuple[np.ndarray, np.ndarray]]:
    """``CandleHistory.windows`` (x, sigma) of many histories in one ``windows_from_values`` call.

    Each history's rows are placed one after another and each window's end moved with them; a
    window reads only its own ``window`` rows, so none crosses into another history's, and every
    value is the one a call per history gives (tested equal). One call for all the sessions of a
    tick costs about what one session's call did: per session, most of that call was NumPy's
    per-operation overhead on a 32-bar window, not arithmetic.
    """
    parts = [h._window_rows(window, back) for h, back in asks]
    offsets = np.cumsum([0] + [len(v) for v, _, _ in parts])
    values = np.concatenate([v for v, _, _ in parts])
    n_higher = len(parts[0][1]) if parts else 0
    higher = [np.concatenate([hs[e] for _, hs, _ in parts]) for e in range(n_higher)]
    ends = np.concatenate([e + o for (_, _, e), o in zip(parts, offsets, strict=False)])
    x, sigma = windows_from_values(values, window, higher, ends)
    cuts = np.cumsum([len(back) for _, back in asks])[:-1]
    return list(zip(np.split(x, cuts), np.split(sigma, cuts), strict=True))


def _frame(times: np.ndarray, values: np.ndarray) -> pd.DataFrame:
    idx = pd.DatetimeIndex(times.view("M8[ns]"), name="time").tz_localize("UTC")
    return pd.DataFrame(values, index=idx, columns=list(COLUMNS))


class CandleHistory:
    """The newest ``capacity`` candles of one session; ``seen`` counts every candle appended."""

    def __init__(self, capacity: int, timeframe: str, extra: tuple[str, ...]) -> None:
        self.capacity, self.timeframe, self.extra = capacity, timeframe, tuple(extra)
        self._bars: deque[Candle] = deque(maxlen=capacity)
        # the same bars as arrays, appended in place: rows [_end - len, _end) of a buffer twice
        # the capacity, moved to its front when full (one copy per ``capacity`` appends)
        self._times = np.zeros(2 * capacity, dtype=np.int64)
        self._values = np.zeros((2 * capacity, 5), dtype=np.float64)
        self._end = 0
        self.seen = 0  # bars appended since the session began (primed ones included)
        self._cache: tuple[int, list[np.ndarray]] | None = None
        # per bar, its higher-timeframe row (4E,) log o/h/l/c: final once the bar has closed;
        # rows [_rows_end - _rows_n, _rows_end) of a buffer twice the capacity, as the bars
        self._rows = np.zeros((2 * capacity, 4 * len(self.extra)), dtype=np.float64)
        self._rows_end = self._rows_n = 0
        self._rows_seen = 0  # ``seen`` when the newest row was computed
        base_ns = timeframe_seconds(timeframe) * 1_000_000_000
        grid = [timeframe_seconds(tf) * 1_000_000_000 for tf in self.extra]
        # resample bins of minute/hour/day timeframes start at multiples of the timeframe since
        # the epoch; weekly bins are anchored otherwise, and a non-coarser "extra" is the bar
        # itself: for those, recompute every bar
        fixed = all(tf[-1] in "mhd" and g > base_ns for tf, g in zip(self.extra, grid, strict=True))
        self._grid: list[int] | None = grid if fixed else None
        self._base_ns = base_ns

    def __len__(self) -> int:
        return len(self._bars)

    @property
    def last(self) -> Candle | None:
        return self._bars[-1] if self._bars else None

    def append(self, candle: Candle) -> None:
        if self._end == len(self._times):
            keep = self.capacity - 1
            self._times[:keep] = self._times[self._end - keep : self._end]
            self._values[:keep] = self._values[self._end - keep : self._end]
            self._end = keep
        self._times[self._end] = candle.time
        self._values[self._end] = candle.values()
        self._end += 1
        self._bars.append(candle)
        self.seen += 1

    def candles(self) -> list[Candle]:
        return list(self._bars)

    def _arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """(N,) open times and (N, 5) o/h/l/c/v of the bars held (views, oldest first)."""
        n = len(self._bars)
        return self._times[self._end - n : self._end], self._values[self._end - n : self._end]

    def frame(self) -> pd.DataFrame:
        """The history as a candle frame (UTC index named ``time``, float64 o/h/l/c/v)."""
        times, values = self._arrays()
        return _frame(times.copy(), values.copy())

    def _higher_arrays(self) -> list[np.ndarray]:
        """The higher-timeframe arrays of the bars held, built once per appended candle."""
        if self._cache is not None and self._cache[0] == self.seen:
            return self._cache[1]
        higher = self._higher() if self.extra and self._bars else []
        self._cache = (self.seen, higher)
        return higher

    def _higher(self) -> list[np.ndarray]:
        """``higher_timeframes`` of the history, recomputed only when the newest bar may see a
        newly closed higher candle (a bin boundary passed since the previous bar's close);
        otherwise the newest bar's row is the previous bar's, as ``higher_timeframes`` gives."""
        times, values = self._arrays()
        n = len(times)
        missing = min(self.seen - self._rows_seen, n)
        self._rows_seen = self.seen
        reuse = (
            self._grid is not None
            and missing == 1
            and n >= 2
            and not any(
                (int(times[-1]) + self._base_ns) // g > (int(times[-2]) + self._base_ns) // g
                for g in self._grid
            )
        )
        if reuse:
            self._add_rows(self._rows[self._rows_end - 1 : self._rows_end])
        else:
            higher = higher_from_values(times, values, self.timeframe, self.extra)
            full = np.concatenate(higher, axis=1)
            self._add_rows(full[len(full) - missing :])
        rows = self._rows[self._rows_end - n : self._rows_end].copy()  # (N, 4E)
        return [rows[:, 4 * e : 4 * e + 4] for e in range(len(self.extra))]

    def _add_rows(self, new: np.ndarray) -> None:
        """Append rows (K, 4E), keeping the newest ``capacity``; the buffer's front is reused
        when full (one copy per ``capacity`` rows), where stacking a deque of rows per candle
        cost more than the window's own arithmetic."""
        new = new[len(new) - min(len(new), self.capacity) :].copy()  # may alias the buffer
        if self._rows_end + len(new) > len(self._rows):
            keep = min(self._rows_n, self.capacity - len(new))
            self._rows[:keep] = self._rows[self._rows_end - keep : self._rows_end]
            self._rows_end = self._rows_n = keep
        self._rows[self._rows_end : self._rows_end + len(new)] = new
        self._rows_end += len(new)
        self._rows_n = min(self._rows_n + len(new), self.capacity)

    def windows(
        self, window: int, back: tuple[int, ...], targets: tuple[int, ...] = ()
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Windows ending ``back`` bars before the newest (0 = newest), in one call.

        Returns x (M, T, F) float32, sigma (M,) and the next-candle targets (K, 5) float32 of
        the windows at positions ``targets`` of ``back`` (each needs a next bar: back >= 1).
        """
        ((x, sigma),) = windows_of_many([(self, back)], window)
        return x, sigma, self.targets(window, back, targets, sigma)

    def targets(
        self, window: int, back: tuple[int, ...], targets: tuple[int, ...], sigma: np.ndarray
    ) -> np.ndarray:
        """The next-candle targets (K, 5) of the windows at positions ``targets`` of ``back``,
        given those windows' ``sigma`` (see ``windows``)."""
        pick = np.asarray(targets, dtype=np.int64)
        if not len(pick):
            return np.zeros((0, 5), dtype=np.float32)
        values = self._arrays()[1]
        ends = len(values) - 1 - np.asarray(back, dtype=np.int64)
        return targets_from_values(values, window, ends[pick], sigma[pick])

    def _window_rows(
        self, window: int, back: tuple[int, ...]
    ) -> tuple[np.ndarray, list[np.ndarray], np.ndarray]:
        """The rows the windows ending ``back`` bars before the newest read: (R, 5) values,
        the higher-timeframe arrays' same rows, and the window ends within them."""
        higher = self._higher_arrays()
        values = self._arrays()[1]
        ends = len(values) - 1 - np.asarray(back, dtype=np.int64)
        lo = max(0, int(ends.min()) - window + 1)
        return values[lo:], [h[lo:] for h in higher], ends - lo

    def has_window(self, window: int, back: int = 0) -> bool:
        """True when the session has seen a full window ending ``back`` bars before the newest."""
        return self.seen - back >= window and len(self._bars) - back >= window

    def labels_at(self, back: int, pivot_bars: int, move_threshold: float) -> tuple[int, int]:
        """(pivot action, per-candle label) of the bar ``back`` before the newest; UNKNOWN = -1.

        Computed on the newest bars by ``pivot_actions`` and ``action_labels`` themselves;
        with ``back >= pivot_bars`` both are final (the same values the whole series gives).
        """
        values = self._arrays()[1][-(back + pivot_bars + 1) :]
        if len(values) <= back:
            return UNKNOWN, UNKNOWN
        i = len(values) - 1 - back
        piv = pivot_actions(values[:, _COL["high"]], values[:, _COL["low"]], pivot_bars)
        high, low, close = (values[:, _COL[c]] for c in ("high", "low", "close"))
        lab = labels_from_values(high, low, close, pivot_bars, move_threshold)
        return int(piv[i]), int(lab[i])
