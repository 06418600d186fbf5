"""One tick over many sessions builds all their windows in one call: the same windows,
predictions, samples and journal records as each session stepping alone."""

import dataclasses

import numpy as np
from live_support import FakePredictor, settings, synthetic

from pipelines.live import Session, iter_candles, tick


def test_a_tick_over_many_sessions_equals_each_session_alone():
    modes = ["every_candle", "pivots_only", "none", "every_candle", "none"]
    starts = [0, 5, 12, 20, 40]  # late starters have no full window yet in the first ticks
    cands = [list(iter_candles(synthetic(140, f"S{i}"))) for i in range(len(modes))]
    bad = cands[3][30]
    cands[3][30] = dataclasses.replace(bad, high=bad.low * 0.5)  # high < low: skipped, counted
    s = settings()
    together = [Session(f"t{i}", f"S{i}", "1h", m, s) for i, m in enumerate(modes)]
    alone = [Session(f"t{i}", f"S{i}", "1h", m, s) for i, m in enumerate(modes)]
    batched, single = FakePredictor(), FakePredictor()
    samples = 0
    for k in range(100):
        live = [i for i in range(len(modes)) if k >= starts[i]]
        got = tick([(together[i], cands[i][k - starts[i]]) for i in live], batched)
        for i in live:
            w = alone[i].on_candle(cands[i][k - starts[i]])  # one session, its own window
            want = None
            if w is not None:
                p = single.predict(w.x[None])
                want = alone[i].apply_prediction(p.candle[0], p.probs[0], p.version)
            a = got.get(f"t{i}")
            assert (a is None) == (want is None), (k, i)
            if a is not None and want is not None:
                np.testing.assert_array_equal(a.ghost, want.ghost)
                np.testing.assert_array_equal(a.probs, want.probs)
                assert (a.action, a.signal, a.time) == (want.action, want.signal, want.time)
            sa, sb = together[i].take_samples(), alone[i].take_samples()
            assert [(x.time, x.y_action, x.reason) for x in sa] == [
                (x.time, x.y_action, x.reason) for x in sb
            ]
            for x, y in zip(sa, sb, strict=True):
                np.testing.assert_array_equal(x.x, y.x)
                np.testing.assert_array_equal(x.y_candle, y.y_candle)
            samples += len(sa)
            assert together[i].take_records() == alone[i].take_records()
    assert samples > 20 and sum(together[3].metrics.bad.values()) == 1
    assert together[3].state_dict() == alone[3].state_dict()
    # one forward pass a tick (from the first full window on), not one a session
    assert batched.calls == 100 - (s.window - 1) < single.calls
