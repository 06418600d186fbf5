"""Paper trades of a live session are the simulator's trades: one definition of a trade."""

import numpy as np
import pandas as pd
import pytest
from live_support import FakePredictor, replay, settings, synthetic

from pipelines.backtest import simulate
from pipelines.backtest.semantics import BacktestSpec
from pipelines.live import PaperBook, Session, iter_candles


def run_book(frame: pd.DataFrame, sig: np.ndarray, spec: BacktestSpec):
    book = PaperBook(spec)
    trades, equity = [], []
    for c, s in zip(iter_candles(frame), sig.tolist(), strict=True):
        trades += book.open_bar(c.time, c.open)
        trades += book.close_bar(c.close, int(s))
        equity.append(book.st.equity)
    return book, trades, np.array(equity)


def assert_same_trades(frame, trades, book, res):
    ref = res.trades
    assert len(trades) == len(ref) > 0
    t_ns = frame.index.as_unit("ns").asi8
    np.testing.assert_array_equal([t.entry_time for t in trades], t_ns[ref["entry_bar"]])
    np.testing.assert_array_equal([t.exit_time for t in trades], t_ns[ref["exit_bar"]])
    np.testing.assert_array_equal([abs(t.size) for t in trades], ref["size"])
    np.testing.assert_array_equal([t.entry_price for t in trades], ref["entry_price"])
    np.testing.assert_array_equal([t.exit_price for t in trades], ref["exit_price"])
    np.testing.assert_allclose([t.pnl for t in trades], ref["pnl"], rtol=0, atol=1e-9)
    np.testing.assert_allclose([t.commission for t in trades], ref["commission"], atol=1e-9)
    opened = book.open_trade()
    if len(res.open_trades):
        assert opened is not None
        assert opened.entry_price == res.open_trades["entry_price"].iat[0]
        assert opened.pnl == pytest.approx(res.open_trades["pnl"].iat[0], abs=1e-9)
    else:
        assert opened is None


@pytest.mark.parametrize(
    "options",
    [
        dict(fill="next_open", direction="long_only", units="fractional", commission=0.001),
        dict(fill="close", direction="long_short", units="fractional", commission=0.002),
        dict(fill="next_open", direction="long_short", units="whole", commission=0.001),
        # whole units on little cash: entries are skipped and retried, as the engine does
        dict(fill="close", direction="long_only", units="whole", commission=0.0, cash=23.5),
    ],
)
def test_paper_book_equals_simulate(options):
    frame = synthetic(400)
    rng = np.random.default_rng(5)
    sig = rng.choice([0, 0, 0, 1, -1], size=len(frame)).astype(np.int8)
    spec = BacktestSpec(**options)
    book, trades, equity = run_book(frame, sig, spec)
    res = simulate(frame, sig, spec)
    assert_same_trades(frame, trades, book, res)
    np.testing.assert_allclose(equity, res.equity.to_numpy(), rtol=0, atol=1e-6)
    assert book.st.skipped_entries == res.stats["skipped_entries"]
    if spec.cash == 23.5:
        assert res.stats["skipped_entries"] > 0  # the retry path really ran


def test_wiped_out_short_stops_like_the_simulator():
    frame = synthetic(120)
    frame.iloc[60:, :4] *= np.linspace(1, 4, 60)[:, None]  # a short goes broke
    frame["high"] = frame[["open", "high", "close"]].max(axis=1)
    frame["low"] = frame[["open", "low", "close"]].min(axis=1)
    sig = np.zeros(len(frame), dtype=np.int8)
    sig[50] = -1
    sig[100] = 1
    spec = BacktestSpec(direction="long_short", units="fractional", commission=0.001)
    book, trades, equity = run_book(frame, sig, spec)
    res = simulate(frame, sig, spec)
    assert book.st.wiped and equity[-1] == 0.0
    assert_same_trades(frame, trades, book, res)


@pytest.mark.parametrize("closed", [False, True], ids=["always-open", "closed-on-weekends"])
def test_session_paper_trades_equal_simulate_over_its_signals(closed):
    frame = synthetic(300)
    if closed:  # a market closure is a jump in time, no bar: the simulator's rows exactly
        frame = synthetic(420)
        frame = frame[frame.index.dayofweek < 5]
    s = settings(spec=BacktestSpec(commission=0.001, units="fractional", direction="long_short"))
    session = Session("p", "SYN", "1h", "none", s)
    preds, _ = replay(session, frame, FakePredictor())
    t_ns = frame.index.as_unit("ns").asi8
    sig = np.array([preds[t].signal if t in preds else 0 for t in t_ns], dtype=np.int8)
    assert (sig == 1).sum() > 5 and (sig == -1).sum() > 5
    res = simulate(frame, sig, s.spec)
    assert_same_trades(frame, list(session.trades), session.book, res)
    summary = session.summary()
    assert summary["trades"] == len(res.trades)
    assert summary["equity"] == pytest.approx(res.equity.iat[-1], abs=1e-6)
    assert summary["win_rate"] == pytest.approx(res.stats["win_rate"])
