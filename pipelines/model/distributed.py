"""One data-parallel training rank, in plain torch: a process group, a DDP model, a global step.

No Ray here: ``actors.model.ranks`` runs one ``RankTrainer`` per rank actor and feeds each the
shard of a global batch. A step gives what ``Trainer.train_step`` gives on the whole batch:

* the loss is the weighted mean over the *global* batch. Each rank back-propagates its
  shard's sum of weighted per-sample losses; DDP's gradient all-reduce is a *sum* here (a comm
  hook, not DDP's average), and the global weight sum, all-reduced while the backward pass
  runs, divides it: the gradient of the global weighted mean, as one process computes it;
* the hard-sample weights divide by the global mean loss (all-reduced first), so a sample's
  weight does not depend on which shard it landed in;
* every metric comes from all-reduced sums and counts, so all ranks report the same figures.

A rank whose shard is empty (a batch smaller than the group, e.g. one online sample) still
runs the forward and backward pass on its zero samples: every parameter is in its graph with
a zero gradient, so DDP's bucket all-reduce runs on every rank and nothing waits forever.

All ranks start from the same state (the ModelActor loads its own into each) and apply the
same all-reduced gradients with the same optimizer, so they stay identical; ``digest`` lets
tests check it.
"""

from __future__ import annotations

import hashlib
import logging
import socket
import time
from datetime import timedelta
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from conf.schema import TrainConfig
from pipelines.errors import InvalidInputError
from pipelines.model.network import ModelSpec
from pipelines.model.trainer import Trainer

log = logging.getLogger(__name__)

# the sums each step all-reduces after the forward pass, in this order
_SUMS = ("w", "wb", "candle", "action", "dir_right", "dir_counted", "action_right")


def free_port() -> int:
    """A TCP port free on this host now (the rendezvous port rank 0 offers)."""
    with socket.socket() as s:
        s.bind(("", 0))
        return int(s.getsockname()[1])


class RankTrainer:
    """Rank ``rank`` of ``world``: a ``Trainer`` whose model runs wrapped in DDP."""

    def __init__(
        self,
        spec: ModelSpec,
        cfg: TrainConfig,
        device: torch.device,
        rank: int,
        world: int,
        seed: int = 0,
    ) -> None:
        self.rank, self.world = rank, world
        self.trainer = Trainer(spec, cfg, device, seed=seed)
        # the weights come from the ModelActor (join); the seed left to set is dropout's, and
        # each shard gets masks of its own, as the samples of one big batch would
        torch.manual_seed(seed * 1_000 + rank)
        self.ddp: DistributedDataParallel | None = None
        self.allreduce_s = 0.0  # seconds in collectives (waits for other ranks included)

    def join(self, addr: str, port: int, state: dict[str, Any], timeout_s: float) -> None:
        """Join the group at ``addr:port`` (rank 0's), load ``state`` and wrap the model.

        ``timeout_s`` bounds every collective: a peer that hangs makes this rank's step fail
        after it, instead of blocking forever (the ModelActor gives up on the step sooner).
        """
        backend = "nccl" if self.trainer.device.type == "cuda" else "gloo"
        dist.init_process_group(
            backend,
            init_method=f"tcp://{addr}:{port}",
            rank=self.rank,
            world_size=self.world,
            timeout=timedelta(seconds=timeout_s),
        )
        self.trainer.load_state(state)
        ids = [self.trainer.device.index or 0] if self.trainer.device.type == "cuda" else None
        # the state above is every rank's already: DDP's own broadcast of it would be redundant
        self.ddp = DistributedDataParallel(self.trainer.model, device_ids=ids, init_sync=False)
        self.ddp.register_comm_hook(None, self._sum_gradients)

    def load(self, state: dict[str, Any]) -> None:
        """Take ``state`` (the ModelActor's, after a checkpoint load): every rank gets it."""
        self.trainer.load_state(state)

    def _allreduce(self, t: torch.Tensor) -> torch.Tensor:
        began = time.perf_counter()
        dist.all_reduce(t)
        self.allreduce_s += time.perf_counter() - began
        return t

    def _sum_gradients(self, state, bucket):
        """DDP comm hook: sum (not average) a bucket of gradients over the ranks, timed.

        Unannotated on purpose: DDP compares the annotations with its types, and this module's
        postponed (string) annotations never match them."""
        buf = bucket.buffer()
        self._allreduce(buf)
        fut: torch.futures.Future = torch.futures.Future()
        fut.set_result(buf)
        return fut

    def step(self, x: Any, y_candle: Any, y_action: Any) -> dict[str, float]:
        """One optimizer step on this rank's shard of a global batch; the global metrics."""
        if self.ddp is None:
            raise RuntimeError("RankTrainer.step before join")
        t = self.trainer
        xt, yc, ya = t._tensors(x, y_candle, y_action)
        t.model.train()
        per = t._per_sample(xt, yc, ya, model=self.ddp)
        base = t._base(per)
        first = self._allreduce(
            torch.stack(
                [
                    base.detach().sum().double(),
                    torch.tensor(float(len(xt)), device=t.device, dtype=torch.float64),
                ]
            )
        )
        w = t._sample_weights(per, base, (first[0] / first[1]).to(base.dtype))
        wb = w * base
        sums = torch.stack(
            [
                w.sum().double(),
                wb.detach().sum().double(),
                per["candle"].detach().sum().double(),
                per["action"].detach().sum().double(),
                per["dir_right"].sum().double(),
                per["dir_counted"].sum().double(),
                per["action_right"].sum().double(),
            ]
        )
        # the sums travel while the backward pass runs: one wait fewer for the other ranks
        pending = dist.all_reduce(sums, async_op=True)
        t.optimizer.zero_grad(set_to_none=True)
        wb.sum().backward()  # the comm hook sums the gradients over the ranks
        began = time.perf_counter()
        assert pending is not None
        pending.wait()
        self.allreduce_s += time.perf_counter() - began
        g = dict(zip(_SUMS, sums.tolist(), strict=True))
        total = g["wb"] / g["w"]
        if not np.isfinite(total):  # every rank sees the same sums, so all stop here together
            raise InvalidInputError(  # before the optimizer: nothing was applied
                "the batch produced a non-finite loss, so its step was not applied "
                "(targets too large? check the candles for outliers)"
            )
        # summed gradients of the shards' weighted sums / the global weight sum: the
        # gradient of the global weighted mean, as one process computes it
        inv = 1.0 / g["w"]
        for p in t.model.parameters():
            if p.grad is not None:
                p.grad.mul_(inv)
        if t.cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(t.model.parameters(), t.cfg.grad_clip)
        t.optimizer.step()
        t.step += 1
        n = float(first[1])
        return {
            "total_loss": total,
            "candle_loss": g["candle"] / n,
            "action_loss": g["action"] / n,
            # 0/0 = NaN when every target is flat, as Trainer reports it
            "candle_accuracy": g["dir_right"] / g["dir_counted"]
            if g["dir_counted"]
            else float("nan"),
            "action_accuracy": g["action_right"] / n,
            "lr": float(t.optimizer.param_groups[0]["lr"]),
            "samples": n,
            "direction_samples": g["dir_counted"],
        }

    def state(self) -> dict[str, Any]:
        """The model and optimizer state (CPU tensors): what the ModelActor keeps after a step."""
        return {
            "model": {k: v.detach().to("cpu") for k, v in self.trainer.model.state_dict().items()},
            "optimizer": _to_cpu(self.trainer.optimizer.state_dict()),
            "step": self.trainer.step,
        }

    def digest(self) -> str:
        """A hash of the parameters and optimizer state: equal on ranks that are identical."""
        return state_digest(self.trainer)

    def leave(self) -> None:
        if dist.is_initialized():
            dist.destroy_process_group()


def state_digest(trainer: Trainer) -> str:
    """A hash of a trainer's parameters and optimizer state (tests: ranks stay identical)."""
    h = hashlib.sha256()
    for v in trainer.model.state_dict().values():
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    for s in trainer.optimizer.state_dict()["state"].values():
        for k in sorted(s):
            v = s[k]
            if isinstance(v, torch.Tensor):
                h.update(v.detach().cpu().contiguous().numpy().tobytes())
            else:
                h.update(repr(v).encode())
    return h.hexdigest()


def _to_cpu(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu")
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_to_cpu(v) for v in obj]
    return obj
