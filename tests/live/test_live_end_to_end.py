"""Sessions on a real (tiny) model: batched prediction, queued training, snapshots, no Ray."""

import dataclasses

import torch
from live_support import synthetic

from actors.model.core import ModelCore
from pipelines.data.sources.synthetic import generate
from pipelines.live import Session, SessionSettings, TrainingQueue, iter_candles, tick
from serve.predictor import Predictor


def test_two_sessions_predict_in_one_pass_and_train_through_the_queue(make_cfg):
    cfg = make_cfg("data.extra_timeframes=[4h]")
    core = ModelCore(cfg)
    settings = SessionSettings.from_config(cfg)
    queue = TrainingQueue(cfg.live.queue_capacity, cfg.train.batch_size)
    predictor = Predictor(core.spec, "cpu")
    a = Session("A", "synthetic:A", "1h", "every_candle", settings)
    b = Session("B", "synthetic:B", "1h", "pivots_only", settings)
    fa = list(iter_candles(generate("A", "1h", cfg.data.synthetic, 90)))
    fb = list(iter_candles(synthetic(90, "B")))
    calls = 0
    for ca, cb in zip(fa, fb, strict=True):
        snap = core.snapshot
        if snap.version != predictor.version:
            predictor.load(snap.state, snap.version, snap.generation)
        n = predictor.version
        preds = tick([(a, ca), (b, cb)], predictor, queue)
        if preds:
            assert {p.version for p in preds.values()} == {n}
            assert all(
                p.ghost.shape == (4,) and abs(p.probs.sum() - 1) < 1e-5 for p in preds.values()
            )
        batch = queue.take()
        if batch is not None:
            answer = core.train_batch(*batch.arrays(), kind="live")
            queue.done(batch.id, answer)
            calls += 1
    ca_, cb_ = queue.counts["A"], queue.counts["B"]
    assert ca_.requested == 90 - 16 - 2 and ca_.done + ca_.pending == ca_.requested
    assert cb_.requested > 0 and cb_.dropped == 0
    assert core.trainer.step == calls == queue.steps_done
    assert all(torch.isfinite(v).all() for v in core.trainer.model.state_dict().values())
    m = a.summary(ca_)
    assert m["weights_version"] == predictor.version > 0 and m["predictions"] == 90 - 15
    assert m["train_done"] > 0 and m["loss_trend"] in ("improving", "flat", "degrading")
    assert dataclasses.asdict(settings.spec)["commission"] == cfg.backtest.commission
