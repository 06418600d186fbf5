"""Annotations: refusals (nothing stored), the JSON round trip, conversion to samples."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pandas as pd
import pytest

from pipelines.data.annotations import (
    Annotation,
    AnnotationStore,
    candle_loader,
    store_path,
    to_samples,
)
from pipelines.data.dataset import symbol_windows
from pipelines.data.labels import BUY, HOLD, SELL
from pipelines.data.sources import parse_symbol
from pipelines.errors import AnnotationError

SYM, TF = "synthetic:SYN0", "1h"


@pytest.fixture
def cfg(make_cfg):
    return make_cfg("data.extra_timeframes=[4h]")


@pytest.fixture
def candles(cfg) -> pd.DataFrame:
    return candle_loader(cfg.data)(parse_symbol(f"{SYM}@{TF}", TF))


@pytest.fixture
def store(cfg) -> AnnotationStore:
    return AnnotationStore(store_path(cfg), loader=candle_loader(cfg.data), tolerance=0.001)


def trade(candles: pd.DataFrame, i: int, j: int, side: str = "long", **kw) -> Annotation:
    """A trade entered at the close of bar i and left at the close of bar j."""
    fields = {
        "symbol": SYM,
        "timeframe": TF,
        "side": side,
        "entry_time": candles.index[i],
        "entry_price": candles["close"].iat[i],
        "exit_time": candles.index[j],
        "exit_price": candles["close"].iat[j],
        "note": "test",
    }
    return Annotation.parse(**{**fields, **kw})


def test_add_stores_the_trade_on_its_candles_and_lists_it(store, candles):
    inside = candles.index[40] + pd.Timedelta(minutes=25)  # a time inside bar 40 marks bar 40
    a = store.add(
        trade(
            candles,
            40,
            48,
            entry_time=inside.isoformat(),
            entry_price=f"{candles['low'].iat[40]:.6f}",
        )
    )
    assert a.entry_time == candles.index[40]
    assert [x.to_dict() for x in store.find()] == [a.to_dict()]
    assert store.find(symbol=SYM, timeframe=TF) == store.find()
    assert store.find(symbol="sample:EURUSD") == [] and store.find(timeframe="4h") == []


@pytest.mark.parametrize(
    "change, message",
    [
        (
            lambda c: {"exit_time": c.index[40], "exit_price": c["close"].iat[40]},
            "exit .* is not after entry",
        ),
        (
            lambda c: {
                "exit_time": c.index[40] + pd.Timedelta(minutes=59),
                "exit_price": c["close"].iat[40],
            },
            "not after entry",
        ),
        (lambda c: {"exit_time": c.index[30], "exit_price": c["close"].iat[30]}, "not after entry"),
        (lambda c: {"entry_price": c["high"].iat[40] * 1.002}, "entry price .* outside"),
        (lambda c: {"exit_price": c["low"].iat[48] * 0.998}, "exit price .* outside"),
        (lambda c: {"symbol": "sample:NOPE"}, "unknown symbol or timeframe"),
        (lambda c: {"symbol": "nosuchexchange:BTC/USDT"}, "unknown symbol or timeframe"),
        (lambda c: {"timeframe": "7x"}, "unknown symbol or timeframe"),
        (lambda c: {"symbol": "sample:EURUSD", "timeframe": "1m"}, "unknown symbol or timeframe"),
        (lambda c: {"entry_time": c.index[0] - pd.Timedelta(hours=3)}, "falls in no 1h candle"),
        (lambda c: {"exit_time": c.index[-1] + pd.Timedelta(hours=1)}, "falls in no 1h candle"),
        (lambda c: {"side": "sideways"}, "use long or short"),
        (lambda c: {"entry_price": -1}, "price > 0"),
        (lambda c: {"exit_time": "not a time"}, "is not a time"),
    ],
)
def test_each_refusal_rule_stores_nothing(store, candles, change, message):
    with pytest.raises(AnnotationError, match=message):
        store.add(trade(candles, 40, 48, **change(candles)))
    assert store.find() == []


def test_a_price_just_outside_the_range_is_within_the_tolerance(store, candles):
    store.add(trade(candles, 40, 48, entry_price=candles["high"].iat[40] * 1.0009))
    assert len(store.find()) == 1


def test_a_time_in_a_gap_has_no_candle(tmp_path, candles):
    holey = candles.drop(candles.index[45])
    store = AnnotationStore(tmp_path / "a.sqlite", loader=lambda spec: holey, tolerance=0.0)
    with pytest.raises(AnnotationError, match="falls in no 1h candle"):
        store.add(trade(candles, 45, 48))
    assert store.find() == []


def test_remove_and_unknown_ids(store, candles):
    a, b = store.add_many([trade(candles, 40, 48), trade(candles, 60, 66, "short")])
    with pytest.raises(AnnotationError, match="no annotation with id"):
        store.remove([a.id, "nope"])
    assert len(store.find()) == 2  # all or nothing
    assert store.remove([a.id]) == 1
    assert [x.id for x in store.find()] == [b.id]


def test_export_import_round_trip(store, cfg, candles, tmp_path):
    store.add_many([trade(candles, 40, 48), trade(candles, 60, 66, "short", note="top")])
    text = store.export_json()
    other = AnnotationStore(tmp_path / "other.sqlite", loader=candle_loader(cfg.data), tolerance=0)
    other.import_json(text)
    assert [a.to_dict() for a in other.find()] == [a.to_dict() for a in store.find()]
    other.import_json(text)  # the same ids with the same content: nothing new
    assert len(other.find()) == 2
    doc = json.loads(text)
    doc["annotations"][0]["note"] = "edited"
    with pytest.raises(AnnotationError, match="already stored with other content"):
        other.import_json(json.dumps(doc))


def test_an_import_with_one_bad_entry_stores_nothing(store, candles):
    good = trade(candles, 40, 48).to_dict()
    bad = {**trade(candles, 60, 66).to_dict(), "id": "bad", "exit_price": 1e9}
    with pytest.raises(AnnotationError, match="exit price"):
        store.import_json(json.dumps({"annotations": [good, bad]}))
    assert store.find() == []
    with pytest.raises(AnnotationError, match="unknown annotation field"):
        store.import_json(json.dumps([{**good, "colour": "red"}]))
    with pytest.raises(AnnotationError, match="not JSON"):
        store.import_json("{")


def test_samples_have_the_trade_labels_and_the_batch_windows(store, cfg, candles):
    long_, short = store.add_many([trade(candles, 40, 45), trade(candles, 100, 103, "short")])
    got = to_samples([long_, short], candle_loader(cfg.data), cfg)
    ds = got.data
    assert got.skipped == []
    assert ds.y_action.tolist() == [BUY, HOLD, HOLD, HOLD, HOLD, SELL, SELL, HOLD, HOLD, BUY]
    bars = [*range(40, 46), *range(100, 104)]
    assert ds.end_time.tolist() == candles.index[bars].as_unit("ns").asi8.tolist()
    assert ds.symbols == ("synthetic:SYN0@1h",) and ds.x.shape[1:] == (16, 9)  # 1h + 4h
    batch = symbol_windows(candles, parse_symbol(f"{SYM}@{TF}", TF), cfg)
    pos = np.searchsorted(batch.end_time, ds.end_time)
    np.testing.assert_array_equal(ds.x, batch.x[pos])
    np.testing.assert_array_equal(ds.y_candle, batch.y_candle[pos])


def test_hold_between_off_trains_entry_and_exit_only(store, cfg, candles):
    a = store.add(trade(candles, 40, 45, "short"))
    cfg = dataclasses.replace(
        cfg, annotations=dataclasses.replace(cfg.annotations, hold_between=False)
    )
    assert to_samples([a], candle_loader(cfg.data), cfg).data.y_action.tolist() == [SELL, BUY]


def test_bars_without_a_full_window_give_no_sample_and_are_reported(store, cfg, candles):
    a = store.add(trade(candles, 3, 20))  # window 16: bars 3..14 have no full window
    got = to_samples([a], candle_loader(cfg.data), cfg)
    assert got.data.y_action.tolist() == [HOLD] * 5 + [SELL]
    assert len(got.skipped) == 12 and "has no full window before it" in got.skipped[0]
    with pytest.raises(AnnotationError, match="no training sample"):
        to_samples([store.add(trade(candles, 1, 5))], candle_loader(cfg.data), cfg)


def test_a_trade_outside_the_loaded_candles_is_skipped_and_named(store, cfg, candles):
    """The data range moved since the trade was marked (data.since, a shorter series): that
    trade is listed in ``skipped`` with why and what to do; the others still train."""
    near, far = store.add_many([trade(candles, 40, 45), trade(candles, 500, 520)])
    shorter = candles.iloc[:400]
    got = to_samples([near, far], lambda spec: shorter, cfg)
    assert got.data.y_action.tolist() == [BUY, HOLD, HOLD, HOLD, HOLD, SELL]  # near's bars
    (why,) = got.skipped
    assert far.id in why and str(far.entry_time) in why and "not in the loaded candles" in why
    assert str(shorter.index[-1]) in why and "annotate remove" in why
    with pytest.raises(AnnotationError, match="no training sample") as err:
        to_samples([far], lambda spec: shorter, cfg)  # nothing left: the error says why
    assert far.id in str(err.value)
