"""Sweep scaling: wall time of 8 tiny trials with 1 vs 2 concurrent trials, and the per-trial
overhead of the sweep machinery.

    .venv/bin/python bench/sweep_scale.py [--rounds 2] [--trials 8] [--quick]

Each round runs the same 8-trial FIFO sweep (no early stop, so every trial does the same work)
once with ``--max-concurrent 1`` and once with 2, in alternating order, on one local Ray
cluster of 2 CPUs (one CPU and one torch thread per trial). It prints, per round and as the
median ratio over rounds:

    concurrent 2 / 1: R.RRx          (wall(1 concurrent) / wall(2 concurrent); goal >= 1.6x)

Overhead: each trial's start (Tune's trial-start event in the driver) to its first reported
epoch, beside the same epoch (same data, model and batch size) trained by ``candleray train``'s
path (``train_split`` through a ModelActor, its start not counted), and the difference.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

TINY = [
    "data.symbols=[synthetic:SYN0]",
    "data.synthetic.length=800",
    "data.extra_timeframes=[]",
    "features.window=16",
    "model.d_model=32",
    "model.n_heads=2",
    "model.n_layers=1",
    "model.dim_feedforward=64",
    "train.batch_size=32",
    "ray.torch_threads=1",
    "sweep.trial_num_cpus=1",
    "sweep.scheduler=fifo",
]


def sweep_once(
    home: Path, name: str, trials: int, concurrent: int, epochs: int
) -> tuple[float, list[float]]:
    from pipelines.config import load_config
    from pipelines.sweep.runner import run_sweep
    from pipelines.sweep.space import load_space

    cfg = load_config(
        None,
        [
            f"run.home={home}",
            f"run.name={name}",
            f"train.epochs={epochs}",
            f"sweep.trials={trials}",
            f"sweep.max_concurrent={concurrent}",
            *TINY,
        ],
    )
    space_file = home / "space.yaml"
    space_file.write_text("train.lr: {loguniform: [1.0e-4, 3.0e-3]}\n")
    space = load_space(space_file, cfg)
    t0 = time.perf_counter()
    result = run_sweep(cfg, space, say=lambda line: None)
    wall = time.perf_counter() - t0
    firsts = [r["first_epoch_s"] for r in result["trials"] if r["first_epoch_s"] is not None]
    assert all(r["status"] == "finished" for r in result["trials"]), result["trials"]
    return wall, firsts


def train_epoch_s(home: Path) -> float:
    """One epoch by ``candleray train``'s path: train_split through a ModelActor."""
    from actors import ModelClient
    from pipelines.config import load_config
    from pipelines.jobs.training import prepare, train_split

    cfg = load_config(
        None,
        [
            f"run.home={home}",
            "run.name=bench-train",
            "train.epochs=1",
            "tracking.enabled=false",
            *TINY,
        ],
    )
    split = prepare(cfg)
    client = ModelClient.connect(cfg)
    try:
        client.call("metrics")  # started and answering: its start is not the epoch's
        t0 = time.perf_counter()
        train_split(client, split, cfg, epochs=1)
        return time.perf_counter() - t0
    finally:
        import ray

        ray.kill(client.handle)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--trials", type=int, default=8)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="1 round of 4 one-epoch trials (a check)")
    a = ap.parse_args()
    if a.quick:
        a.rounds, a.trials, a.epochs = 1, 4, 1
    import ray

    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, namespace="bench-sweep")
    print(f"load average at start: {os.getloadavg()}")
    ratios, firsts = [], []
    with tempfile.TemporaryDirectory(prefix="sweep-bench-") as tmp:
        home = Path(tmp)
        for r in range(a.rounds):
            walls = {}
            for conc in (1, 2) if r % 2 == 0 else (2, 1):
                walls[conc], f = sweep_once(home, f"b{r}c{conc}", a.trials, conc, a.epochs)
                firsts += f
                print(
                    f"round {r + 1}: {a.trials} trials x {a.epochs} epochs, {conc} concurrent: {walls[conc]:.1f}s"
                )
            ratios.append(walls[1] / walls[2])
            print(f"round {r + 1}: concurrent 2 / 1: {ratios[-1]:.2f}x")
        epoch = train_epoch_s(home)
    first = statistics.median(firsts)
    print(f"concurrent 2 / 1: {statistics.median(ratios):.2f}x (median of {len(ratios)} rounds)")
    print(
        f"per-trial overhead: trial start -> first reported epoch {first:.2f}s (median of "
        f"{len(firsts)} trials) vs the same epoch by candleray train {epoch:.2f}s: "
        f"{first - epoch:+.2f}s of sweep machinery (trial process, dataset fetch, held-out "
        "evaluation, checkpoint, report)"
    )
    print(f"load average at end: {os.getloadavg()}")
    ray.shutdown()


if __name__ == "__main__":
    main()
