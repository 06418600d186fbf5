"""ModelCore's MLflow run across restarts and outages, without Ray (the thread writer).

A restart opens a new run linked to the old one; a replacement run is a full run; a store
that is down or slow never stops a start, training or a flush; queued checkpoint uploads
survive retention; a failed upload is reported with its path.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient
from support import free_port

from actors.model.core import ModelCore
from pipelines.errors import TrackingError
from pipelines.tracking.tracker import Tracker

QUIET = ("tracking.log_checkpoints=false", "tracking.register_best=false")


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One sqlite store for the module (creating MLflow's tables takes seconds); each test's
    model has its own run.name, so its own experiment."""
    return f"tracking.uri=sqlite:///{tmp_path_factory.mktemp('store') / 'mlflow.db'}"


def train(core: ModelCore, steps: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    s = core.spec
    for _ in range(steps):
        core.train_batch(
            rng.standard_normal((8, s.window, s.n_features)).astype(np.float32),
            rng.standard_normal((8, 5)).astype(np.float32),
            rng.integers(0, 3, 8),
        )


def client(cfg) -> MlflowClient:
    return MlflowClient(tracking_uri=cfg.tracking.uri, registry_uri=cfg.tracking.uri)


def steps(mc: MlflowClient, run_id: str, key: str = "total_loss") -> list[int]:
    return [m.step for m in sorted(mc.get_metric_history(run_id, key), key=lambda m: m.step)]


@pytest.fixture
def silent_store() -> Iterator[str]:
    """An http URI whose server accepts connections and never answers."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(64)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"


def test_a_restart_opens_a_new_run_linked_to_the_old_one(make_cfg, store):
    cfg = make_cfg(
        store,
        "tracking.enabled=true",
        "tracking.log_every_steps=1",
        "checkpoint.every_steps=4",
        "checkpoint.on_best=false",
        *QUIET,
    )
    first = ModelCore(cfg)
    train(first, 7)
    assert first.flush_tracking()["errors"] == 0
    second = ModelCore(cfg)  # the actor died after step 7; the restart restores step 4
    assert second.restored_from == 4
    train(second, 2, seed=100)
    assert second.flush_tracking()["pending"] == 0
    mc = client(cfg)
    old, new = first.run_id, second.run_id
    assert new != old
    assert steps(mc, old) == [1, 2, 3, 4, 5, 6, 7]
    assert steps(mc, new) == [5, 6]  # never a step twice, never past the model's step
    tags = mc.get_run(new).data.tags
    assert tags["candleray.previous_run"] == old
    assert tags["candleray.restored_from"] == "4" and tags["candleray.restarts"] == "1"
    before = mc.get_run(old)
    assert before.data.tags["candleray.continued_in"] == new
    assert before.info.status == "KILLED"  # its actor died mid-run
    assert mc.get_run(new).data.params == before.data.params
    second.close()
    third = ModelCore(cfg)  # restored from step 4 again: the counter goes on
    third.close()
    assert client(cfg).get_run(third.run_id).data.tags["candleray.restarts"] == "2"


def test_a_run_that_is_gone_is_replaced_by_a_full_run(make_cfg, store):
    cfg = make_cfg(store, "tracking.enabled=true", "checkpoint.every_steps=2", *QUIET)
    first = ModelCore(cfg)
    train(first, 2)
    first.close()
    mc = client(cfg)
    mc.delete_run(first.run_id)
    second = ModelCore(cfg)
    second.close()
    gone, run = mc.get_run(first.run_id), mc.get_run(second.run_id)
    assert run.info.run_id != gone.info.run_id
    assert run.data.params == gone.data.params and len(run.data.params) > 20
    assert run.data.tags["candleray.code_version"] == gone.data.tags["candleray.code_version"]
    assert run.data.tags["candleray.previous_run"] == first.run_id
    assert [a.path for a in mc.list_artifacts(run.info.run_id, "config")] == [
        "config/resolved.yaml"
    ]


def test_a_store_that_is_down_does_not_stop_a_restart_or_training(make_cfg):
    cfg = make_cfg("checkpoint.every_steps=2")
    train(ModelCore(cfg), 2)
    down = make_cfg(
        "tracking.enabled=true",
        f"tracking.uri=http://127.0.0.1:{free_port()}",
        "checkpoint.every_steps=2",
        name=cfg.run.name,
    )
    core = ModelCore(down)
    train(core, 2)
    status = core.flush_tracking(wait_s=0.2)
    assert core.restored_from == 2 and core.trainer.step == 4
    assert status["state"] == "opening" and status["open_failures"] >= 1, status
    assert status["pending"] >= 1 and "127.0.0.1" in status["last_error"]


def test_a_store_that_never_answers_does_not_stop_a_start_or_a_flush(make_cfg, silent_store):
    cfg = make_cfg("tracking.enabled=true", f"tracking.uri={silent_store}", "ray.call_timeout_s=2")
    core = ModelCore(cfg)
    train(core, 3)
    status = core.flush_tracking()
    assert status["state"] == "opening" and status["pending"] >= 1, status


class HeldStore:
    """A tracker factory that opens the run only once the test sets ``release``: a store that
    does not answer for as long as the test wants."""

    def __init__(self) -> None:
        self.release = threading.Event()

    def __call__(self, *args, **kwargs) -> Tracker:
        assert self.release.wait(120), "the test never released the store"
        return Tracker(*args, **kwargs)


def test_a_start_training_and_a_flush_never_wait_for_the_store_to_answer(make_cfg, store):
    """All of it while the store has not answered (it cannot before ``release``); then the
    run opens and nothing queued meanwhile is lost."""
    held = HeldStore()
    cfg = make_cfg(store, "tracking.enabled=true", "tracking.log_every_steps=1", *QUIET)
    core = ModelCore(cfg, tracker_factory=held)
    train(core, 3)
    status = core.flush_tracking(wait_s=0.2)
    assert status["state"] == "opening" and status["pending"] >= 1, status
    held.release.set()
    status = core.flush_tracking(wait_s=60)
    assert status["state"] == "open" and status["pending"] == 0, status
    assert steps(client(cfg), core.run_id) == [1, 2, 3]
    core.close()


def test_the_run_opens_when_the_store_comes_back_and_nothing_queued_is_lost(make_cfg, store):
    tries = []

    def store_down_once(*args, **kwargs):
        tries.append(time.monotonic())
        if len(tries) == 1:
            raise TrackingError("MLflow connect failed at http://mlflow:5000: connection refused")
        return Tracker(*args, **kwargs)

    cfg = make_cfg(store, "tracking.enabled=true", "tracking.log_every_steps=1", *QUIET)
    core = ModelCore(cfg, tracker_factory=store_down_once)
    train(core, 3)
    status = core.flush_tracking(wait_s=60)
    assert status["state"] == "open" and status["pending"] == 0, status
    assert status["open_failures"] == 1 and "connection refused" in status["last_error"]
    mc = client(cfg)
    assert steps(mc, core.run_id) == [1, 2, 3]
    assert mc.get_run(core.run_id).data.params["model.d_model"] == "32"
    core.close()


def test_flush_tracking_answers_before_the_callers_deadline(make_cfg, store):
    """The store holds the metrics' write until the test releases it: flush_tracking (its
    default wait, half of ray.call_timeout_s) answers anyway, saying the write is pending."""
    release = threading.Event()

    class HeldFlush(Tracker):
        def flush(self) -> None:
            if self._pending:
                assert release.wait(120), "the test never released the store"
            super().flush()

    cfg = make_cfg(store, "tracking.enabled=true", "ray.call_timeout_s=1", *QUIET)
    core = ModelCore(cfg, tracker_factory=HeldFlush)
    core.flush_tracking(wait_s=60)  # the run is open
    train(core, 1)
    status = core.flush_tracking()
    assert status["pending"] >= 1 and status["errors"] == 0, status
    release.set()
    assert core.flush_tracking(wait_s=60)["pending"] == 0
    assert steps(client(cfg), core.run_id) == [1]
    core.close()


class SlowUploads(Tracker):
    def log_artifact(self, local_path: str, artifact_path: str | None = None) -> None:
        time.sleep(0.2)
        super().log_artifact(local_path, artifact_path)


def test_checkpoints_pruned_while_their_upload_is_queued_still_reach_mlflow(make_cfg, store):
    cfg = make_cfg(
        store,
        "tracking.enabled=true",
        "checkpoint.every_steps=2",
        "checkpoint.keep_last=2",
        "checkpoint.on_best=false",
        "tracking.register_best=false",
    )
    core = ModelCore(cfg, tracker_factory=SlowUploads)
    train(core, 10)
    assert len(core.list_checkpoints()) == 2  # retention pruned 3 of the 5
    status = core.flush_tracking(wait_s=60)
    assert status["errors"] == 0 and status["pending"] == 0, status
    uploaded = [a.path for a in client(cfg).list_artifacts(core.run_id, "checkpoints")]
    assert len([p for p in uploaded if p.endswith(".pt")]) == 5, uploaded
    folder = Path(core.store.uri)
    assert [p for p in folder.rglob("*") if p.is_file() and ".mlflow-uploads" in p.parts] == []
    core.close()


class RefusedUploads(Tracker):
    def log_artifact(self, local_path: str, artifact_path: str | None = None) -> None:
        raise TrackingError("MLflow log artifact failed at http://mlflow:5000: disk full")


def test_a_failed_upload_is_reported_with_its_path(make_cfg, store):
    cfg = make_cfg(
        store, "tracking.enabled=true", "checkpoint.every_steps=2", "tracking.register_best=false"
    )
    core = ModelCore(cfg, tracker_factory=RefusedUploads)
    train(core, 2)
    status = core.flush_tracking(wait_s=60)
    (ckpt,) = core.list_checkpoints()
    assert status["errors"] == 1, status
    (failed,) = status["failed_uploads"]
    assert os.path.basename(ckpt["path"]) in failed and "disk full" in failed
    core.close()


def test_a_rewind_opens_a_new_run_linked_to_the_old_one(make_cfg, store):
    cfg = make_cfg(
        store,
        "tracking.enabled=true",
        "tracking.log_every_steps=1",
        "checkpoint.every_steps=2",
        "checkpoint.on_best=false",
        *QUIET,
    )
    core = ModelCore(cfg)
    train(core, 7)  # checkpoints at steps 2, 4, 6
    assert core.flush_tracking(wait_s=60)["errors"] == 0
    old = core.run_id
    core.load_checkpoint(core.list_checkpoints()[1]["path"])  # step 7 diverged: back to 4
    train(core, 2, seed=100)  # steps 5 and 6 again, on other weights
    status = core.flush_tracking(wait_s=60)
    assert status["state"] == "open" and status["pending"] == 0 and status["errors"] == 0, status
    new = core.run_id
    mc = client(cfg)
    assert new != old
    assert steps(mc, old) == [1, 2, 3, 4, 5, 6, 7]
    assert steps(mc, new) == [5, 6]  # no run receives a step twice
    run, before = mc.get_run(new), mc.get_run(old)
    assert run.data.tags["candleray.previous_run"] == old
    assert run.data.tags["candleray.restored_from"] == "4"
    assert run.data.tags["candleray.restarts"] == "1"
    assert run.data.tags["candleray.opened_after"] == "rewind"
    assert before.data.tags["candleray.continued_in"] == new
    assert before.info.status == "FINISHED"  # abandoned on purpose, not killed
    assert run.data.params == before.data.params
    assert [a.path for a in mc.list_artifacts(new, "config")] == ["config/resolved.yaml"]
    core.close()
    again = ModelCore(cfg)  # a restart after the rewind continues the rewind's run
    again.close()
    tags = client(cfg).get_run(again.run_id).data.tags
    assert tags["candleray.previous_run"] == new and tags["candleray.restarts"] == "2"


def registry(cfg) -> tuple[list[int], int | None]:
    """(versions of the model, the version alias 'best' names) in the MLflow registry."""
    mc = client(cfg)
    try:
        found = mc.search_model_versions(f"name='{cfg.run.name}'")
    except Exception:  # no registered model yet
        return [], None
    versions = sorted(int(v.version) for v in found)
    try:
        best = int(mc.get_model_version_by_alias(cfg.run.name, "best").version)
    except Exception:
        best = None
    return versions, best


def wait_for(what, check, deadline_s: float = 90.0):
    """Poll ``check()`` until it is truthy (a condition, not a duration)."""
    end = time.monotonic() + deadline_s
    while True:
        got = check()
        if got or time.monotonic() > end:
            assert got, f"waited {deadline_s:.0f} s for {what}"
            return got
        time.sleep(0.2)


def test_the_best_is_registered_on_save_and_reading_the_status_writes_nothing(make_cfg, store):
    """The registry follows the saves (an explicit or periodic save registers a new best, as
    the end of a training job does); reading the tracking status, which GET /health does,
    never registers a version or moves the alias."""
    cfg = make_cfg(store, "tracking.enabled=true", "tracking.log_checkpoints=false")
    core = ModelCore(cfg)
    train(core, 2)
    core.save_checkpoint("batch", is_best=True)
    wait_for("the first best to be registered", lambda: registry(cfg) == ([1], 1))
    train(core, 2, seed=1)
    core.save_checkpoint("batch", is_best=True, upload=False)  # an on-best save mid-training
    for _ in range(3):
        status = core.tracking_status()
        assert status["enabled"] and status["errors"] == 0, status
    wait_for("the writer to be idle", lambda: core.tracking_status()["pending"] == 0)
    assert registry(cfg) == ([1], 1), "a status read changed the registry"
    core.save_checkpoint("batch")  # the end of a training job: the same weights saved again
    wait_for("the new best to be registered", lambda: registry(cfg) == ([1, 2], 2))
    core.close()
