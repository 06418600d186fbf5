"""The MLflow run a writer opens: always a new one (resolved config as params,
``config/resolved.yaml``, code version and generation tags), linked to the previous run after
a restore or a rewind (see ``actors.model.tracking_writer`` for the lineage rule).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from conf import Config, flatten, to_dict
from pipelines.tracking.store import fail_fast_over_http
from pipelines.version import code_version


@dataclass(frozen=True)
class RunPlan:
    """The run a writer opens: always a new one, linked to ``previous_run_id`` after a restore."""

    cfg: Config
    generation: str
    previous_run_id: str | None = None
    restored_from: int | None = None
    previous_generation: str | None = None  # finds the previous run when its id is unknown
    factory: Callable[..., Any] | None = None  # the Tracker class, or a test's stand-in
    reason: str = "restart"  # why the previous run was left: restart or rewind

    def create(self) -> Any:
        cfg = self.cfg
        assert cfg.tracking.uri, "conf.validate.resolve fills tracking.uri"
        fail_fast_over_http(cfg.tracking.uri)  # called in the writer's own process
        factory = self.factory
        if factory is None:
            from pipelines.tracking.tracker import Tracker

            factory = Tracker
        return factory(
            cfg.tracking.uri,
            cfg.run.name,
            run_name=f"{cfg.run.name}-{self.generation}",
            tags={
                "candleray.code_version": code_version(),
                "candleray.generation": self.generation,  # see Tracker.link_previous_run
            },
            log_every_steps=cfg.tracking.log_every_steps,
        )

    def prepare(self, tracker: Any) -> None:
        """Params, config and the link to the previous run: what every run gets; repeatable."""
        tracker.log_params(flatten(to_dict(self.cfg)))
        tracker.log_dict(to_dict(self.cfg), "config/resolved.yaml")
        if self.restored_from is not None:
            tracker.link_previous_run(
                self.previous_run_id, self.restored_from, self.previous_generation, self.reason
            )

    def rewound(self, run_id: str, generation: str, restored_from: int) -> RunPlan:
        """The plan of the run that follows run ``run_id`` (this plan's) after a rewind."""
        return replace(
            self,
            generation=generation,
            previous_run_id=run_id,
            restored_from=restored_from,
            previous_generation=self.generation,
            reason="rewind",
        )
