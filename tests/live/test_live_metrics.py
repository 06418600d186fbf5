"""Settlement and session metrics agree with the backtests' model statistics on the same bars."""

import numpy as np
import pytest
from live_support import FakePredictor, replay, settings, synthetic

from pipelines.backtest.inference import Inference, all_windows
from pipelines.backtest.model_driven import model_stats
from pipelines.data.labels import action_labels
from pipelines.live import Session
from pipelines.live.metrics import SessionMetrics, settle


def test_settle_gives_errors_per_field_in_percent_and_volatility_units():
    anchor, sigma = 100.0, 0.01
    actual = np.array([100.0, 102.0, 99.0, 101.0])
    ghost = actual * 1.01
    pred = np.r_[np.log(ghost / anchor) / sigma, 0.0]
    s = settle(pred, ghost, anchor, sigma, actual)
    np.testing.assert_allclose(s.err_pct, [1.0] * 4)
    np.testing.assert_allclose(s.err_vol, [np.log(1.01) / sigma] * 4)
    assert s.hit is True
    flat = settle(pred, ghost, anchor, sigma, np.array([100.0, 100.0, 100.0, 100.0]))
    assert flat.hit is None  # a flat next close has no direction (pipelines.model.direction)
    m = SessionMetrics()
    m.add(s)
    m.add(flat)
    out = m.summary()
    assert out["settled"] == 2 and out["direction_acc"] == 1.0 and out["rolling_n"] == 1


@pytest.mark.parametrize("closed", [False, True], ids=["always-open", "closed-on-weekends"])
def test_session_metrics_equal_backtest_model_stats_over_the_same_predictions(closed):
    """The backtest scores each prediction against the next row; so does a session, across
    a market closure too (no prediction left unsettled, no closure counted as bad data)."""
    frame = synthetic(200)
    if closed:  # a market shut on Saturdays and Sundays, as stocks and FX are
        frame = synthetic(400)
        frame = frame[frame.index.dayofweek < 5]
    s = settings()
    fake = FakePredictor()
    session = Session("m", "SYN", "1h", "none", s)
    replay(session, frame, fake)
    w = all_windows(frame, "1h", s.extra_timeframes, s.window)
    p = fake.predict(w.x)
    inf = Inference(w.ends, p.candle, p.probs, w.sigma)
    labels = action_labels(frame, s.pivot_bars, s.move_threshold)
    ref = model_stats(frame["close"].to_numpy(), inf, labels)
    got = session.summary()
    assert got["settled"] == got["predictions"] - 1 == len(w.ends) - 1  # the last one waits
    assert got["bad_data"] == {}
    assert got["direction_acc"] == pytest.approx(ref["direction_acc"], abs=1e-12)
    assert got["mae_pct_close"] == pytest.approx(ref["close_err_pct"], rel=1e-5)
    assert got["mae_vol_close"] == pytest.approx(ref["close_err_vol"], rel=1e-5)
    recent = session.metrics.rolling
    assert len(recent) == s.rolling_window and got["direction_acc_rolling"] == np.mean(recent)


def test_a_state_journaled_before_gaps_were_not_bad_data_restores():
    old = {**SessionMetrics().to_json(), "expired": 3, "bad": {"gap": 2, "nan": 1}}
    del old["gaps"]
    m = SessionMetrics.from_json(old)
    assert (m.gaps, m.bad) == (2, {"nan": 1}) and "expired" not in m.summary()
