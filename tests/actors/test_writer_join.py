"""The MLflow writer's join: a wait that gives up says what is still pending."""

from __future__ import annotations

import time

from actors.run_plan import RunPlan
from actors.tracking_writer import ThreadWriter


class SlowTracker:
    """A run whose metric writes take a second."""

    run_id = "r1"

    def log_params(self, params: dict) -> None:
        pass

    def log_dict(self, data: dict, name: str) -> None:
        pass

    def log_metrics(self, metrics: dict, step: int) -> None:
        time.sleep(1.0)

    def flush(self) -> None:
        pass


def test_a_join_that_gives_up_reports_the_pending_work(make_cfg):
    writer = ThreadWriter(RunPlan(make_cfg(), "g1", factory=lambda *a, **k: SlowTracker()))
    writer.wait_opened(5)
    writer.submit("log_steps", [(1, {"total_loss": 1.0})])
    writer.submit("flush")
    t0 = time.monotonic()
    status = writer.join(timeout_s=0.3)
    assert time.monotonic() - t0 < 0.8
    assert status["pending"] == 2 and status["errors"] == 0 and status["state"] == "open"
    assert writer.join(timeout_s=5)["pending"] == 0
