"""A live session's paper trades and a model backtest of the same candles agree when the weights
are the same: the dashboard says so beside a visible-range backtest, and names the weights
versions when they differ (the live signals were made bar by bar while the model trained)."""

import numpy as np
import pytest
from live_support import replay, synthetic
from support import tiny_overrides

from pipelines.backtest.model_driven import backtest_model
from pipelines.backtest.weights import BacktestWeights
from pipelines.config import load_config
from pipelines.data.features import n_features
from pipelines.live import Session, SessionSettings
from pipelines.model.network import CandleTransformer, ModelSpec
from serve.predictor import Predictor


def weights(cfg, seed: int) -> BacktestWeights:
    import torch

    torch.manual_seed(seed)
    spec = ModelSpec.from_config(
        cfg.model, n_features(len(cfg.data.extra_timeframes)), cfg.features.window
    )
    state = {k: v.clone() for k, v in CandleTransformer(spec).state_dict().items()}
    return BacktestWeights(spec, state, "test", f"seed{seed}", seed, cfg.data.extra_timeframes)


def live_trades(cfg, frame, w: BacktestWeights):
    predictor = Predictor(w.spec, "cpu")
    predictor.load(dict(w.state), w.step)
    session = Session("s", "SYN", "1h", "none", SessionSettings.from_config(cfg))
    preds, _ = replay(session, frame, predictor)
    return preds, [(t.entry_time, t.exit_time, t.size) for t in session.trades]


def backtest_trades(cfg, frame, w: BacktestWeights):
    bt = backtest_model(frame, w, cfg, timeframe="1h", symbol="SYN")
    t_ns = frame.index.as_unit("ns").asi8
    tr = bt.result.trades
    return bt, [
        (int(t_ns[a]), int(t_ns[b]), float(s))
        for a, b, s in zip(tr["entry_bar"], tr["exit_bar"], tr["size"], strict=True)
    ]


@pytest.fixture
def cfg(tmp_path):
    # argmax actions (confidence 0): an untrained model's probabilities stay near a third
    return load_config(None, [*tiny_overrides(tmp_path, "agree"), "backtest.confidence=0.0"])


def test_same_weights_same_trades(cfg):
    frame = synthetic(400)
    w = weights(cfg, 1)
    preds, live = live_trades(cfg, frame, w)
    bt, backtest = backtest_trades(cfg, frame, w)
    assert len(live) > 5, live
    # the signals are the same on every bar both predicted: one window, one policy
    t_ns = frame.index.as_unit("ns").asi8
    sig = np.array([preds[t].signal if t in preds else 0 for t in t_ns])
    both = np.isin(t_ns, list(preds))
    assert both.sum() > 300
    traded = np.zeros(len(frame), dtype=int)
    traded[bt.actions == 1], traded[bt.actions == 2] = 1, -1
    np.testing.assert_array_equal(sig[both], traded[both])
    assert [(a, b) for a, b, _ in live] == [(a, b) for a, b, _ in backtest]
    np.testing.assert_allclose([abs(s) for *_, s in live], [abs(s) for *_, s in backtest])


def test_other_weights_other_trades(cfg):
    """What the dashboard's review saw (23 paper trades, 1 in the backtest): other weights."""
    frame = synthetic(400)
    _, live = live_trades(cfg, frame, weights(cfg, 1))
    _, backtest = backtest_trades(cfg, frame, weights(cfg, 2))
    assert live != backtest
