"""What a session trains on, and when: the training policy of each live mode.

Label timing (every mode): the sample of bar t is the window ending at bar t, its next
candle (bar t + 1) and an action label; it is queued once that label is final, at the close
of bar t + max(1, labels.pivot_bars) -- the rule of
``pipelines.backtest.walk_forward.label_known_at``, so a replayed session and a walk-forward
backtest over the same bars train on the same samples with the same labels (tested).

* ``none``: nothing.
* ``pivots_only``: bar t if it is a confirmed pivot (``pivot_actions``: low -> BUY, high ->
  SELL; a bar that is both is no pivot), at t + pivot_bars, each once.
* ``every_candle``: every bar with a full window, labelled by ``action_labels`` (the pivot
  action where the bar is a pivot, else the price move beyond ``labels.move_threshold``).
* ``manual``: only what a person marks. ``Session.manual_sample(action)`` marks the newest
  closed bar t. The sample is the window ending at bar t (what the model saw when it predicted
  bar t + 1), the person's action, and as candle target bar t + 1 -- the real next candle, as
  for every other sample. The trainer has no per-sample candle weight (and the next candle is
  not known when the person asks), so rather than invent a target the sample is queued when
  bar t + 1 closes, one bar later. Asking again before then replaces the action; switching
  away from ``manual`` cancels a request still waiting.
"""

from __future__ import annotations

from pipelines.data.labels import UNKNOWN
from pipelines.live.config import SessionSettings
from pipelines.live.history import CandleHistory

Due = tuple[int, int, str]  # (bars back from the newest, action, reason: pivot/move/manual)


def due_samples(
    mode: str,
    history: CandleHistory,
    settings: SessionSettings,
    manual: tuple[int, int] | None,
    now: int,
) -> tuple[list[Due], tuple[int, int] | None]:
    """The samples whose label became final at the newest bar (time ``now``, ns).

    ``manual`` is the waiting manual request (bar time, action) or None; returns the due
    samples and the request still waiting afterwards.
    """
    s, h = settings, history
    due: list[Due] = []
    if mode in ("pivots_only", "every_candle") and h.has_window(s.window, s.label_lag):
        piv, lab = h.labels_at(s.label_lag, s.pivot_bars, s.move_threshold)
        if piv != UNKNOWN:
            due.append((s.label_lag, piv, "pivot"))
        elif mode == "every_candle" and lab != UNKNOWN:
            due.append((s.label_lag, lab, "move"))
    if manual is not None:
        bar, act = manual
        bars = h.candles()
        prev = bars[-2].time if len(bars) >= 2 else None
        if prev == bar and mode == "manual" and h.has_window(s.window, 1):
            due.append((1, act, "manual"))
        if bar != now:  # the bar after the marked one has come: used, or too late
            manual = None
    return due, manual
