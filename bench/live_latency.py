"""Live sessions: candle arrival -> prediction published, idle and during batch training; scale.

Three parts, one run:

1. Session step (plain Python, no Ray): the cost of ``Session.on_candle`` and of a whole
   ``tick`` (real ``Predictor``, one torch thread) per candle, per mode, and of one tick over
   many sessions whose candles close at the same instant (one batched forward pass).
2. Latency through a real ``SessionHost`` (``live.hosts=1``, replayed sessions at ``--speed``
   candles/s each): the host's own arrival -> published latencies (``stats()``), idle and
   while a batch run trains the ModelActor (``train_split`` back to back in a driver thread),
   beside the direct forward pass of the same weights on the same batch (one window, what a
   tick of a paced session holds) in this process. Rounds alternate idle / forward / training,
   so drift on the shared machine hits all three; ratios are per round, then the median.
3. Scale: sessions on 1-second replayed candles on the model's ``live.hosts`` hosts, the count
   raised step by step (to 1,500 by default, ``live.max_sessions`` raised to match); a step
   passes while p99 <= 100 ms, no prediction missed and every due candle predicted in the
   measured window. Reports the largest count that passed, and beside each step the hosts'
   memory: their RSS over the sessions they hold, and the growth over the empty hosts' RSS
   per session (read from ``/proc`` of each host's process).

    .venv/bin/python bench/live_latency.py [--rounds 3] [--round-s 6] [--counts 25 50 100 200 300]
    .venv/bin/python bench/live_latency.py --only-scale          # part 3 only
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import threading
import time
from typing import Any

import numpy as np
import ray
import torch

from actors import (
    ModelClient,
    assign_host,
    host_call,
    spec_from_config,
    start_hosts,
    stop_hosts,
)
from pipelines.config import load_config
from pipelines.data.dataset import Dataset, Split
from pipelines.data.sources import load_candles, parse_symbol
from pipelines.jobs.training import train_split
from pipelines.live import Session, SessionSettings, iter_candles, tick
from serve.predictor import Predictor

P99_LIMIT_MS = 100.0


def ms(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values) * 1e3, q))


# -- 1. session step ----------------------------------------------------------------------------
def step_cost(
    cfg: Any, predictor: Predictor, n: int = 600
) -> list[tuple[str, float, float, float]]:
    """Per mode: (mode, on_candle p50 ms, on_candle p99 ms, tick p50 ms) over ``n`` candles."""
    frame = load_candles(parse_symbol("synthetic:SYN0", "1h"), cfg.data)
    cands = list(iter_candles(frame))
    settings = SessionSettings.from_config(cfg)
    rows = []
    for mode in ("none", "every_candle"):
        s = Session("bench", "synthetic:SYN0", "1h", mode, settings)
        s.prime(cands[:200])
        s.take_records()
        on, whole = [], []
        for c in cands[200 : 200 + n]:
            t0 = time.perf_counter()
            w = s.on_candle(c)
            t1 = time.perf_counter()
            if w is not None:
                p = predictor.predict(w.x[None])
                s.apply_prediction(p.candle[0], p.probs[0], p.version)
            s.take_records()
            s.take_samples()
            t2 = time.perf_counter()
            on.append(t1 - t0)
            whole.append(t2 - t0)
        rows.append((mode, ms(on, 50), ms(on, 99), ms(whole, 50)))
    return rows


def aligned_tick(cfg: Any, predictor: Predictor, sessions: int, rounds: int = 20) -> float:
    """ms (median) of one ``tick`` over ``sessions`` sessions whose candles close together."""
    settings = SessionSettings.from_config(cfg)
    feeds = []
    for i in range(sessions):
        frame = load_candles(parse_symbol(f"synthetic:SYN{i}", "1h"), cfg.data)
        s = Session(f"s{i}", f"synthetic:SYN{i}", "1h", "none", settings)
        cands = list(iter_candles(frame))
        s.prime(cands[:200])
        s.take_records()
        feeds.append((s, cands[200:]))
    times = []
    for k in range(rounds):
        t0 = time.perf_counter()
        tick([(s, c[k]) for s, c in feeds], predictor)
        times.append(time.perf_counter() - t0)
        for s, _ in feeds:
            s.take_records()
    return ms(times[3:], 50)


# -- 2. latency through a host ------------------------------------------------------------------
class Trainer(threading.Thread):
    """A batch run on the ModelActor, back to back, until stopped (the 'during training' load)."""

    def __init__(self, client: ModelClient, cfg: Any, spec: Any) -> None:
        super().__init__(daemon=True)
        self.client, self.cfg = client, cfg
        rng = np.random.default_rng(0)
        n = 2 * cfg.train.batches_per_call * cfg.train.batch_size
        data = Dataset(
            rng.standard_normal((n, spec.window, spec.n_features)).astype(np.float32),
            rng.standard_normal((n, 5)).astype(np.float32) * 0.5,
            rng.integers(0, 3, n),
        )
        self.split = Split(data, data.subset(np.arange(0)), {})
        self.stop = threading.Event()
        self.samples = 0

    def run(self) -> None:
        while not self.stop.is_set():
            train_split(self.client, self.split, self.cfg, epochs=1)
            self.samples += len(self.split.train)


def wait_weights(hosts: list[Any], timeout: float) -> None:
    """Until every host has loaded published weights (before that, candles wait in feeds)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        stats = ray.get([h.stats.remote() for h in hosts], timeout=timeout)
        if all(s["weights_version"] != -1 for s in stats):
            return
        time.sleep(0.2)
    raise RuntimeError(f"session hosts loaded no weights within {timeout:.0f}s")


def host_latency(host: Any, seconds: float, timeout: float) -> dict[str, Any]:
    host_call(host.reset_latencies.remote(), "reset_latencies", timeout)
    time.sleep(seconds)
    return host_call(host.stats.remote(), "stats", timeout)["latency_ms"]


def forward_ms(predictor: Predictor, x: np.ndarray, n: int = 200) -> tuple[float, float]:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        predictor.predict(x)
        times.append(time.perf_counter() - t0)
    return ms(times, 50), ms(times, 99)


# -- 3. scale -----------------------------------------------------------------------------------
def host_rss_mib(hosts: list[Any], timeout: float) -> list[float]:
    """Each host actor's resident set size, MiB (its process, on this machine)."""

    def pid(_self: Any) -> int:
        return os.getpid()

    out = []
    for p in ray.get([h.__ray_call__.remote(pid) for h in hosts], timeout=timeout):
        with open(f"/proc/{p}/status") as f:
            kb = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
        out.append(kb / 1024)
    return out


def scale(
    cfg: Any,
    counts: list[int],
    measure_s: float,
    mode: str,
    keep_going: bool = False,
    warmup_s: float = 15.0,
) -> list[dict[str, Any]]:
    timeout = cfg.ray.call_timeout_s
    hosts = start_hosts(cfg)
    wait_weights(hosts, timeout)
    loads = [0] * len(hosts)
    empty_mib = sum(host_rss_mib(hosts, timeout))
    print(f"  {len(hosts)} empty hosts: RSS {empty_mib:.0f} MiB in all", flush=True)
    rows: list[dict[str, Any]] = []
    started = 0
    try:
        for count in counts:
            t0 = time.perf_counter()
            refs = []
            for i in range(started, count):
                name = f"synthetic:SYN{i}"
                h = assign_host(name, loads)
                loads[h] += 1
                refs.append(hosts[h].start_session.remote(name, "1h", mode, "replay", 1.0, -3000))
            for r in refs:
                host_call(r, "start_session", timeout)
            start_s = time.perf_counter() - t0
            # every new session past its first candles; before the first count also the one-off
            # start of each host's MLflow writer actor (a process, mlflow's import, a new store)
            time.sleep(3.0 if started else max(3.0, warmup_s))
            started = count
            before = ray.get([h.stats.remote() for h in hosts], timeout=timeout)
            ray.get([h.reset_latencies.remote() for h in hosts], timeout=timeout)
            t1 = time.monotonic()
            time.sleep(measure_s)
            after = ray.get([h.stats.remote() for h in hosts], timeout=timeout)
            span = time.monotonic() - t1
            preds = sum(
                a["predictions"] - b["predictions"] for a, b in zip(after, before, strict=True)
            )
            missed = sum(a["missed"] - b["missed"] for a, b in zip(after, before, strict=True))
            due = count * (span - 1.0)  # each session: one candle a second, +-1 at the edges
            p50 = max(a["latency_ms"]["p50"] or 0.0 for a in after)
            p99 = max(a["latency_ms"]["p99"] or 0.0 for a in after)
            ok = p99 <= P99_LIMIT_MS and missed == 0 and preds >= due
            rss = sum(host_rss_mib(hosts, timeout))
            rows.append(
                dict(count=count, p50=p50, p99=p99, preds=preds, due=due, missed=missed,
                     start_s=start_s, ok=ok, load=os.getloadavg()[0], rss=rss,
                     per_session=rss / count, growth=(rss - empty_mib) / count,
                     dropped=sum(a["dropped"] for a in after),
                     done=sum(a["done"] for a in after),
                     requested=sum(a["requested"] for a in after))
            )  # fmt: skip
            print(
                f"  {count:>5} sessions: p50 {p50:6.1f} ms  p99 {p99:6.1f} ms  predicted "
                f"{preds}/{due:.0f} due  missed {missed}  host RSS {rss:.0f} MiB "
                f"({rss / count:.2f} MiB/session, +{(rss - empty_mib) / count:.2f} over empty)  "
                f"load {os.getloadavg()[0]:.1f}  -> {'ok' if ok else 'FAIL'}",
                flush=True,
            )
            if not ok and not keep_going:
                break
    finally:
        stop_hosts(hosts)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--round-s", type=float, default=6.0)
    ap.add_argument("--sessions", type=int, default=4, help="part 2: replayed sessions")
    ap.add_argument("--speed", type=float, default=10.0, help="part 2: candles/s per session")
    ap.add_argument(
        "--counts",
        type=int,
        nargs="+",
        default=[25, 50, 100, 200, 300, 400, 600, 800, 1000, 1200, 1500],
    )
    ap.add_argument("--only-scale", action="store_true", help="part 3 only (skip parts 1 and 2)")
    ap.add_argument("--measure-s", type=float, default=10.0)
    ap.add_argument("--scale-mode", default="none")
    ap.add_argument("--tracking", choices=("on", "off"), default="on")
    ap.add_argument("--keep-going", action="store_true", help="part 3: every count, past a fail")
    ap.add_argument(
        "--warmup-s",
        type=float,
        default=15.0,
        help="part 3: unmeasured start before the first count",
    )
    ap.add_argument("--actor-threads", type=int, default=0, help="ray.torch_threads (0: torch's)")
    args = ap.parse_args()
    home = tempfile.mkdtemp(prefix="candleray-bench-live-")
    base = [
        f"run.home={home}",
        f"tracking.enabled={args.tracking == 'on'}",
        f"ray.torch_threads={args.actor_threads}",
    ]
    cfg = load_config(overrides=[*base, "run.name=bench-live", "live.hosts=1"])
    ray.init(num_cpus=cfg.ray.num_cpus, include_dashboard=False, log_to_driver=False,
             namespace=cfg.ray.namespace)  # fmt: skip
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} CPUs, load average "
        f"{' '.join(f'{x:.1f}' for x in os.getloadavg())}; torch {torch.__version__}, "
        f"ray {ray.__version__}; model d_model={cfg.model.d_model} layers={cfg.model.n_layers} "
        f"window={cfg.features.window} extra={list(cfg.data.extra_timeframes)}; "
        f"MLflow per-session runs {args.tracking}; ModelActor torch threads "
        f"{args.actor_threads or 'default'}"
    )
    torch.set_num_threads(1)  # as a SessionHost
    if not args.only_scale:
        steps_and_latency(args, cfg)
    scale_part(args, base)
    ray.shutdown()


def steps_and_latency(args: Any, cfg: Any) -> None:
    spec = spec_from_config(cfg)
    client = ModelClient.connect(cfg)
    snap = client.call("weights_snapshot")
    predictor = Predictor(spec, "cpu")
    predictor.load(ray.get(snap["ref"]), snap["version"], snap["generation"])
    print("\n1. session step (plain Session loop, real predictor, 1 torch thread; ms)")
    for mode, on50, on99, whole in step_cost(cfg, predictor):
        print(f"  {mode:<13} on_candle p50 {on50:.2f}  p99 {on99:.2f}   whole step p50 {whole:.2f}")
    for n in (1, 100):
        print(f"  one tick over {n:>3} sessions whose candles close together: "
              f"{aligned_tick(cfg, predictor, n):.1f} ms")  # fmt: skip

    print(f"\n2. arrival -> prediction published, {args.sessions} replayed sessions at "
          f"{args.speed:g} candles/s on one SessionHost; ms")  # fmt: skip
    timeout = cfg.ray.call_timeout_s
    (host,) = start_hosts(cfg)
    wait_weights([host], timeout)
    for i in range(args.sessions):
        name = f"synthetic:SYN{i}"
        host_call(host.start_session.remote(name, "1h", "none", "replay", args.speed, -3500),
                  "start_session", timeout)  # fmt: skip
    x = np.zeros((1, spec.window, spec.n_features), np.float32)  # replaced by a real window
    frame = load_candles(parse_symbol("synthetic:SYN0", "1h"), cfg.data)
    warm = Session("x", "synthetic:SYN0", "1h", "none", SessionSettings.from_config(cfg))
    for c in list(iter_candles(frame))[:200]:
        w = warm.on_candle(c)
        if w is not None:
            warm.apply_prediction(np.zeros(5), np.array([1.0, 0, 0]), 0)
            x = w.x[None]
    time.sleep(2.0)
    rounds = []
    for r in range(args.rounds):
        idle = host_latency(host, args.round_s, timeout)
        fwd = forward_ms(predictor, x)
        trainer = Trainer(client, cfg, spec)
        trainer.start()
        time.sleep(1.0)  # the run is under way
        busy = host_latency(host, args.round_s, timeout)
        trainer.stop.set()
        trainer.join()
        rounds.append((idle, fwd, busy, trainer.samples))
        print(
            f"  round {r + 1}: idle p50 {idle['p50']:.2f} p99 {idle['p99']:.2f} (n {idle['n']})  "
            f"forward p50 {fwd[0]:.2f} p99 {fwd[1]:.2f}  training p50 {busy['p50']:.2f} "
            f"p99 {busy['p99']:.2f} (n {busy['n']}, {trainer.samples} samples trained)",
            flush=True,
        )
    med = statistics.median
    idle50 = med(r[0]["p50"] for r in rounds)
    fwd50 = med(r[1][0] for r in rounds)
    over = med(r[0]["p50"] - r[1][0] for r in rounds)
    ratio = med(r[2]["p50"] / r[0]["p50"] for r in rounds)
    print(
        f"  median: idle p50 {idle50:.2f} ms = forward p50 {fwd50:.2f} ms + {over:.2f} ms "
        f"(goal <= +5 ms: {'met' if over <= 5 else 'NOT met'}); during training p50 / idle p50 "
        f"= {ratio:.2f} (goal <= 1.5: {'met' if ratio <= 1.5 else 'NOT met'}); "
        f"idle p99 {med(r[0]['p99'] for r in rounds):.2f}, training p99 "
        f"{med(r[2]['p99'] for r in rounds):.2f}"
    )
    ray.get(host.shutdown.remote(), timeout=30)
    ray.kill(host, no_restart=True)


def scale_part(args: Any, base: list[str]) -> None:
    probe = load_config(overrides=[*base, "run.name=bench-scale"])
    per_host = -(-max(args.counts) // probe.live.hosts)  # room for the largest count
    cap = max(probe.live.max_sessions, per_host)
    scfg = load_config(overrides=[*base, "run.name=bench-scale", f"live.max_sessions={cap}"])
    model = ModelClient.connect(scfg)  # held: the hosts find the model, they never create it
    model.call("weights_version")
    print(
        f"\n3. scale: {args.scale_mode} sessions on 1-second replayed candles, "
        f"{scfg.live.hosts} hosts, {args.measure_s:g} s measured per step"
    )
    rows = scale(scfg, args.counts, args.measure_s, args.scale_mode, args.keep_going, args.warmup_s)
    passed = 0
    for r in rows:  # the largest count with every count below it passing too
        if not r["ok"]:
            break
        passed = r["count"]
    print(f"  largest count that passed: {passed} (goal >= 1000)")
    last = next((r for r in reversed(rows) if r["count"] == passed), rows[-1] if rows else None)
    if last is not None:
        print(
            f"  memory at {last['count']} sessions: host RSS {last['rss']:.0f} MiB, "
            f"{last['per_session']:.2f} MiB per session (+{last['growth']:.2f} MiB per session "
            "over the empty hosts)"
        )
    print(f"load average at the end: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
