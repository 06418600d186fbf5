"""Settlement and session metrics agree with the backtests' model statistics on the same bars."""

import numpy as np
import pytest
from live_support import FakePredictor, replay, settings, synthetic

from pipelines.backtest.inference import Inference, all_windows
from pipelines.backtest.model_driven import model_stats
from pipelines.data.labels import action_labels
from pipelines.live import Session, iter_candles
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
    # its "expired" were predictions a time jump skipped: they settle now, none is left
    assert (m.gaps, m.bad, m.expired) == (2, {"nan": 1}, 0)


def test_a_prediction_left_pending_when_the_session_ends_is_expired_journaled_and_restored(
    tmp_path,
):
    from pipelines.errors import InvalidInputError
    from pipelines.live import Journal

    frame = synthetic(60)
    session = Session("e", "SYN", "1h", "none", settings())
    replay(session, frame)
    running = session.summary()
    assert running["expired"] == 0 and session.pending is not None  # the last one waits
    journal = Journal(tmp_path / "j.sqlite")
    assert session.end() and not session.end()  # counted once
    journal.write_session(session)
    assert session.summary()["expired"] == 1
    assert session.summary()["settled"] == running["settled"] == running["predictions"] - 1
    assert [d["target"] for _, d in journal.events("e", "expired")] == [session.pending["target"]]
    restored, _ = journal.restore("e", settings())
    assert restored.summary()["expired"] == 1 and restored.ended
    assert not restored.end() and restored.summary()["expired"] == 1  # not counted twice
    with pytest.raises(InvalidInputError, match="ended"):
        restored.on_candle(next(iter(iter_candles(synthetic(61).iloc[-1:]))))


def test_a_session_that_ends_with_no_prediction_waiting_has_none_expired():
    session = Session("e", "SYN", "1h", "none", settings())
    replay(session, synthetic(10))  # fewer candles than a window: nothing predicted
    session.end()
    assert session.summary()["expired"] == 0


def test_reopen_undoes_an_end_whose_write_failed():
    session = Session("e", "SYN", "1h", "none", settings())
    frame = synthetic(40)
    replay(session, frame.iloc[:39])
    session.take_records()
    session.end()
    records = session.take_records()  # what a failed write gives back
    session.return_records(records)
    session.reopen()
    assert session.summary()["expired"] == 0 and not session.ended
    assert "expired" not in [k for k, _, _ in session.take_records()]
    settled = session.summary()["settled"]
    replay(session, frame.iloc[39:])  # the pending prediction settles after all
    assert session.summary()["settled"] == settled + 1
