"""Checkpoint storage behind a URI: atomic writes, metadata sidecars, retention, safe loads.

Layout under the URI (a local folder, or any fsspec URI such as s3://bucket/prefix):

    ckpt-000000200.pt     torch.save of the trainer state (tensors, numbers, strings only)
    ckpt-000000200.json   metadata: step, kind, metrics, is_best, config, data, code version,
                          sha256 and size of the .pt

The .pt is written first, the .json last, each to a temporary name and then renamed; a
checkpoint without its .json, or whose .pt does not match the recorded sha256, is not a
checkpoint. Loads use ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import time
import uuid
from dataclasses import dataclass
from typing import Any

import fsspec
import torch

from pipelines.errors import CheckpointError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CheckpointInfo:
    step: int
    path: str  # the .pt, as a URI/path the store's filesystem understands
    kind: str
    is_best: bool
    metrics: dict[str, float]
    created: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "path": self.path,
            "kind": self.kind,
            "is_best": self.is_best,
            "metrics": self.metrics,
            "created": self.created,
        }


class CheckpointStore:
    def __init__(self, uri: str, keep_last: int = 3) -> None:
        self.uri = uri
        self.keep_last = keep_last
        self.fs, self.root = fsspec.core.url_to_fs(uri)
        self.fs.makedirs(self.root, exist_ok=True)

    def _p(self, name: str) -> str:
        return f"{self.root.rstrip('/')}/{name}"

    def _atomic_write(self, name: str, data: bytes) -> str:
        final, tmp = self._p(name), self._p(f".{name}.tmp-{uuid.uuid4().hex[:8]}")
        try:
            with self.fs.open(tmp, "wb") as f:
                f.write(data)
            self.fs.mv(tmp, final)  # a rename on local and shared filesystems
        except OSError as exc:
            if self.fs.exists(tmp):
                self.fs.rm(tmp)
            raise CheckpointError(
                f"could not write checkpoint {final}: {exc}; check checkpoint.uri"
            ) from exc
        return final

    def save(self, state: dict[str, Any], meta: dict[str, Any]) -> CheckpointInfo:
        """Write ``state`` and its metadata atomically, then prune. ``meta`` needs 'step'."""
        step = int(meta["step"])
        buf = io.BytesIO()
        torch.save(state, buf)
        blob = buf.getvalue()
        name = f"ckpt-{step:09d}"
        path = self._atomic_write(f"{name}.pt", blob)
        full = {
            **meta,
            "step": step,
            "created": time.time(),  # orders checkpoints: the newest written is the one to restore
            "sha256": hashlib.sha256(blob).hexdigest(),
            "size": len(blob),
            "file": f"{name}.pt",
        }
        self._atomic_write(f"{name}.json", json.dumps(full, default=str, indent=1).encode())
        self.prune()
        return self._info(path, full)

    def _info(self, path: str, meta: dict[str, Any]) -> CheckpointInfo:
        return CheckpointInfo(
            step=int(meta["step"]),
            path=path,
            kind=str(meta.get("kind", "")),
            is_best=bool(meta.get("is_best", False)),
            metrics={k: float(v) for k, v in meta.get("metrics", {}).items()},
            created=float(meta.get("created", 0.0)),
        )

    def _metas(self) -> list[tuple[str, dict[str, Any]]]:
        out = []
        for p in self.fs.glob(self._p("ckpt-*.json")):
            try:
                with self.fs.open(p, "rb") as f:
                    meta = json.loads(f.read())
                out.append((p[: -len(".json")] + ".pt", meta))
            except (OSError, ValueError) as exc:
                log.warning("ignoring unreadable checkpoint metadata %s: %s", p, exc)
        # ordered by when they were written, not by step: after a rewind (load_checkpoint of an
        # older one) the checkpoints of the abandoned future are the oldest, pruned first
        return sorted(out, key=lambda pm: (float(pm[1].get("created", 0.0)), int(pm[1]["step"])))

    def full_uri(self, path: str) -> str:
        """``path`` as a URI any process can open (a plain path for a local store)."""
        return path if self.is_local else self.fs.unstrip_protocol(path)

    @property
    def is_local(self) -> bool:
        return "file" in (
            self.fs.protocol if isinstance(self.fs.protocol, tuple) else (self.fs.protocol,)
        )

    def list(self) -> list[CheckpointInfo]:
        """Complete checkpoints, oldest written first."""
        return [self._info(p, m) for p, m in self._metas()]

    def load(self, path: str) -> tuple[dict[str, Any], dict[str, Any]]:
        """(state, meta) of one checkpoint; CheckpointError if missing, truncated or corrupt."""
        meta_path = path[: -len(".pt")] + ".json" if path.endswith(".pt") else path + ".json"
        try:
            with self.fs.open(meta_path, "rb") as f:
                meta = json.loads(f.read())
            with self.fs.open(path, "rb") as f:
                blob = f.read()
        except (OSError, ValueError) as exc:
            raise CheckpointError(f"checkpoint {path} cannot be read: {exc}") from exc
        if hashlib.sha256(blob).hexdigest() != meta.get("sha256"):
            raise CheckpointError(
                f"checkpoint {path} is corrupt or truncated ({len(blob)} bytes, "
                f"expected {meta.get('size')}); its sha256 does not match the metadata"
            )
        try:
            state = torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises several types for a bad pickle
            raise CheckpointError(
                f"checkpoint {path} could not be unpickled safely: {exc}"
            ) from exc
        return state, meta

    def load_latest_good(self) -> tuple[dict[str, Any], dict[str, Any]] | None:
        """Newest checkpoint that loads; corrupt ones are skipped with a warning. None if none."""
        for path, _ in reversed(self._metas()):
            try:
                return self.load(path)
            except CheckpointError as exc:
                log.warning("skipping checkpoint: %s", exc)
        return None

    def best(self) -> CheckpointInfo | None:
        bests = [i for i in self.list() if i.is_best]
        return bests[-1] if bests else None

    def prune(self) -> None:
        """Keep the newest ``keep_last`` checkpoints and the newest best one; delete the rest."""
        metas = self._metas()
        keep = {p for p, _ in metas[-self.keep_last :]}
        bests = [p for p, m in metas if m.get("is_best")]
        if bests:
            keep.add(bests[-1])
        for p, _ in metas:
            if p not in keep:
                for q in (p[: -len(".pt")] + ".json", p):  # metadata first: a .pt alone is ignored
                    if self.fs.exists(q):
                        self.fs.rm(q)
        for p in self.fs.glob(self._p(".ckpt-*.tmp-*")):
            if time.time() - self._mtime(p) > 3600:  # debris of a crash mid-write
                self.fs.rm(p)

    def _mtime(self, p: str) -> float:
        try:
            m = self.fs.modified(p)
            return m.timestamp()
        except (NotImplementedError, OSError):
            return time.time()
