"""``candleray backtest`` on a multi-node cluster: the symbols' tasks spread over the nodes, and
a node killed while its tasks run costs nothing (Ray retries them elsewhere): both reports
equal the one-node run's."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from cluster_support import Command, wait_for
from support import tiny_overrides

from actors import spec_from_config
from conf import to_dict
from pipelines.cli import main
from pipelines.config import load_config
from pipelines.model.checkpoints import CheckpointStore
from pipelines.model.trainer import Trainer

SYMBOLS = [f"synthetic:S{i}" for i in range(6)]
# walk-forward training inside each task: a few seconds of work per symbol, so a node that is
# killed holds running tasks
BACKTEST = (
    "model.device=cpu",
    "backtest.task_num_cpus=1",
    "backtest.walk_forward=every_candle",
    "backtest.retrain_every=100",
    "backtest.confidence=0.4",
)
TASK = "_job_task"  # pipelines.backtest.runner's task, as the state API names it

pytestmark = [pytest.mark.slow, pytest.mark.ray]


@pytest.fixture(scope="module")
def setup(tmp_path_factory, ray_cluster) -> dict[str, Any]:
    """A checkpoint to test, and the one-node run's report (the suite's local cluster)."""
    home = tmp_path_factory.mktemp("bt")
    overrides = [*tiny_overrides(home, "mnbt"), *BACKTEST]
    cfg = load_config(None, overrides)
    trainer = Trainer(spec_from_config(cfg), cfg.train, torch.device("cpu"), seed=1)
    info = CheckpointStore(f"{cfg.checkpoint.uri}/{cfg.run.name}").save(
        trainer.state(), {"step": 5, "config": to_dict(cfg)}
    )
    args = ["backtest", "--symbols", ",".join(SYMBOLS), "--checkpoint", info.path]
    ref = home / "one-node.json"
    assert main([*args, "--out", str(ref), *overrides]) == 0
    return {"args": args, "overrides": overrides, "home": home, "reference": comparable(ref)}


def comparable(path: Path) -> dict[str, Any]:
    """The report without what differs between any two runs (wall times, creation time, the
    config's ray.address)."""
    report = json.loads(path.read_text())
    for s in report["symbols"]:
        s.pop("seconds", None)
    assert all(s["ok"] for s in report["symbols"]), report["symbols"]
    return {k: report[k] for k in ("weights", "symbols", "portfolio")}


def attempts(mn, seen: frozenset[str] | set[str] = frozenset()) -> list[Any]:
    """Every attempt of a backtest task not in ``seen`` (task ids), from the state API."""
    from ray.util.state import list_tasks

    got = list_tasks(
        address=mn.dashboard,
        filters=[("func_or_class_name", "=", TASK)],
        detail=True,
        limit=10_000,
        raise_on_missing_output=False,
    )
    return [a for a in got if a.task_id not in seen]


def cluster_run(mn, setup, out: Path) -> Command:
    return Command(
        [*setup["args"], "--out", str(out), *setup["overrides"], f"ray.address={mn.address}"]
    )


def test_backtest_spreads_over_the_nodes_and_equals_the_one_node_run(multi_node, setup):
    mn = multi_node
    mn.ensure_all()
    before = {a.task_id for a in attempts(mn)}
    out = setup["home"] / "spread.json"
    with cluster_run(mn, setup, out) as run:
        assert run.wait() == 0, run.text
    assert comparable(out) == setup["reference"]
    names = {mn.node_id(n): n for n in mn.alive()}
    finished = wait_for(
        "every task's finish in the state API",
        lambda: (
            done
            if len(
                done := [
                    a for a in attempts(mn, before) if a.state == "FINISHED" and a.node_id in names
                ]
            )
            == len(SYMBOLS)
            else None
        ),
    )
    ran_on = {names[a.node_id] for a in finished}
    assert len(ran_on) >= 2, f"all {len(SYMBOLS)} tasks ran on {ran_on}"


def test_a_node_killed_mid_backtest_costs_nothing(multi_node, setup):
    mn = multi_node
    mn.ensure_all()
    before = {a.task_id for a in attempts(mn)}
    out = setup["home"] / "node-lost.json"
    names = {mn.node_id(n): n for n in mn.alive()}
    with cluster_run(mn, setup, out) as run:
        running = wait_for(
            "a backtest task running on a node",
            # an attempt's node can reach the state API after its state: wait for both
            lambda: [
                a for a in attempts(mn, before) if a.state == "RUNNING" and a.node_id in names
            ],
        )
        victim = names[running[0].node_id]
        mn.kill(victim)
        t_kill = time.monotonic()
        assert run.wait() == 0, run.text
    recovered_s = time.monotonic() - t_kill
    assert comparable(out) == setup["reference"]

    def settled() -> list[Any] | None:
        got = attempts(mn, before)
        final = [a for a in got if a.state in ("FINISHED", "FAILED") and a.node_id in names]
        return got if len(final) == len(got) and len(got) > len(SYMBOLS) else None

    got = wait_for("the retried attempts in the state API", settled)
    lost = [a for a in got if a.state == "FAILED"]
    assert lost and all(names.get(a.node_id) == victim for a in lost), [
        (a.task_id, a.attempt_number, a.state, a.node_id, a.error_type) for a in got
    ]
    assert {a.error_type for a in lost} == {"NODE_DIED"}
    for a in lost:  # each lost attempt was run again on a live node, and finished there
        again = [b for b in got if b.task_id == a.task_id and b.attempt_number > a.attempt_number]
        assert any(b.state == "FINISHED" and names[b.node_id] != victim for b in again)
    print(
        f"node {victim} killed with {len(lost)} backtest task(s) on it: retried elsewhere; "
        f"the command finished {recovered_s:.0f}s after the kill"
    )
