"""Session hosts with MLflow tracking on: one run per session, metrics by candle, one writer."""

from __future__ import annotations

from host_support import call, finished, hosts_for, kill, wait_until
from mlflow.tracking import MlflowClient

from actors import assign_host
from actors.host_tracking import SESSION_TAG

CANDLES = 60


def test_each_session_has_one_run_with_metrics_by_candle(ray_cluster, make_cfg):
    # two hosts and a training ModelActor all write to the one sqlite store of run.home
    cfg = make_cfg("live.hosts=2", "tracking.enabled=true")
    client, hosts = hosts_for(cfg)
    loads = [0] * len(hosts)
    ids = []
    for k, mode in enumerate(("every_candle", "every_candle", "none", "pivots_only")):
        sym = f"synthetic:SYN{k}"
        i = assign_host(sym, loads)
        loads[i] += 1
        ids.append(
            (i, call(hosts[i].start_session.remote(sym, "1h", mode, "replay", 0, -CANDLES))["id"])
        )
    for i, h in enumerate(hosts):
        mine = [sid for j, sid in ids if j == i]
        wait_until(lambda h=h, mine=mine: finished(h, mine), what="the replays to finish")
    metrics = {sid: call(hosts[i].status.remote(sid))["metrics"] for i, sid in ids}
    stats = [call(h.stats.remote()) for h in hosts]
    for h in hosts:  # ends each session's run, flushing what is buffered
        call(h.shutdown.remote())
    assert [s["mlflow_errors"] for s in stats] == [0, 0]  # no "database is locked", nothing lost
    assert sum(s["done"] for s in stats) > 0  # the actor trained (and logged) meanwhile

    ml = MlflowClient(tracking_uri=cfg.tracking.uri)
    exp = ml.get_experiment_by_name(f"{cfg.run.name}-live")
    assert exp is not None
    runs = ml.search_runs([exp.experiment_id])
    by_session = {r.data.tags.get(SESSION_TAG): r for r in runs}
    assert len(runs) == len(ids) and set(by_session) == {sid for _, sid in ids}
    for _, sid in ids:
        run, m = by_session[sid], metrics[sid]
        assert run.info.status == "FINISHED" and run.info.run_name == sid
        # step = candles the session has taken: one point per candle, every one predicted
        preds = ml.get_metric_history(run.info.run_id, "predictions")
        assert [p.step for p in sorted(preds, key=lambda p: p.step)] == list(range(1, CANDLES + 1))
        assert [p.value for p in sorted(preds, key=lambda p: p.step)] == list(
            map(float, range(1, CANDLES + 1))
        )
        # direction accuracy exists from the first settled candle on: one point per settlement
        acc = ml.get_metric_history(run.info.run_id, "direction_acc")
        assert len(acc) == m["settled"] == CANDLES - 1
        assert run.data.metrics["train_done"] == m["train_done"]
    for h in hosts:
        kill(h)
