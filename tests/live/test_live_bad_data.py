"""Bad feed data is reported and skipped; the session's state stays sound."""

import dataclasses

import numpy as np
import pytest
from live_support import FakePredictor, settings, synthetic

from pipelines.errors import InvalidInputError
from pipelines.live import Session, iter_candles, tick


def test_nan_out_of_order_duplicate_and_broken_candles_are_counted_and_skipped():
    frame = synthetic(120)
    cands = list(iter_candles(frame))
    s = settings()
    clean = Session("ok", "SYN", "1h", "every_candle", s)
    dirty = Session("bad", "SYN", "1h", "every_candle", s)
    fake = FakePredictor()
    got_clean, got_dirty = [], []
    for i, c in enumerate(cands):
        tick([(clean, c)], fake)
        got_clean += [(x.time, x.y_action) for x in clean.take_samples()]
        if i == 50:
            tick([(dirty, dataclasses.replace(c, close=float("nan")))], fake)  # NaN
            tick([(dirty, dataclasses.replace(c, high=c.low * 0.5))], fake)  # high < close
        tick([(dirty, c)], fake)
        if i in (60, 61):
            tick([(dirty, c)], fake)  # duplicate
        if i == 70:
            tick([(dirty, cands[65])], fake)  # out of order
        got_dirty += [(x.time, x.y_action) for x in dirty.take_samples()]
    bad = dirty.summary()["bad_data"]
    assert bad == {"nan": 1, "invalid": 1, "duplicate": 2, "out_of_order": 1}
    assert got_dirty == got_clean  # nothing bad reached training...
    a, b = clean.summary(), dirty.summary()
    for k in ("candles", "predictions", "settled", "direction_acc", "equity", "trades"):
        assert a[k] == b[k], k  # ...or the metrics
    events = [r for r in dirty.take_records() if r[0] == "bad_data"]
    assert [e[2]["kind"] for e in events][:2] == ["nan", "invalid"]
    assert "high-covers-open-close" in events[1][2]["detail"]  # names the broken rule


def test_a_gap_is_reported_not_as_bad_data_and_the_prediction_settles_on_the_next_candle():
    """Bars that never arrive (a feed's hole, or a market closure: the session cannot tell
    them apart) lose nothing: the prediction made before them settles against the candle
    that came next, as backtests score it (the next row) and as the model is trained."""
    frame = synthetic(100)
    cands = list(iter_candles(frame))
    session = Session("g", "SYN", "1h", "every_candle", settings())
    fake = FakePredictor()
    for i, c in enumerate(cands):
        if i in (60, 61, 62):
            continue  # three bars never arrive
        tick([(session, c)], fake)
        session.take_samples()
    m = session.summary()
    assert m["bad_data"] == {} and m["gaps"] == 1
    assert m["candles"] == 97
    assert m["settled"] == m["predictions"] - 1  # the last one waits for its candle
    records = session.take_records()
    assert [r[2] for r in records if r[0] == "gap"] == [{"bars_missing": 3}]
    (after,) = [r for r in records if r[0] == "settlement" and r[1] == cands[63].time]
    assert after[2]["made_at"] == cands[59].time  # bar 59's prediction, settled by bar 63
    assert np.isfinite(session.history.windows(16, (0,))[0]).all()


def test_a_missing_prediction_trades_the_bar_as_hold_and_is_counted():
    frame = synthetic(40)
    session = Session("h", "SYN", "1h", "none", settings())
    for c in iter_candles(frame):
        session.on_candle(c)  # the host never answers
    m = session.summary()
    assert m["missed"] == 40 - 16 and m["predictions"] == 0 and m["trades"] == 0


def test_a_tick_refuses_two_candles_of_one_session():
    cands = list(iter_candles(synthetic(3)))
    session = Session("t", "SYN", "1h", "none", settings())
    with pytest.raises(InvalidInputError, match="one candle per session"):
        tick([(session, cands[0]), (session, cands[1])], FakePredictor())
    assert session.metrics.candles == 0  # refused before anything was taken
