"""Live windows are the training windows: built candle by candle, equal to the batch ones."""

import numpy as np
import pytest
from live_support import settings, synthetic

from pipelines.data.features import candle_targets, higher_timeframes, make_windows
from pipelines.live import CandleHistory, Session, iter_candles
from pipelines.live.history import history_capacity


@pytest.mark.parametrize("gaps", [False, True])
def test_live_windows_equal_batch_windows_with_extra_timeframes(gaps):
    frame = synthetic(260)
    if gaps:  # missing bars, some across 4h and 1d boundaries: live and batch see the same rows
        frame = frame.drop(frame.index[[30, 31, 95, 96, 97, 98, 99, 143, 200, 201, 202]])
    extra = ("4h", "1d")
    window = 16
    cap = history_capacity(window, 3, "1h", extra)
    assert cap < 100  # bounded: far fewer bars than the series
    hist = CandleHistory(cap, "1h", extra)
    live_x, live_sigma = [], []
    for c in iter_candles(frame):
        hist.append(c)
        if hist.has_window(window):
            x, sigma, _ = hist.windows(window, (0,))
            live_x.append(x[0])
            live_sigma.append(sigma[0])
    assert len(hist) == cap
    ends = np.arange(window - 1, len(frame))
    bx, bsigma = make_windows(frame, window, higher_timeframes(frame, "1h", extra), ends)
    np.testing.assert_array_equal(np.stack(live_x), bx)
    np.testing.assert_array_equal(np.array(live_sigma), bsigma)
    # the higher-timeframe features are really there (not all zero) and differ per bar
    assert np.abs(bx[-50:, :, 5:]).max() > 0.1


def test_training_samples_equal_batch_windows_and_targets():
    frame = synthetic(200)
    s = settings(extra_timeframes=("4h",))
    session = Session("a", "SYN", "1h", "every_candle", s)
    samples = []
    for c in iter_candles(frame):
        session.on_candle(c)
        samples.extend(session.take_samples())
    bars = np.array(
        [
            frame.index.get_loc(frame.index[frame.index.as_unit("ns").asi8 == x.time][0])
            for x in samples
        ]
    )
    bx, bsigma = make_windows(
        frame, s.window, higher_timeframes(frame, "1h", s.extra_timeframes), bars
    )
    by = candle_targets(frame, s.window, bars, bsigma)
    np.testing.assert_array_equal(np.stack([x.x for x in samples]), bx)
    np.testing.assert_array_equal(np.stack([x.y_candle for x in samples]), by)


def test_no_look_ahead_a_window_does_not_change_when_later_bars_change():
    frame = synthetic(120)
    hist_a, hist_b = CandleHistory(60, "1h", ("4h",)), CandleHistory(60, "1h", ("4h",))
    other = frame.copy()
    other.iloc[100:, :4] *= 2.0
    for c in list(iter_candles(frame))[:100]:
        hist_a.append(c)
    for c in list(iter_candles(other))[:100]:
        hist_b.append(c)
    np.testing.assert_array_equal(hist_a.windows(16, (0,))[0], hist_b.windows(16, (0,))[0])


def test_a_primed_session_predicts_from_its_first_live_candle_with_the_batch_window():
    frame = synthetic(120)
    cands = list(iter_candles(frame))
    session = Session("p", "SYN", "1h", "every_candle", settings())
    assert session.prime(cands[:100]) == 100
    win = session.on_candle(cands[100])
    assert win is not None
    bx, _ = make_windows(frame, 16, higher_timeframes(frame, "1h", ("4h",)), np.array([100]))
    np.testing.assert_array_equal(win.x, bx[0])
    assert len(session.take_samples()) == 1  # bar 97's label became final at bar 100
    assert session.metrics.candles == 1
