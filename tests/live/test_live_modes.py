"""Each live mode trains on exactly what it says, when the label is final (walk-forward's rule)."""

import numpy as np
import pytest
from live_support import FakePredictor, replay, settings, synthetic

from pipelines.backtest.walk_forward import NEVER, label_known_at
from pipelines.data.labels import BUY, SELL, action_labels, pivots
from pipelines.errors import ModeError
from pipelines.live import Session, TrainingQueue, iter_candles, tick


def bar_of(frame):
    pos = {t: i for i, t in enumerate(frame.index.as_unit("ns").asi8.tolist())}
    return lambda t: pos[t]


def test_none_never_trains_over_500_candles():
    frame = synthetic(500)
    session = Session("n", "SYN", "1h", "none", settings())
    queue = TrainingQueue(1000, 16)
    preds, samples = replay(session, frame, queue=queue)
    assert samples == [] and len(queue) == 0 and queue.counts == {}
    assert len(preds) == 500 - 15 and session.summary()["train_requested"] == 0


def test_pivots_only_trains_each_confirmed_pivot_once_when_confirmed():
    frame = synthetic(250)
    s = settings()
    session = Session("p", "SYN", "1h", "pivots_only", s)
    _, samples = replay(session, frame)
    bar = bar_of(frame)
    table = pivots(frame, s.pivot_bars)
    table = table[table["bar"] >= s.window - 1]  # a sample needs a full window
    table = table.drop_duplicates("bar", keep=False)  # a bar that is both H and L is no pivot
    got = [(bar(x.time), x.y_action, bar(x.due)) for x in samples]
    want = [
        (b, BUY if k == "L" else SELL, b + s.pivot_bars)
        for b, k in zip(table["bar"], table["kind"], strict=True)
    ]
    assert len(want) > 20
    assert got == want
    assert {x.reason for x in samples} == {"pivot"}


def test_every_candle_trains_one_sample_per_candle_with_its_label():
    frame = synthetic(300)
    s = settings()
    session = Session("e", "SYN", "1h", "every_candle", s)
    _, samples = replay(session, frame)
    bar = bar_of(frame)
    labels = action_labels(frame, s.pivot_bars, s.move_threshold)
    bars = np.array([bar(x.time) for x in samples])
    lag = max(1, s.pivot_bars)
    np.testing.assert_array_equal(bars, np.arange(s.window - 1, len(frame) - lag))
    np.testing.assert_array_equal([x.y_action for x in samples], labels[bars])
    np.testing.assert_array_equal([bar(x.due) for x in samples], bars + lag)
    assert session.metrics.settled == len(frame) - s.window  # one sample per settled candle...
    assert len(samples) == session.metrics.settled - (lag - 1)  # ...once its label is final


@pytest.mark.parametrize("mode", ["every_candle", "pivots_only"])
def test_replayed_session_trains_what_walk_forward_trains(mode):
    frame = synthetic(250)
    s = settings()
    session = Session("w", "SYN", "1h", mode, s)
    _, samples = replay(session, frame)
    bar = bar_of(frame)
    labels = action_labels(frame, s.pivot_bars, s.move_threshold)
    known = label_known_at(frame, labels, mode, s.pivot_bars)
    ends = np.arange(s.window - 1, len(frame) - 1)  # walk-forward's candidates
    ends = ends[(known[ends] != NEVER) & (known[ends] <= len(frame) - 1)]
    ends = ends[np.argsort(known[ends], kind="stable")]
    assert [bar(x.time) for x in samples] == ends.tolist()
    assert [bar(x.due) for x in samples] == known[ends].tolist()
    assert [x.y_action for x in samples] == labels[ends].tolist()


def test_manual_trains_only_when_asked_on_the_marked_bar_with_the_next_candle():
    frame = synthetic(120)
    session = Session("m", "SYN", "1h", "manual", settings())
    cands = list(iter_candles(frame))
    fake = FakePredictor()
    samples = []
    for i, c in enumerate(cands):
        tick([(session, c)], fake)
        if i in (40, 41, 70):
            session.manual_sample({40: "BUY", 41: "SELL", 70: "hold"}[i])
        if i == 70:
            session.manual_sample("SELL")  # asked again before it trained: replaces the action
        samples.extend(session.take_samples())
    bar = bar_of(frame)
    assert [(bar(x.time), x.y_action, bar(x.due), x.reason) for x in samples] == [
        (40, BUY, 41, "manual"),
        (41, SELL, 42, "manual"),
        (70, SELL, 71, "manual"),
    ]


@pytest.mark.parametrize("mode", ["none", "pivots_only", "every_candle"])
def test_manual_training_is_refused_in_other_modes_with_how_to_switch(mode):
    frame = synthetic(40)
    session = Session("r", "SYN", "1h", mode, settings())
    replay(session, frame)
    with pytest.raises(ModeError, match=rf"'{mode}' mode.*set_mode\('manual'\)"):
        session.manual_sample("BUY")
    session.set_mode("manual")
    assert session.manual_sample("BUY")["action"] == "BUY"
    assert [r[2] for r in session.take_records() if r[0] == "mode"] == [
        {"from": mode, "to": "manual"}
    ]


def test_mode_switch_takes_effect_without_restart():
    frame = synthetic(200)
    session = Session("s", "SYN", "1h", "none", settings())
    cands = list(iter_candles(frame))
    fake = FakePredictor()
    per_bar = []
    for i, c in enumerate(cands):
        if i == 100:
            session.set_mode("every_candle")
        tick([(session, c)], fake)
        per_bar.append(len(session.take_samples()))
    assert sum(per_bar[:100]) == 0 and all(n == 1 for n in per_bar[100:])
    with pytest.raises(ModeError, match="not known"):
        session.set_mode("sometimes")
