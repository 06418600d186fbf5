"""The simulator on small hand-computed cases, one per semantic option, and on bad input.

The 6 candles used throughout (daily, UTC):

    bar    0   1   2   3   4   5
    open  10  12  14  11   9  10
    close 11  13  12  10  10  12
"""

from __future__ import annotations

import json
import pickle

import numpy as np
import pandas as pd
import pytest

from pipelines.backtest import TRADE_COLUMNS, BacktestResult, BacktestSpec, simulate
from pipelines.errors import BacktestError, CandleValidationError

OPEN = np.array([10, 12, 14, 11, 9, 10.0])
CLOSE = np.array([11, 13, 12, 10, 10, 12.0])
BUY_SELL = [1, 0, -1, 0, 0, 0]  # BUY at bar 0, SELL at bar 2


def six_candles() -> pd.DataFrame:
    idx = pd.date_range("2024-01-01", periods=6, freq="D", tz="UTC", name="time")
    return pd.DataFrame(
        {
            "open": OPEN,
            "high": np.maximum(OPEN, CLOSE) + 1,
            "low": np.minimum(OPEN, CLOSE) - 1,
            "close": CLOSE,
            "volume": 1.0,
        },
        index=idx,
    )


@pytest.fixture
def candles() -> pd.DataFrame:
    return six_candles()


def run(candles: pd.DataFrame, sig, **options) -> BacktestResult:
    options.setdefault("cash", 100.0)
    return simulate(candles, sig, **options)


def only_trade(res: BacktestResult) -> dict:
    assert len(res.trades) == 1
    return res.trades.iloc[0].to_dict()


# --- fills ------------------------------------------------------------------------------------


def test_next_open_fill_buys_at_next_bars_open_and_sells_at_next_open(candles):
    res = run(candles, BUY_SELL)
    t = only_trade(res)
    # BUY seen at bar 0's close -> bar 1 open 12: 8 whole units of 100 cash; SELL at bar 2 -> bar 3 open 11
    assert (t["entry_bar"], t["exit_bar"], t["side"], t["size"]) == (1, 3, "long", 8)
    assert (t["entry_price"], t["exit_price"], t["pnl"]) == (12, 11, -8)
    assert t["return"] == pytest.approx(-8 / 96)
    assert (t["entry_time"], t["exit_time"]) == (candles.index[1], candles.index[3])
    assert res.equity.tolist() == [100, 108, 100, 92, 92, 92]
    assert res.position.tolist() == [0, 8, 8, 0, 0, 0]


def test_close_fill_trades_at_the_signal_bars_own_close(candles):
    res = run(candles, BUY_SELL, fill="close")
    t = only_trade(res)
    # BUY at close 11: 9 units; SELL at bar 2's close 12: +9
    assert (t["entry_bar"], t["exit_bar"], t["size"], t["entry_price"], t["exit_price"]) == (
        0,
        2,
        9,
        11,
        12,
    )
    assert res.equity.tolist() == [100, 118, 109, 109, 109, 109]


def test_signal_on_last_bar_never_fills_at_next_open(candles):
    res = run(candles, [0, 0, 0, 0, 0, 1])
    assert len(res.trades) == 0 and len(res.open_trades) == 0
    assert res.equity.tolist() == [100] * 6


# --- commission -------------------------------------------------------------------------------


def test_commission_is_charged_on_entry_and_exit_and_limits_the_size(candles):
    res = run(candles, BUY_SELL, commission=0.1)
    t = only_trade(res)
    # 12 x 1.1 = 13.2 per unit with its fee -> 7 units; fees 7*12*0.1 = 8.4 in, 7*11*0.1 = 7.7 out
    assert t["size"] == 7
    assert t["commission"] == pytest.approx(16.1)
    assert t["pnl"] == pytest.approx(-7 - 16.1)
    assert t["return"] == pytest.approx(-23.1 / 84)
    np.testing.assert_allclose(res.equity, [100, 91.6 + 7, 91.6, 76.9, 76.9, 76.9])
    assert res.stats["commissions"] == pytest.approx(16.1)


# --- direction --------------------------------------------------------------------------------


def test_long_only_sell_closes_and_short_is_never_opened(candles):
    res = run(candles, [1, 0, -1, 0, 1, 0])
    assert res.trades["side"].tolist() == ["long"]
    assert res.position.min() == 0
    # flat after bar 3 (cash 92); BUY at bar 4 -> 9 units at open 10, marked at close 12
    assert res.equity.tolist() == [100, 108, 100, 92, 92, 110]
    assert res.open_trades.iloc[0][["entry_bar", "size", "entry_price", "pnl"]].tolist() == [
        5,
        9,
        10,
        18,
    ]


def test_long_short_reverses_at_the_same_fill(candles):
    res = run(candles, [1, 0, -1, 0, 1, 0], direction="long_short")
    tr = res.trades
    assert tr["side"].tolist() == ["long", "short"]
    # the long closes at bar 3's open 11 and a short of int(92 / 11) = 8 opens at that same price
    assert tr[
        ["entry_bar", "exit_bar", "size", "entry_price", "exit_price", "pnl"]
    ].values.tolist() == [[1, 3, 8, 12, 11, -8], [3, 5, 8, 11, 10, 8]]
    # back to 100 cash at bar 5's open 10: all-in whole units are int(100 x (1 - eps) // 10) = 9,
    # the one-unit short fall of backtesting.py's "all but an epsilon" default size
    assert res.open_trades.iloc[0][["side", "size", "entry_price"]].tolist() == ["long", 9, 10]
    assert res.equity.tolist() == [100, 108, 100, 100, 100, 118]
    assert res.position.tolist() == [0, 8, 8, -8, -8, 9]


def test_repeated_signal_for_the_side_held_does_nothing(candles):
    once = run(candles, [1, 0, 0, 0, -1, 0], direction="long_short")
    again = run(candles, [1, 1, 1, 0, -1, -1], direction="long_short")
    pd.testing.assert_frame_equal(once.trades, again.trades)
    pd.testing.assert_series_equal(once.equity, again.equity)


# --- units ------------------------------------------------------------------------------------


def test_fractional_units_invest_all_cash(candles):
    res = run(candles, BUY_SELL, units="fractional")
    t = only_trade(res)
    assert t["size"] == pytest.approx(100 / 12)
    assert res.equity.iloc[-1] == pytest.approx(100 * 11 / 12)


def test_fractional_units_with_commission_leave_no_cash_idle(candles):
    res = run(candles, BUY_SELL, units="fractional", commission=0.1)
    t = only_trade(res)
    units = 100 / (12 * 1.1)
    assert t["size"] == pytest.approx(units)
    assert res.equity.iloc[2] == pytest.approx(
        units * 12
    )  # after the entry fee, all of it is in the asset
    assert res.equity.iloc[-1] == pytest.approx(units * 11 * 0.9)


def test_whole_units_skip_an_entry_cash_cannot_afford(candles, caplog):
    with caplog.at_level("WARNING"):
        res = run(candles, BUY_SELL, cash=11.0)  # 12 a unit at bar 1's open
    assert len(res.trades) == 0 and res.equity.tolist() == [11.0] * 6
    assert "could not buy one whole unit" in caplog.text
    assert res.stats["skipped_entries"] == 1


def test_skipped_entry_is_retried_when_the_signal_repeats(candles):
    # BUY at bar 0 (open 12 > cash 11.5: skipped), BUY again at bar 3 -> bar 4 open 9: 1 unit
    res = run(candles, [1, 0, 0, 1, 0, 0], cash=11.5)
    assert res.open_trades.iloc[0][["entry_bar", "size", "entry_price"]].tolist() == [4, 1, 9]


# --- end of data ------------------------------------------------------------------------------


def test_open_trade_is_marked_to_market_and_not_counted(candles):
    res = run(candles, [0, 0, 0, 1, 0, 0])  # 11 units at bar 4's open 9
    assert len(res.trades) == 0 and res.stats["n_trades"] == 0
    o = res.open_trades.iloc[0]
    assert (o["entry_bar"], o["exit_bar"], o["size"], o["exit_price"], o["pnl"]) == (
        4,
        5,
        11,
        12,
        33,
    )
    assert res.equity.iloc[-1] == 133 and res.stats["final_equity"] == 133
    assert res.stats["exposure"] == pytest.approx(2 / 6)


def test_open_trade_closed_at_end_fills_at_last_bars_open_with_next_open_fills(candles):
    res = run(candles, [0, 0, 0, 1, 0, 0], at_end="close", commission=0.01)
    t = only_trade(res)
    units = 11  # int(100 / (9 x 1.01))
    assert (t["exit_bar"], t["exit_price"], t["size"]) == (5, 10, units)
    fees = units * 9 * 0.01 + units * 10 * 0.01
    assert t["pnl"] == pytest.approx(units * 1 - fees)
    assert len(res.open_trades) == 0
    assert res.equity.iloc[-1] == pytest.approx(100 + units - fees)
    assert res.position.iloc[-1] == 0


def test_open_trade_closed_at_end_fills_at_last_close_with_close_fills(candles):
    res = run(candles, [0, 0, 0, 1, 0, 0], at_end="close", fill="close")
    t = only_trade(res)
    assert (t["entry_bar"], t["entry_price"], t["exit_bar"], t["exit_price"], t["size"]) == (
        3,
        10,
        5,
        12,
        9,
    )
    assert res.equity.iloc[-1] == 118


def test_sum_of_trade_pnl_explains_final_equity(candles):
    sig = [1, -1, 1, -1, 1, 0]
    for options in ({}, {"direction": "long_short"}, {"commission": 0.02, "units": "fractional"}):
        res = run(candles, sig, **options)
        total = res.trades["pnl"].sum() + res.open_trades["pnl"].sum()
        assert res.equity.iloc[-1] == pytest.approx(100 + total), options


# --- starting cash and signal forms ------------------------------------------------------------


def test_starting_cash_scales_the_whole_unit_size(candles):
    res = run(candles, BUY_SELL, cash=1000.0)
    assert only_trade(res)["size"] == 83  # int(1000 / 12)
    assert res.equity.iloc[-1] == 1000 - 83
    assert res.stats["total_return"] == pytest.approx(-0.083)


def test_signals_as_strings_series_and_floats_agree(candles):
    ints = run(candles, np.array(BUY_SELL))
    names = {1: "BUY", -1: "SELL", 0: "HOLD"}
    for sig in (
        [names[s] for s in BUY_SELL],
        pd.Series([names[s].lower() for s in BUY_SELL], index=candles.index),
        pd.Series(BUY_SELL, index=candles.index, dtype="int64"),
        np.array(BUY_SELL, dtype=float),
        [1, 0, "SELL", "hold", 0, 0],  # mixed: NumPy turns the ints into "1", "0"
    ):
        res = run(candles, sig)
        pd.testing.assert_frame_equal(res.trades, ints.trades)
        pd.testing.assert_series_equal(res.equity, ints.equity)


def test_spec_object_and_keyword_overrides(candles):
    spec = BacktestSpec(cash=100.0, commission=0.1)
    by_spec = simulate(candles, BUY_SELL, spec)
    by_kw = simulate(candles, BUY_SELL, cash=100.0, commission=0.1)
    pd.testing.assert_frame_equal(by_spec.trades, by_kw.trades)
    overridden = simulate(candles, BUY_SELL, spec, commission=0.0)
    assert overridden.spec == BacktestSpec(cash=100.0) and only_trade(overridden)["size"] == 8
    assert list(by_spec.trades.columns) == list(TRADE_COLUMNS)
    assert by_spec.spec.as_dict()["commission"] == 0.1


def test_ledger_arrays_are_the_trade_table(candles):
    res = run(candles, [1, 0, -1, 0, 1, 0], direction="long_short", commission=0.01)
    led, closed = res.ledger, slice(0, res.ledger.n_closed)
    assert led.n_closed == len(res.trades) == 2 and len(led.size) == 3  # + the open trade
    for arr, col in ((led.pnl, "pnl"), (led.ret, "return"), (np.abs(led.size), "size")):
        np.testing.assert_array_equal(arr[closed], res.trades[col])
    assert led.pnl[-1] == res.open_trades["pnl"].iloc[0]
    assert res.stats["commissions"] == pytest.approx(led.commission.sum())


def test_result_is_read_only_and_travels(candles):
    res = run(candles, BUY_SELL)
    with pytest.raises(TypeError, match="read-only"):
        res.stats["sharpe"] = 1.0  # type: ignore[index]
    with pytest.raises(AttributeError):
        res.trades = None  # type: ignore[misc]
    back = pickle.loads(pickle.dumps(res))  # e.g. from a worker process
    assert pd.Series(back.stats).equals(pd.Series(res.stats)) and back.trades.equals(res.trades)
    assert json.dumps(res.stats, default=str).startswith('{"start": "2024-01-01')


# --- bad input: raised before anything runs, naming the problem and the fix ---------------------


@pytest.mark.parametrize(
    ("sig", "words"),
    [
        ([1, 0, 0, 0, 0], ["got 5 signals for 6 candles", "reindex(candles.index"]),
        ([1, 0, 2, 0, 0, 7], ["2 unknown value(s)", "[2, 7]", "position 2", "1 or 'BUY'"]),
        (["BUY", "HOLD", "BUYY", "SELL", "HOLD", "HOLD"], ["'BUYY'", "position 2", "-1 or 'SELL'"]),
        ([1.0, np.nan, 0, 0, 0, 0], ["unknown value", "position 1"]),
        ([1.0, 0.5, 0, 0, 0, 0], ["0.5"]),
        ([True, False, False, False, False, False], ["booleans", "np.where"]),
        (np.zeros((6, 2)), ["1-D", "(6, 2)"]),
        ("BUY", ["got str"]),
    ],
)
def test_bad_signals_are_refused_with_the_fix(candles, sig, words):
    with pytest.raises(BacktestError) as err:
        simulate(candles, sig)
    for w in words:
        assert w in str(err.value)


def test_signals_on_another_index_are_refused(candles):
    shifted = pd.Series(BUY_SELL, index=candles.index + pd.Timedelta(hours=1))
    with pytest.raises(
        BacktestError, match=r"not the candles' index \(first difference at position 0"
    ):
        simulate(candles, shifted)
    with pytest.raises(BacktestError, match="got 3 signals for 6 candles"):
        simulate(candles, pd.Series([1, 0, -1], index=candles.index[:3]))
    with pytest.raises(BacktestError, match="a DataFrame"):
        simulate(candles, pd.DataFrame({"a": BUY_SELL}, index=candles.index))


@pytest.mark.parametrize(
    ("options", "words"),
    [
        ({"commission": -0.01}, ["commission=-0.01", "0 <= commission < 1"]),
        ({"commission": 1.0}, ["commission=1.0", "0 <= commission < 1"]),
        ({"commission": float("nan")}, ["finite number"]),
        ({"cash": 0}, ["cash=0", "must be > 0"]),
        ({"cash": -5.0}, ["cash=-5.0", "must be > 0"]),
        ({"cash": "100"}, ["cash='100'", "finite number"]),
        ({"fill": "open"}, ["fill='open'", "['next_open', 'close']"]),
        ({"direction": "short"}, ["['long_only', 'long_short']"]),
        ({"units": "lots"}, ["['whole', 'fractional']"]),
        ({"at_end": "drop"}, ["['mark', 'close']"]),
        ({"bars_per_year": 0}, ["bars_per_year=0", "252"]),
        ({"comission": 0.1}, ["unknown backtest option(s) ['comission']", "'commission'"]),
    ],
)
def test_bad_options_are_refused_with_what_is_allowed(candles, options, words):
    with pytest.raises(BacktestError) as err:
        simulate(candles, BUY_SELL, **options)
    for w in words:
        assert w in str(err.value)
    if "comission" not in options:
        with pytest.raises(BacktestError):
            BacktestSpec(**options)
    with pytest.raises(BacktestError, match="spec must be a BacktestSpec"):
        simulate(candles, BUY_SELL, options)  # type: ignore[arg-type]


def test_invalid_candles_are_refused_by_the_schema(candles):
    bad = candles.copy()
    bad.iloc[3, bad.columns.get_loc("high")] = 1.0  # high below open and close
    with pytest.raises(CandleValidationError, match=r"EURUSD: row 3 .*high-covers-open-close"):
        simulate(bad, BUY_SELL, symbol="EURUSD")
    with pytest.raises(CandleValidationError, match="columns"):
        simulate(candles.rename(columns={"close": "Close"}), BUY_SELL)
    with pytest.raises(BacktestError, match="at least 2 candles, got 1"):
        simulate(candles.iloc[:1], [1])
