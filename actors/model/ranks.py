"""Data-parallel training behind the ModelActor: N rank actors, driven one global batch a step.

With ``train.workers > 1`` the ModelActor's trainer is a ``DistributedTrainer``: the same
``Trainer`` (its model and optimizer hold the last state every rank agreed on, its step,
history and best the actor's bookkeeping), whose ``train_step`` ships one shard of each global
batch to each rank (``pipelines.model.distributed.RankTrainer``: DDP, gloo on CPU, NCCL on
CUDA) instead of training itself. This is RLlib's ``LearnerGroup`` shape, long-lived learners
taking a batch per call; Ray Train's ``TorchTrainer`` runs a whole training loop as one job
and owns its workers' lifetime, which does not fit an actor that takes one batch per call and
must stay the one owner of weights, snapshots and checkpoints.

The group (a placement group of ``train.workers`` bundles, ``train.worker_*`` resources each,
``train.placement_strategy``) is built on the first training step and after a failure, from
the actor's own state, which every rank loads: all ranks start identical. After each step rank
0 returns its state beside the metrics; the actor keeps it (whole, never a half-updated one)
and loads it into its own model only when someone reads the weights (a snapshot, a
checkpoint). A rank that dies, raises or misses the step deadline (half of
``ray.call_timeout_s``, so the error reaches a caller waiting that long on the call)
fails the step with ``TrainingRanksError``; the group is torn down and the step is not
applied, so the call's earlier steps are what ``PartialTrainingError`` reports.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from typing import Any

import numpy as np
import ray
import torch

from conf import Config
from pipelines.errors import CandlerayError, PlacementError, TrainingRanksError
from pipelines.model.network import ModelSpec, resolve_device
from pipelines.model.trainer import Trainer, check_batch
from pipelines.placement import Request, reserve

log = logging.getLogger(__name__)


@ray.remote(max_restarts=0, max_task_retries=0)
class _Rank:
    """A thin shell around ``RankTrainer``, one per rank."""

    def __init__(self, spec: ModelSpec, cfg: Config, rank: int, world: int, threads: int) -> None:
        from pipelines.model.distributed import RankTrainer

        torch.set_num_threads(threads)
        device = resolve_device(cfg.model.device)
        self.rt = RankTrainer(spec, cfg.train, device, rank, world, seed=cfg.run.seed)

    def address(self) -> tuple[str, int]:
        from pipelines.model.distributed import free_port

        return ray.util.get_node_ip_address(), free_port()

    def join(self, addr: str, port: int, state: dict[str, Any], timeout_s: float) -> str:
        self.rt.join(addr, port, state, timeout_s)
        return str(self.rt.trainer.device)

    def load(self, state: dict[str, Any]) -> None:
        self.rt.load(state)

    def step(self, x: Any, yc: Any, ya: Any, want_state: bool) -> tuple[dict, Any]:
        m = self.rt.step(x, yc, ya)
        return m, self.rt.state() if want_state else None

    def digest(self) -> str:
        return self.rt.digest()

    def allreduce_s(self) -> float:
        return self.rt.allreduce_s

    def pid(self) -> int:
        return os.getpid()


def rank_request(cfg: Config) -> Request:
    """What each rank asks Ray for: ``train.worker_num_cpus/worker_num_gpus/worker_resources``."""
    t = cfg.train
    return Request(
        f"a training rank of {cfg.run.name!r} (train.workers={t.workers})",
        t.worker_num_cpus,
        "train.worker_num_cpus",
        t.worker_resources,
        "train.worker_resources",
        num_gpus=t.worker_num_gpus,
        gpus_key="train.worker_num_gpus",
    )


class DistributedTrainer(Trainer):
    """A ``Trainer`` whose steps run on ``cfg.train.workers`` DDP ranks (see the module doc)."""

    def __init__(self, spec: ModelSpec, cfg: Config, seed: int = 0) -> None:
        # the actor's copy never trains: CPU, whatever device the ranks use
        super().__init__(spec, cfg.train, torch.device("cpu"), seed=seed)
        self.full_cfg = cfg
        self.world = cfg.train.workers
        self.ranks: list[Any] = []
        self._pg: Any = None
        self._agreed: dict[str, Any] | None = None  # rank 0's state after the last step
        self.rank_device = f"ranks not started (train.workers={self.world})"
        self.step_timeout_s = 0.5 * cfg.ray.call_timeout_s

    # -- the group ----------------------------------------------------------------------
    def _build(self) -> None:
        from ray.util.placement_group import placement_group, remove_placement_group
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        cfg, req = self.full_cfg, rank_request(self.full_cfg)
        r = cfg.ray
        reserve(req, self.world, r.placement_timeout_s, "ray.placement_timeout_s")
        pg = placement_group(
            [req.amounts() or {"CPU": 0.01}] * self.world, strategy=cfg.train.placement_strategy
        )
        ready, _ = ray.wait([pg.ready()], timeout=r.placement_timeout_s)
        if not ready:
            remove_placement_group(pg)
            raise PlacementError(
                f"{self.world} training ranks ({req.amounts()} each, train.worker_num_cpus/"
                f"worker_num_gpus/worker_resources) could not be placed with "
                f"train.placement_strategy={cfg.train.placement_strategy} within "
                f"{r.placement_timeout_s:g}s (ray.placement_timeout_s); SPREAD needs free "
                "resources on several nodes: use PACK, fewer train.workers or smaller requests"
            )
        self._pg = pg
        threads = r.torch_threads if r.torch_threads > 0 else max(1, int(req.num_cpus))
        opts = req.options()
        group = uuid.uuid4().hex[:6]
        self.ranks = [
            _Rank.options(  # type: ignore[attr-defined]
                scheduling_strategy=PlacementGroupSchedulingStrategy(
                    pg, placement_group_bundle_index=i
                ),
                # named (``ray list actors`` shows whose rank it is), unique per group built
                name=f"{cfg.run.name}.rank{i}.{group}",
                namespace=r.namespace,
                **opts,
            ).remote(self.spec, cfg, i, self.world, threads)
            for i in range(self.world)
        ]
        state = self._mirror_state()
        # starting processes that import torch is slow on a busy machine, and no hang: the
        # start gets the placement and the call deadlines together, a step half of the latter
        start_s = r.placement_timeout_s + r.call_timeout_s
        addr, port = self._get(self.ranks[0].address.remote(), "start", start_s)
        devices = self._get(
            [rk.join.remote(addr, port, state, self.step_timeout_s) for rk in self.ranks],
            "start",
            start_s,
        )
        self.rank_device = f"{devices[0]} x{self.world}"
        log.info("%d training ranks joined at %s:%d on %s", self.world, addr, port, devices)

    def shutdown(self) -> None:
        """Kill the ranks and free their placement group (the actor's state stays)."""
        from ray.util.placement_group import remove_placement_group

        for rk in self.ranks:
            ray.kill(rk, no_restart=True)
        self.ranks = []
        if self._pg is not None:
            remove_placement_group(self._pg)
            self._pg = None

    def _get(self, refs: Any, what: str, timeout_s: float | None = None) -> Any:
        """ray.get with the step deadline; any failure of a rank is a TrainingRanksError
        (user errors raised on the ranks, e.g. a non-finite loss, pass through as they are)."""
        t = self.step_timeout_s if timeout_s is None else timeout_s
        try:
            return ray.get(refs, timeout=t)
        except ray.exceptions.RayTaskError as exc:
            if isinstance(exc.cause, CandlerayError) and not isinstance(
                exc.cause, TrainingRanksError
            ):
                raise exc.cause from None
            cause = f"{type(exc.cause).__name__}: {exc.cause}"
            if "timed out" in str(exc.cause).lower():
                # a peer's collective gave up first (gloo/NCCL bound it by the step deadline
                # too): the rank it waited for hangs, as when this deadline fires
                raise self._failed(what, f"a rank hangs (a collective timed out: {cause})") from exc
            raise self._failed(what, cause) from exc
        except ray.exceptions.GetTimeoutError as exc:
            raise self._failed(
                what,
                f"no answer within {t:g}s (a step gets half of ray.call_timeout_s, the start "
                "ray.placement_timeout_s + ray.call_timeout_s): a rank hangs or did not start",
            ) from exc
        except ray.exceptions.RayActorError as exc:
            lines = str(exc).strip().splitlines()
            # a rank whose constructor raised (e.g. model.device=cuda on a rank without a
            # GPU): that error is the trace's last line
            why = lines[-1] if "creation task" in str(exc) else lines[0]
            raise self._failed(what, f"a rank died: {why}") from exc

    def _failed(self, what: str, why: str) -> TrainingRanksError:
        self.shutdown()  # every rank goes: the next step rebuilds them from the agreed state
        return TrainingRanksError(
            f"data-parallel training ({self.world} ranks, train.workers) failed at {what}: {why}. "
            f"Nothing of this step was applied; the weights stay those of step {self.step}, and "
            "the next training call starts a new group from them"
        )

    # -- state --------------------------------------------------------------------------
    def _sync(self) -> None:
        """Load the state the ranks agreed on last into this trainer's own model/optimizer."""
        got, self._agreed = self._agreed, None
        if got is not None:
            self.model.load_state_dict(got["model"])
            self.optimizer.load_state_dict(got["optimizer"])

    def _mirror_state(self) -> dict[str, Any]:
        self._sync()
        return super().state()

    def state(self) -> dict[str, Any]:
        return self._mirror_state()

    def weights_cpu(self) -> dict[str, torch.Tensor]:
        self._sync()
        return super().weights_cpu()

    def load_state(self, state: dict[str, Any]) -> None:
        self._agreed = None
        super().load_state(state)
        if self.ranks:  # a checkpoint loaded into a running group: every rank takes it
            try:
                self._get([rk.load.remote(super().state()) for rk in self.ranks], "load")
            except TrainingRanksError as exc:  # the group is gone; the next step starts one
                log.warning("%s", exc)  # from these weights, so the load itself stands

    def evaluate(
        self, x: Any, y_candle: Any, y_action: Any, batch_size: int = 1024
    ) -> dict[str, float]:
        self._sync()
        return super().evaluate(x, y_candle, y_action, batch_size)

    # -- training -----------------------------------------------------------------------
    def train_step(self, x: Any, y_candle: Any, y_action: Any) -> dict[str, float]:
        """One step of the global batch on the ranks; Trainer.train_step's contract."""
        check_batch(self.spec, x, y_candle, y_action)
        if not self.ranks:
            self._build()
        x, yc, ya = (np.asarray(a) for a in (x, y_candle, y_action))
        # contiguous shards differing by at most one sample; an empty one still steps
        cuts = np.linspace(0, len(x), self.world + 1).round().astype(int)
        refs = [
            rk.step.remote(x[a:b], yc[a:b], ya[a:b], i == 0)
            for i, (rk, a, b) in enumerate(zip(self.ranks, cuts[:-1], cuts[1:], strict=True))
        ]
        results = self._get(refs, f"step {self.step + 1}")
        out, agreed = results[0]
        self._agreed = agreed
        self.step += 1
        self.last_train_time = time.time()
        self.history.append(out)
        return dict(out)

    def digests(self) -> list[str]:
        """Each rank's parameter + optimizer-state hash (tests: ranks stay identical)."""
        return list(self._get([rk.digest.remote() for rk in self.ranks], "digest"))

    def allreduce_s(self) -> float:
        """Rank 0's time in all-reduces so far (the benchmark's figure)."""
        return float(self._get(self.ranks[0].allreduce_s.remote(), "allreduce_s"))
