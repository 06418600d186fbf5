"""The MLflow writer's join: a wait that gives up says what is still pending."""

from __future__ import annotations

import threading

from actors.model.run_plan import RunPlan
from actors.model.tracking_writer import ThreadWriter


class HeldTracker:
    """A run whose metric writes wait until the test sets ``release`` (a store as slow as the
    test wants)."""

    run_id = "r1"

    def __init__(self) -> None:
        self.release = threading.Event()

    def log_params(self, params: dict) -> None:
        pass

    def log_dict(self, data: dict, name: str) -> None:
        pass

    def log_metrics(self, metrics: dict, step: int) -> None:
        assert self.release.wait(120), "the test never released the store"

    def flush(self) -> None:
        pass


def test_a_join_that_gives_up_reports_the_pending_work(make_cfg):
    tracker = HeldTracker()
    writer = ThreadWriter(RunPlan(make_cfg(), "g1", factory=lambda *a, **k: tracker))
    writer.wait_opened(60)
    writer.submit("log_steps", [(1, {"total_loss": 1.0})])
    writer.submit("flush")
    # the store holds the first write: a join that waited for it would never return
    status = writer.join(timeout_s=0.3)
    assert not tracker.release.is_set()
    assert status["pending"] == 2 and status["errors"] == 0 and status["state"] == "open"
    tracker.release.set()
    assert writer.join(timeout_s=120)["pending"] == 0
