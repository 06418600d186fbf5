"""Model-driven backtests of one symbol, without Ray: look-ahead, batching, policy, walk-forward,
model statistics, config checks and the portfolio combination."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
import torch

from actors import spec_from_config
from pipelines.backtest.inference import (
    Inference,
    all_windows,
    bar_actions,
    confidence_actions,
    infer,
    infer_streamed,
    trade_signals,
)
from pipelines.backtest.model_driven import backtest_model, model_stats
from pipelines.backtest.portfolio import combine, combine_equity
from pipelines.backtest.weights import BacktestWeights
from pipelines.data.labels import BUY, HOLD, SELL, UNKNOWN, action_labels, pivot_flags
from pipelines.data.sources import load_candles, parse_symbol
from pipelines.errors import ConfigError
from pipelines.model.trainer import Trainer
from serve.predictor import Predictor


def random_weights(cfg, seed: int = 3) -> BacktestWeights:
    spec = spec_from_config(cfg)
    trainer = Trainer(spec, cfg.train, torch.device("cpu"), seed=seed)
    return BacktestWeights(
        spec, trainer.weights_cpu(), "test", "random", 0, cfg.data.extra_timeframes
    )


def with_backtest(cfg, **changes):
    return dataclasses.replace(cfg, backtest=dataclasses.replace(cfg.backtest, **changes))


def candles_of(cfg, symbol: str = "synthetic:SYN0") -> tuple[pd.DataFrame, str]:
    spec = parse_symbol(symbol, cfg.data.timeframe)
    return load_candles(spec, cfg.data), spec.timeframe


def altered_after(candles: pd.DataFrame, k: int) -> pd.DataFrame:
    """Bars after k replaced by another valid path, with a wide bar at k+1 that decides pivots."""
    out = candles.copy()
    rng = np.random.default_rng(k)
    n = len(out) - k - 1
    factor = np.exp(np.cumsum(rng.normal(0, 0.02, n)))
    for col in ("open", "high", "low", "close"):
        out.iloc[k + 1 :, out.columns.get_loc(col)] *= factor
    out.iloc[k + 1, out.columns.get_loc("high")] *= 1.3  # no bar within pivot_bars before k+1
    out.iloc[k + 1, out.columns.get_loc("low")] *= 0.75  # can be a confirmed pivot any more
    out.iloc[k + 1 :, out.columns.get_loc("volume")] *= 3.0
    return out


@pytest.mark.parametrize("mode", ["none", "every_candle", "pivots_only"])
def test_signals_for_bar_i_use_only_bars_up_to_i(make_cfg, mode):
    cfg = with_backtest(
        make_cfg("model.device=cpu", "labels.pivot_bars=3"),
        walk_forward=mode,
        retrain_every=40,
        confidence=0.0,
    )
    assert cfg.data.extra_timeframes == ("4h",)  # higher-timeframe features are covered too
    candles, tf = candles_of(cfg)
    weights = random_weights(cfg)
    a = backtest_model(candles, weights, cfg, timeframe=tf)
    # k at the start of a walk-forward chunk or one bar in, just after a pivot: a label leaked
    # from bars after k changes the training before the chunk, and so the predictions at bars <= k
    is_high, is_low = pivot_flags(candles["high"].to_numpy(), candles["low"].to_numpy(), 3)
    starts = a.inference.ends[::40][2:]
    ks = [k for b in starts for k in (b, b + 1) if (is_high | is_low)[b - 3 : b].any()][:8]
    assert len(ks) >= 6
    for k in ks:
        b = backtest_model(altered_after(candles, k), weights, cfg, timeframe=tf)
        upto = a.inference.ends <= k
        np.testing.assert_allclose(
            a.inference.probs[upto], b.inference.probs[upto], rtol=0, atol=1e-6
        )
        np.testing.assert_allclose(
            a.inference.candle[upto], b.inference.candle[upto], rtol=0, atol=1e-6
        )
        np.testing.assert_array_equal(a.actions[: k + 1], b.actions[: k + 1])
        np.testing.assert_allclose(
            a.result.equity.to_numpy()[: k + 1], b.result.equity.to_numpy()[: k + 1]
        )
        # the change after k is visible, so the comparison above could fail
        assert not np.allclose(a.inference.probs[~upto], b.inference.probs[~upto], atol=1e-3)
    if mode != "none":
        assert a.training["steps"] > 0 and len(a.rounds) > 10


def test_batched_predictions_equal_one_window_at_a_time(make_cfg):
    cfg = make_cfg("model.device=cpu")
    candles, tf = candles_of(cfg)
    weights = random_weights(cfg)
    w = all_windows(candles, tf, cfg.data.extra_timeframes, cfg.features.window)
    predictor = Predictor(weights.spec, "cpu")
    predictor.load(dict(weights.state), 0)
    batched = predictor.predict(w.x)
    for m in range(0, len(w), 7):
        one = predictor.predict(w.x[m : m + 1])
        np.testing.assert_allclose(one.probs[0], batched.probs[m], rtol=0, atol=1e-5)
        np.testing.assert_allclose(one.candle[0], batched.candle[m], rtol=0, atol=1e-5)


@pytest.mark.parametrize(("batch", "chunk"), [(16, 40), (256, 512)])
def test_streamed_windows_predict_exactly_what_all_windows_at_once_do(make_cfg, batch, chunk):
    # the backtest builds windows a few batches at a time (cache-sized); the numbers it trades
    # on must be the all-at-once path's, bit for bit, whatever the chunk and batch sizes
    cfg = make_cfg("model.device=cpu")
    candles, tf = candles_of(cfg)
    weights = random_weights(cfg)
    predictor = Predictor(weights.spec, "cpu")
    predictor.load(dict(weights.state), 0)
    ex, t = cfg.data.extra_timeframes, cfg.features.window
    assert ex and (len(candles) - t + 1) % chunk  # higher timeframes and a last partial chunk
    whole = infer(predictor, all_windows(candles, tf, ex, t), batch_size=batch)
    streamed = infer_streamed(predictor, candles, tf, ex, t, batch_size=batch, chunk=chunk)
    for f in ("ends", "candle", "probs", "sigma"):
        np.testing.assert_array_equal(getattr(streamed, f), getattr(whole, f), err_msg=f)


def test_confidence_policy_on_hand_built_probabilities():
    probs = np.array(
        [
            [0.2, 0.5, 0.3],  # BUY at 0.5
            [0.1, 0.3, 0.6],  # SELL at 0.6
            [0.34, 0.33, 0.33],  # HOLD is the most likely
            [0.2, 0.4, 0.4],  # tie BUY/SELL at 0.4: BUY (lower index)
            [0.3, 0.49, 0.21],
        ]
    )  # BUY at 0.49
    np.testing.assert_array_equal(confidence_actions(probs, 0.5), [BUY, SELL, HOLD, HOLD, HOLD])
    np.testing.assert_array_equal(confidence_actions(probs, 0.4), [BUY, SELL, HOLD, BUY, BUY])
    np.testing.assert_array_equal(confidence_actions(probs, 0.0), [BUY, SELL, HOLD, BUY, BUY])
    np.testing.assert_array_equal(confidence_actions(probs, 1.0), [HOLD] * 5)
    acts = bar_actions(8, np.array([3, 4, 5, 6, 7]), confidence_actions(probs, 0.5))
    np.testing.assert_array_equal(acts, [HOLD, HOLD, HOLD, BUY, SELL, HOLD, HOLD, HOLD])
    np.testing.assert_array_equal(trade_signals(acts), [0, 0, 0, 1, -1, 0, 0, 0])


def test_bars_before_the_first_full_window_hold(make_cfg):
    cfg = with_backtest(make_cfg("model.device=cpu"), confidence=0.0)
    candles, tf = candles_of(cfg)
    res = backtest_model(candles, random_weights(cfg), cfg, timeframe=tf)
    t = cfg.features.window
    assert (res.actions[: t - 1] == HOLD).all()
    assert res.inference.ends[0] == t - 1 and len(res.inference.ends) == len(candles) - t + 1
    assert (res.actions[t - 1 :] != HOLD).any()
    assert res.result.stats["bars"] == len(candles)


def test_model_stats_by_hand():
    close = np.array([100.0, 101.0, 100.0, 102.0, 103.0])
    ends = np.array([1, 2, 3, 4])
    actual = np.log(close[2:] / close[1:-1])  # next-close changes of bars 1, 2, 3
    sigma = np.array([0.01, 0.02, 0.01, 0.01])
    pred = np.zeros((4, 5), dtype=np.float32)
    pred[:3, 3] = actual / sigma[:3]  # exact for bars 1, 2, 3 ...
    pred[2, 3] = -pred[2, 3]  # ... except bar 3, whose direction is wrong
    probs = np.array([[0.1, 0.8, 0.1], [0.1, 0.7, 0.2], [0.6, 0.2, 0.2], [0.2, 0.2, 0.6]])
    labels = np.array([UNKNOWN, BUY, SELL, HOLD, UNKNOWN])
    s = model_stats(close, Inference(ends, pred, probs, sigma), labels)
    assert s["windows"] == 4 and s["labelled"] == 3
    assert s["confusion"] == [[1, 0, 0], [0, 1, 0], [0, 1, 0]]  # rows: label, columns: predicted
    assert s["action_acc"] == pytest.approx(2 / 3)
    assert s["direction_acc"] == pytest.approx(2 / 3)
    assert s["close_err_vol"] == pytest.approx(2 * abs(actual[2] / sigma[2]) / 3, rel=1e-6)
    wrong_close = close[3] * np.exp(-actual[2])
    assert s["close_err_pct"] == pytest.approx(100 * abs(wrong_close / close[4] - 1) / 3, rel=1e-5)


@pytest.mark.parametrize("mode", ["every_candle", "pivots_only"])
def test_walk_forward_trains_only_on_labels_already_known(make_cfg, mode):
    cfg = with_backtest(make_cfg("model.device=cpu"), walk_forward=mode, retrain_every=50)
    candles, tf = candles_of(cfg)
    weights = random_weights(cfg)
    before = {k: v.clone() for k, v in weights.state.items()}
    res = backtest_model(candles, weights, cfg, timeframe=tf)
    n, t, piv = len(candles), cfg.features.window, cfg.labels.pivot_bars
    chunk_starts = res.inference.ends[::50]
    assert res.rounds and res.training["steps"] == sum(r.steps for r in res.rounds) > 0
    is_high, is_low = pivot_flags(candles["high"].to_numpy(), candles["low"].to_numpy(), piv)
    trained = np.concatenate([r.bars for r in res.rounds])
    assert len(np.unique(trained)) == len(trained)  # each sample once per pass
    lag = piv if mode == "pivots_only" else max(1, piv)
    for r in res.rounds:
        assert r.at_bar in chunk_starts
        assert (r.bars + lag <= r.at_bar).all(), f"trained on a label not known by bar {r.at_bar}"
        assert (r.bars >= t - 1).all() and (r.bars < n - 1).all()
        if mode == "pivots_only":
            assert (is_high[r.bars] ^ is_low[r.bars]).all()
    # and every label known by the last round was used
    last = res.rounds[-1].at_bar
    labels = action_labels(candles, piv, cfg.labels.move_threshold)
    bars = np.arange(t - 1, n - 1)
    if mode == "pivots_only":
        bars = bars[is_high[bars] ^ is_low[bars]]
    expected = bars[(bars + lag <= last) & (labels[bars] != UNKNOWN)]
    np.testing.assert_array_equal(np.sort(trained), expected)
    # the first chunk is predicted by the weights as given; later ones by the trained copy
    plain = backtest_model(candles, weights, with_backtest(cfg, walk_forward="none"), timeframe=tf)
    first = res.inference.ends < res.rounds[0].at_bar
    np.testing.assert_allclose(res.inference.probs[first], plain.inference.probs[first], atol=1e-6)
    assert not np.allclose(res.inference.probs[~first], plain.inference.probs[~first], atol=1e-4)
    # the weights passed in are untouched: the training happened on a private copy
    for k, v in weights.state.items():
        assert torch.equal(v, before[k]), k


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ("backtest.walk_forward=sometimes", "['none', 'pivots_only', 'every_candle']"),
        (
            "backtest.fill=tomorrow",
            "backtest.fill='tomorrow' is not allowed; choose one of ['next_open', 'close']",
        ),
        ("backtest.commission=1.5", "backtest.commission"),
        ("backtest.confidence=2", "backtest.confidence"),
        ("backtest.task_num_cpus=0", "backtest.task_num_cpus"),
        ("backtest.since='March'", "backtest.since"),
    ],
)
def test_bad_backtest_config_is_a_config_error(make_cfg, override, needle):
    with pytest.raises(ConfigError) as exc:
        make_cfg(override)
    assert needle in str(exc.value)


def test_portfolio_is_the_even_split_by_hand():
    t = pd.date_range("2024-01-01", periods=4, freq="1h", tz="UTC")
    a = pd.Series([10_000.0, 11_000.0, 9_900.0], index=t[:3])  # ends at t2
    b = pd.Series([20_000.0, 24_000.0], index=t[[1, 3]])  # starts at t1, own cash 20k, no bar at t2
    tf = {"A": "1h", "B": "1h"}
    got = combine_equity({"A": a, "B": b}, {"A": 10_000.0, "B": 20_000.0}, 1_000.0, tf)
    # 500 in each: A 500 x (1, 1.1, 0.99, 0.99 carried); B 500 x (1 before start, 1, 1 carried, 1.2)
    expected = [1_000.0, 550.0 + 500.0, 495.0 + 500.0, 495.0 + 600.0]
    np.testing.assert_allclose(got.to_numpy(), expected)
    assert list(got.index) == list(t + pd.Timedelta("1h"))  # stamped at each bar's close
    p = combine({"A": a, "B": b}, {"A": 10_000.0, "B": 20_000.0}, 1_000.0, 8766, timeframes=tf)
    assert p.shares == {"A": 0.5, "B": 0.5}
    assert p.stats["total_return"] == pytest.approx(0.095)
    assert p.stats["max_drawdown"] == pytest.approx(1 - 995.0 / 1050.0)
    r = np.diff(expected) / np.array(expected[:-1])
    assert p.stats["sharpe"] == pytest.approx(r.mean() / r.std(ddof=1) * np.sqrt(8766))
