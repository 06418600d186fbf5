"""The JobBoard's rules, without Ray (``actors.jobs.JobTable``): one training job at a time
(two would interleave their steps on the one ModelActor), a cap on running jobs, cancelling,
and a bounded number of finished jobs kept with their results."""

from __future__ import annotations

import time

import pytest

from actors.jobs import JobTable
from pipelines.errors import CapacityError, ConflictError, NotFoundError


def test_a_second_training_job_is_refused_while_one_runs():
    t = JobTable(max_running=4, keep_finished=10)
    first = t.create("training", {"kind": "history"})
    with pytest.raises(ConflictError, match=f"{first} is running") as e:
        t.create("training", {"kind": "annotations"})
    assert "cancel" in str(e.value)
    assert [j["id"] for j in t.list()] == [first]  # the refusal changed nothing
    t.create("backtest", {"symbols": ["synthetic:SYN0"]})  # a backtest does not train the model
    t.finish(first, result={"steps": 3})
    assert t.create("training", {"kind": "history"}).startswith("training-")


def test_jobs_past_the_running_limit_are_refused_with_the_config_key():
    t = JobTable(max_running=2, keep_finished=10)
    a = t.create("backtest", {})
    t.create("backtest", {})
    with pytest.raises(CapacityError, match=r"serve\.max_running_jobs=2"):
        t.create("backtest", {})
    t.finish(a, error="boom")
    t.create("backtest", {})  # room again


def test_a_cancel_is_signalled_to_the_task_and_the_job_ends_cancelled():
    t = JobTable(max_running=4, keep_finished=10)
    job = t.create("training", {"kind": "history"})
    assert t.progress(job, 1, 10) is False  # the task goes on
    asked = t.cancel(job)
    assert asked["cancel_requested"] and asked["state"] == "running"  # until the task stops
    assert t.progress(job, 2, 10) is True  # the task's signal to stop
    with pytest.raises(ConflictError, match="running"):  # it still holds the model
        t.create("training", {"kind": "history"})
    t.finish(job, error="batch training stopped in epoch 1: 20 step(s) applied")
    got = t.get(job)
    assert got is not None and got["state"] == "cancelled"
    assert "cancelled on request" in got["error"] and "20 step(s)" in got["error"]
    with pytest.raises(ConflictError, match="already cancelled"):
        t.cancel(job)
    with pytest.raises(NotFoundError, match="GET /jobs"):
        t.cancel("training-nope")


def test_only_the_newest_finished_jobs_are_kept():
    t = JobTable(max_running=10, keep_finished=2)
    running = t.create("backtest", {})
    ids = [t.create("backtest", {}) for _ in range(4)]
    for i in ids:
        t.finish(i, result={"big": "x" * 1000})
    kept = [j["id"] for j in t.list()]
    assert kept == [running, *ids[-2:]]  # running jobs are never dropped
    assert t.get(ids[0]) is None and t.get(ids[-1])["result"] == {"big": "x" * 1000}
    assert all("result" not in j for j in t.list())


@pytest.mark.ray
def test_a_job_whose_worker_died_frees_its_slot_for_the_next_job(ray_cluster):
    # run_job writes every outcome to the board, but a worker killed mid-job writes nothing:
    # without a check at create, its "running" training job made every new one a 409
    import os

    import ray

    from actors.jobs import JobBoard

    @ray.remote(num_cpus=0, max_retries=0)
    def dies() -> None:
        os._exit(1)

    board = JobBoard.remote(max_running=1, keep_finished=10)
    first = ray.get(board.create.remote("training", {"kind": "history"}))
    ref = dies.remote()
    ray.get(board.watch.remote(first, [ref]))
    ray.wait([ref], timeout=120)  # the task has ended (its worker exited)
    # the board borrows the ref: it may learn of the task's end a moment after this driver
    # (its owner) does, so create is asked until it admits the job (a hang guard, no sleep)
    deadline = time.monotonic() + 120
    while True:
        try:
            second = ray.get(board.create.remote("training", {"kind": "history"}), timeout=60)
            break
        except ray.exceptions.RayTaskError as exc:
            if not isinstance(exc.cause, ConflictError) or time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    assert second != first
    jobs = {j["id"]: j for j in ray.get(board.list.remote())}
    assert jobs[first]["state"] == "failed" and "Ray task ended" in jobs[first]["error"]
    assert jobs[second]["state"] == "running"
    ray.kill(board)
