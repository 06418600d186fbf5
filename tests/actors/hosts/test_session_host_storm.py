"""Session hosts under load: a storm of every kind of training at once, and inference that
does not wait for batch training."""

from __future__ import annotations

import random
import threading
import time

import numpy as np
import ray
import torch
from host_support import call, finished, hosts_for, kill, wait_until

from actors import assign_host, spec_from_config
from pipelines.data.annotations import Annotation, AnnotationStore, candle_loader, store_path
from pipelines.data.sources import parse_symbol
from pipelines.jobs.annotations import annotation_split
from pipelines.jobs.training import prepare, train_split
from serve.predictor import Predictor

SPEED = 10.0  # candles per second of every replayed session
# the storm lasts until every live session has taken STORM_BARS candles (counted in candles,
# not seconds: a slow machine makes it longer, never different); each replay has more
BARS = 330
STORM_BARS = 250
MANUAL_SESSIONS, MANUAL_EACH = 5, 10  # 50 manual trainings, one thread per session
MANUAL_GAP_BARS = (3, 12)  # bars between two manual trainings of a session: 10 x 12 < BARS


def _annotate(cfg, n: int = 6) -> None:
    """``n`` marked trades on SYN0, alternately long and short, ten bars each."""
    load = candle_loader(cfg.data)
    candles = load(parse_symbol("synthetic:SYN0@1h", "1h"))
    close = candles["close"]
    items = []
    for k in range(n):
        i, j = 40 + 50 * k, 50 + 50 * k
        items.append(
            Annotation.parse(
                symbol="synthetic:SYN0",
                timeframe="1h",
                side="long" if k % 2 == 0 else "short",
                entry_time=candles.index[i],
                entry_price=close.iat[i],
                exit_time=candles.index[j],
                exit_price=close.iat[j],
                note="storm",
            )
        )
    store = AnnotationStore(store_path(cfg), loader=load, tolerance=cfg.annotations.price_tolerance)
    store.add_many(items)


class Storm:
    """Background loads, each on its own thread, until ``end`` is set; errors are kept."""

    def __init__(self) -> None:
        self.end = threading.Event()
        self.errors: list[BaseException] = []
        self.threads: list[threading.Thread] = []

    def run(self, fn, *args) -> None:
        def body() -> None:
            try:
                fn(*args)
            except BaseException as exc:  # reported by the test, not lost in a thread
                self.errors.append(exc)

        t = threading.Thread(target=body, daemon=True)
        t.start()
        self.threads.append(t)

    def over(self) -> bool:
        return self.end.is_set()

    def join(self, timeout_s: float) -> None:
        for t in self.threads:
            t.join(timeout_s)
        assert not any(t.is_alive() for t in self.threads), "a storm thread did not finish"


def test_storm_of_batch_live_and_manual_training_with_predictions(ray_cluster, make_cfg):
    cfg = make_cfg(
        "live.hosts=2",
        "live.queue_capacity=32",  # small: samples are dropped while the batch run holds the actor
        "data.synthetic.length=500",
    )
    _annotate(cfg)
    ann = annotation_split(cfg)
    client, hosts = hosts_for(cfg)
    v0 = client.call("weights_version")[1]
    loads = [0] * len(hosts)

    def start(symbol: str, mode: str) -> tuple[object, str]:
        i = assign_host(symbol, loads)
        loads[i] += 1
        st = call(hosts[i].start_session.remote(symbol, "1h", mode, "replay", SPEED, -BARS))
        return hosts[i], st["id"]

    storm = Storm()
    batch_steps: list[int] = []

    def batch_training() -> None:  # annotation epochs through the actor, for the whole storm
        while not storm.over() or len(batch_steps) < 2:
            res = train_split(client, ann.split, cfg, epochs=2, kind="annotations")
            batch_steps.append(sum(r.steps for r in res))

    storm.run(batch_training)
    sessions = [start(f"synthetic:SYN{k}", "every_candle") for k in range(3)]
    sessions += [start("synthetic:SYN3", "none")]
    manual = [start(f"synthetic:SYN{4 + k}", "manual") for k in range(MANUAL_SESSIONS)]
    asked: dict[str, list[int]] = {sid: [] for _, sid in manual}

    def manual_trainings(host, sid: str, seed: int) -> None:
        rng = random.Random(seed)
        for _ in range(MANUAL_EACH):
            # a few bars apart (one request per bar: a second one before the next bar closes
            # would replace the first); bars, not seconds, so the replay always has them
            seen = call(host.status.remote(sid))["metrics"]["candles"]
            gap = rng.randint(*MANUAL_GAP_BARS)
            wait_until(
                lambda seen=seen, gap=gap: (
                    call(host.status.remote(sid))["metrics"]["candles"] >= seen + gap
                ),
                timeout_s=120,
                every_s=0.05,
                what=f"{sid} to take {gap} new bars",
            )
            asked[sid].append(
                call(host.manual_train.remote(sid, rng.choice(["BUY", "SELL"])))["bar"]
            )

    for k, (h, sid) in enumerate(manual):
        storm.run(manual_trainings, h, sid, k)

    predicted: list[int] = []

    def predictions() -> None:  # a predictor that follows the actor's published weights
        p = Predictor(spec_from_config(cfg), "cpu")
        rng = np.random.default_rng(0)
        x = rng.normal(size=(8, p.spec.window, p.spec.n_features)).astype(np.float32)
        # until the storm ends and the weights it follows have moved (they move as any of
        # the storm's trainings answers)
        while not storm.over() or not predicted or predicted[-1] == predicted[0]:
            p.refresh(client)
            out = p.predict(x)
            assert np.isfinite(out.candle).all() and np.isfinite(out.probs).all()
            predicted.append(out.version)
            time.sleep(0.02)

    storm.run(predictions)
    at_end: dict[str, dict] = {}

    def storm_done() -> bool:  # one read of every session: the storm ends on what it saw
        seen = {s["id"]: s for h in hosts for s in call(h.list_sessions.remote())}
        if min(seen[sid]["metrics"]["candles"] for _, sid in sessions) < STORM_BARS:
            return False
        at_end.update(seen)
        return True

    wait_until(storm_done, timeout_s=300, what=f"the live sessions to take {STORM_BARS} bars")
    storm.end.set()
    storm.join(240)
    assert not storm.errors, f"storm errors: {storm.errors!r}"
    assert len(batch_steps) >= 2
    # the storm ended on the read that saw the slowest live session reach STORM_BARS: that
    # session was still running (it had BARS - STORM_BARS bars left), so the storm overlapped
    # live predicting and training. A faster session may already have finished: sessions start
    # seconds apart on a loaded machine, and that is no fault
    assert any(at_end[sid]["state"] == "running" for _, sid in sessions), at_end
    assert predicted and predicted[-1] > predicted[0]  # weights moved meanwhile

    for h in hosts:
        ids = [sid for hh, sid in [*sessions, *manual] if hh is h]
        wait_until(lambda h=h, ids=ids: finished(h, ids), what="the replays to finish and drain")
    per_session = {sid: call(h.status.remote(sid))["metrics"] for h, sid in [*sessions, *manual]}
    for sid, m in per_session.items():
        assert m["train_pending"] == 0, sid
        assert m["train_requested"] == m["train_done"] + m["train_dropped"], sid
        assert m["train_timeouts"] == 0 and m["missed"] == 0, sid
    assert sum(len(v) for v in asked.values()) == 50
    assert sum(per_session[sid]["train_requested"] for _, sid in manual) == 50
    assert per_session[sessions[3][1]]["train_requested"] == 0  # the none session
    assert all(per_session[sid]["train_requested"] > 100 for _, sid in sessions[:3])

    stats = [call(h.stats.remote()) for h in hosts]
    for s in stats:
        assert s["requested"] == s["done"] + s["dropped"] and s["pending"] == 0
        assert s["timeouts"] == s["failed_calls"] == s["loop_errors"] == 0
    # the actor took exactly the batch run's steps and one step per answered live batch
    live_steps = sum(s["steps_done"] for s in stats)
    assert client.call("weights_version")[1] == v0 + sum(batch_steps) + live_steps
    snap = client.call("weights_snapshot")
    state = ray.get(snap["ref"])
    assert all(torch.isfinite(t).all() for t in state.values() if t.is_floating_point())
    for h in hosts:
        call(h.shutdown.remote())
        kill(h)


def test_inference_does_not_wait_for_batch_training(ray_cluster, make_cfg):
    """One batch-training call holds the ModelActor (a million epochs: it ends only when the
    test kills the actor). Meanwhile the host predicts every session's candles, and its own
    train_batch call, queued behind the batch call, is left in flight, never waited on: a host
    that waited for training would take no candle until the batch call ended.
    (How much a batch run costs the latency in milliseconds: bench/live_latency.py.)"""
    cfg = make_cfg("live.hosts=1", "data.synthetic.length=1000")
    split = prepare(cfg)
    client, (host,) = hosts_for(cfg)
    modes = ("every_candle", "every_candle", "none", "none")
    ids = [
        call(host.start_session.remote(f"synthetic:SYN{k}", "1h", m, "replay", 20, -900))["id"]
        for k, m in enumerate(modes)
    ]

    def predictions() -> list[int]:
        return [call(host.status.remote(i))["metrics"]["predictions"] for i in ids]

    wait_until(lambda: min(predictions()) >= 10, what="the sessions to predict")
    v0 = client.call("weights_version")[1]
    held = client.submit("train_epochs", split.train, 1_000_000)
    # the read group answers during training: the batch call has started once steps move
    wait_until(lambda: client.call("weights_version")[1] > v0, what="the batch call to train")
    before = predictions()
    wait_until(
        lambda: all(n >= b + 40 for n, b in zip(predictions(), before, strict=True)),
        timeout_s=120,
        what="40 more predictions of every session while the batch call holds the actor",
    )
    stats = call(host.stats.remote())
    still, _ = ray.wait([held], timeout=0)
    assert not still, "the batch call ended: the test could not hold the actor"
    assert stats["in_flight"], f"no live train_batch waiting behind the batch call: {stats}"
    assert stats["missed"] == 0 and stats["loop_errors"] == 0, stats
    states = [call(host.status.remote(i))["state"] for i in ids]
    assert states == ["running"] * len(ids), states
    kill(client.handle)  # ends the batch call (and the host's call behind it fails)
    call(host.shutdown.remote())
    kill(host)
