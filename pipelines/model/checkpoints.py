"""Checkpoint storage behind a URI: atomic writes, metadata sidecars, retention, safe loads.

Layout under the URI (a local folder, or any fsspec URI such as s3://bucket/prefix; opened
and checked by ``pipelines.storage``, so a missing bucket or refused credentials fail at once
with a ``StorageError`` naming ``checkpoint.uri``):

    ckpt-00000007-step000000200-3f9a1c2e.pt     torch.save of the trainer state (tensors,
                                                numbers, strings only)
    ckpt-00000007-step000000200-3f9a1c2e.json   its sidecar: seq, step, kind, metrics, is_best,
                                                config, data, code version, and the name,
                                                sha256 and size of its .pt

Every save writes two files of its own, named by a sequence number, the step and a random
id; no save ever rewrites another checkpoint's weights or sidecar. The .pt is written first,
the sidecar last, each to a temporary name and then renamed (on an object store, where a
rename is a copy, each is one whole-object put instead), so a crash in between leaves
weights without a sidecar: ignored, and deleted by the next save's prune. A sidecar that is
unreadable or not a record, or a .pt whose sha256 differs from its sidecar's, is skipped with
a warning. Loads use ``torch.load(weights_only=True)``.

Order: ``seq`` (in the sidecar and the name) is one more than the largest in the store, so the
newest checkpoint is the one written last whatever the writers' clocks say. The newest one is
what a (re)started ModelActor restores; a rewind (``promote``) therefore writes a copy of the
older checkpoint as the newest, which makes the rewind survive a restart and leaves the
abandoned checkpoints the oldest, pruned first. Re-saving the bytes of a best checkpoint keeps
the best flag.

Best: the newest record flagged ``is_best`` is THE best (``best()``, what ``prune`` keeps, the
one listed with ``is_best: true``); older flags stay on disk untouched, since a save never
rewrites another checkpoint's sidecar, and are listed as false. ``mark_best`` rewrites them all. Sidecars of the layout before ``seq`` (``ckpt-000000200.json``) still load; they
count as older than every checkpoint with a ``seq``.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import re
import time
import uuid
from dataclasses import dataclass
from typing import Any

import torch

from pipelines.errors import CheckpointError
from pipelines.storage import is_local, is_store_error, open_store, storage_error

log = logging.getLogger(__name__)

# ckpt-<seq>-step<step>-<id>; the seq-less ckpt-<step> of the earlier layout counts as seq 0
_NAME = re.compile(r"ckpt-(\d+)-step\d+-[0-9a-f]+\.(?:pt|json)$")


@dataclass(frozen=True)
class CheckpointInfo:
    step: int
    path: str  # the .pt: a local path, or the full URI (s3://...) on a remote store
    kind: str
    is_best: bool
    metrics: dict[str, float]
    created: float
    seq: int = 0  # the order of writing: larger is newer

    def to_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "path": self.path,
            "kind": self.kind,
            "is_best": self.is_best,
            "metrics": self.metrics,
            "created": self.created,
            "seq": self.seq,
        }


def _seq_of(name: str) -> int:
    m = _NAME.search(name)
    return int(m.group(1)) if m else 0


def _newest_best(metas: list[tuple[str, dict[str, Any]]]) -> str | None:
    """The path of the best checkpoint: the newest record flagged best (module doc)."""
    bests = [p for p, m in metas if m.get("is_best")]
    return bests[-1] if bests else None


def _stem(path: str) -> str:
    return path.rsplit(".", 1)[0]


def _checked(meta: Any, path: str) -> dict[str, Any]:
    """``meta`` if it is a sidecar record describing ``path`` (a .pt); ValueError if not."""
    if not isinstance(meta, dict):
        raise ValueError(f"a sidecar is a JSON object, not {type(meta).__name__}")
    for key, kind, required in (
        ("step", int, True),
        ("sha256", str, True),
        ("seq", int, False),  # absent in the layout before seq
        ("created", (int, float), False),
    ):
        v = meta.get(key)
        if (required or key in meta) and (not isinstance(v, kind) or isinstance(v, bool)):
            got = f"is {v!r}" if key in meta else "is missing"
            raise ValueError(f"'{key}' {got}; a checkpoint sidecar needs a valid '{key}'")
    metrics = meta.get("metrics", {})
    if not isinstance(metrics, dict) or not all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in metrics.values()
    ):
        raise ValueError(f"'metrics' is {metrics!r}, not a mapping of names to numbers")
    name = path.rsplit("/", 1)[-1]
    if meta.get("file", name) != name:
        raise ValueError(f"it describes {meta['file']}, not {name}")
    return meta


class CheckpointStore:
    def __init__(self, uri: str, keep_last: int = 3) -> None:
        self.uri = uri
        self.keep_last = keep_last
        self.fs, self.root = open_store(uri, setting="checkpoint.uri")
        self._local = is_local(uri)

    def _p(self, name: str) -> str:
        return f"{self.root.rstrip('/')}/{name}"

    def _atomic_write(self, name: str, data: bytes) -> str:
        final, tmp = self._p(name), self._p(f".{name}.tmp-{uuid.uuid4().hex[:8]}")
        try:
            if self._local:
                with self.fs.open(tmp, "wb") as f:
                    f.write(data)
                self.fs.mv(tmp, final)  # a rename on local and shared filesystems
            else:
                self.fs.pipe_file(final, data)  # an object appears whole or not at all
        except Exception as exc:
            if not is_store_error(exc):
                raise
            if self._local and self.fs.exists(tmp):
                self.fs.rm(tmp)
            # a CheckpointError, which the ModelActor reports as a failed save and trains on
            err = storage_error(exc, setting="checkpoint.uri", uri=self.uri, action="a write")
            raise CheckpointError(f"could not write checkpoint {final}: {err}") from exc
        return final

    def save(self, state: dict[str, Any], meta: dict[str, Any]) -> CheckpointInfo:
        """Write ``state`` and its metadata as a new checkpoint, then prune. ``meta`` needs 'step'."""
        buf = io.BytesIO()
        torch.save(state, buf)
        return self._write(buf.getvalue(), meta)

    def promote(self, path: str, **changes: Any) -> CheckpointInfo:
        """Write a copy of checkpoint ``path`` as the newest one (a rewind that a restart keeps).

        The copy has the same bytes and metadata (updated with ``changes``, e.g. the writer's
        current run id), a new ``seq`` and ``rewind_of`` naming the original; CheckpointError
        if ``path`` does not load.
        """
        meta, blob = self._read(path)
        drop = ("seq", "created", "sha256", "size", "file")
        rest = {k: v for k, v in meta.items() if k not in drop}
        return self._write(blob, {**rest, **changes, "rewind_of": path.rsplit("/", 1)[-1]})

    def _write(self, blob: bytes, meta: dict[str, Any]) -> CheckpointInfo:
        step = int(meta["step"])
        sha = hashlib.sha256(blob).hexdigest()
        records = self._metas()
        names = [p.rsplit("/", 1)[-1] for p in self.fs.glob(self._p("ckpt-*"))]
        seq = 1 + max(
            [int(m.get("seq", 0)) for _, m in records] + [_seq_of(n) for n in names] + [0]
        )
        # the same bytes as the best checkpoint are that best: the flag goes with them
        best = _newest_best(records)
        same_best = any(p == best and m["sha256"] == sha for p, m in records)
        name = f"ckpt-{seq:08d}-step{step:09d}-{uuid.uuid4().hex[:8]}"
        path = self._atomic_write(f"{name}.pt", blob)
        full = {
            **meta,
            "step": step,
            "seq": seq,
            "is_best": bool(meta.get("is_best", False)) or same_best,
            "created": time.time(),  # for people; the order is seq's
            "sha256": sha,
            "size": len(blob),
            "file": f"{name}.pt",
        }
        self._atomic_write(f"{name}.json", json.dumps(full, default=str, indent=1).encode())
        self.prune()
        return self._info(path, full)

    def _info(self, path: str, meta: dict[str, Any]) -> CheckpointInfo:
        return CheckpointInfo(
            step=int(meta["step"]),
            # s3://bucket/... on a remote store: a listed path loads from any process
            path=self.full_uri(path),
            kind=str(meta.get("kind", "")),
            is_best=bool(meta.get("is_best", False)),
            metrics={k: float(v) for k, v in meta.get("metrics", {}).items()},
            created=float(meta.get("created", 0.0)),
            seq=int(meta.get("seq", 0)),
        )

    def info(self, meta: dict[str, Any]) -> CheckpointInfo:
        """The listing entry of a sidecar record ``meta`` (as ``load`` returns it)."""
        path = self._p(str(meta["file"]))
        best = _newest_best(self._metas())
        return self._info(path, {**meta, "is_best": self.fs._strip_protocol(path) == best})

    def _metas(self) -> list[tuple[str, dict[str, Any]]]:
        """(path of the .pt, sidecar) of every readable sidecar record, oldest written first."""
        out = []
        for p in self.fs.glob(self._p("ckpt-*.json")):
            pt = _stem(p) + ".pt"
            try:
                with self.fs.open(p, "rb") as f:
                    out.append((pt, _checked(json.loads(f.read()), pt)))
            except (OSError, ValueError) as exc:
                log.warning("ignoring unreadable checkpoint metadata %s: %s", p, exc)
        # records of the layout before seq (seq 0) are ordered among themselves by time
        return sorted(
            out,
            key=lambda pm: (
                int(pm[1].get("seq", 0)),
                float(pm[1].get("created", 0.0)),
                pm[1]["step"],
            ),
        )

    def full_uri(self, path: str) -> str:
        """``path`` as a URI any process can open (a plain path for a local store)."""
        return path if self.is_local else self.fs.unstrip_protocol(path)

    @property
    def is_local(self) -> bool:
        return "file" in (
            self.fs.protocol if isinstance(self.fs.protocol, tuple) else (self.fs.protocol,)
        )

    def list(self) -> list[CheckpointInfo]:
        """Complete checkpoints, oldest written first; only the best one has ``is_best``."""
        metas = self._metas()
        best = _newest_best(metas)
        return [self._info(p, {**m, "is_best": p == best}) for p, m in metas]

    def _read(self, path: str) -> tuple[dict[str, Any], bytes]:
        """(sidecar, bytes) of the .pt ``path``, its sha256 checked; CheckpointError if not."""
        meta_path = _stem(path) + ".json" if path.endswith(".pt") else path + ".json"
        try:
            with self.fs.open(meta_path, "rb") as f:
                raw = f.read()
            try:
                meta = _checked(json.loads(raw), path)
            except ValueError as exc:
                raise CheckpointError(
                    f"checkpoint {path} has unusable metadata {meta_path}: {exc}"
                ) from exc
            meta.setdefault("file", path.rsplit("/", 1)[-1])  # checked to be this file's
            with self.fs.open(path, "rb") as f:
                blob = f.read()
        except Exception as exc:
            if not is_store_error(exc):
                raise
            err = storage_error(exc, setting="checkpoint.uri", uri=self.uri, action="a read")
            raise CheckpointError(f"checkpoint {path} cannot be read: {err}") from exc
        if hashlib.sha256(blob).hexdigest() != meta["sha256"]:
            raise CheckpointError(
                f"checkpoint {path} is corrupt or truncated ({len(blob)} bytes, "
                f"expected {meta.get('size')}); its sha256 does not match the metadata"
            )
        return meta, blob

    def load(self, path: str) -> tuple[dict[str, Any], dict[str, Any]]:
        """(state, meta) of one checkpoint; CheckpointError if missing, truncated or corrupt."""
        meta, blob = self._read(path)
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

    def is_newest(self, path: str) -> bool:
        """True if ``path`` is the newest checkpoint: the one a restart restores."""
        metas = self._metas()
        return bool(metas) and metas[-1][0] == self.fs._strip_protocol(path)

    def best(self) -> CheckpointInfo | None:
        bests = [i for i in self.list() if i.is_best]
        return bests[-1] if bests else None

    def mark_best(self, path: str) -> CheckpointInfo:
        """Make checkpoint ``path`` the best one (what ``best()`` answers and ``prune`` keeps):
        its record flagged, every other record's flag cleared. CheckpointError if it does not
        load. The flag goes on first, so a crash part-way leaves it best already."""
        meta, _ = self._read(path)  # exists and is intact
        target = self.fs._strip_protocol(path)
        records = [(target, meta)] + [(p, m) for p, m in self._metas() if p != target]
        for p, m in records:
            if bool(m.get("is_best")) != (p == target):
                name = _stem(p.rsplit("/", 1)[-1]) + ".json"
                record = {**m, "is_best": p == target}
                self._atomic_write(name, json.dumps(record, default=str, indent=1).encode())
        return self._info(target, {**meta, "is_best": True})

    def prune(self) -> None:
        """Keep the newest ``keep_last`` checkpoints and the newest best one; delete the rest.

        Also deletes weights left without a sidecar by a crash (older than the newest record:
        not a save in progress) and temporary files over an hour old.
        """
        metas = self._metas()
        keep = {p for p, _ in metas[-self.keep_last :]}
        best = _newest_best(metas)
        if best is not None:
            keep.add(best)
        for p, _ in metas:
            if p not in keep:
                for q in (_stem(p) + ".json", p):  # metadata first: a .pt alone is ignored
                    if self.fs.exists(q):
                        self.fs.rm(q)
        newest = int(metas[-1][1].get("seq", 0)) if metas else 0
        sidecars = {_stem(p) for p in self.fs.glob(self._p("ckpt-*.json"))}
        for p in self.fs.glob(self._p("ckpt-*.pt")):
            if _stem(p) not in sidecars and _seq_of(p) < newest:
                log.warning("deleting %s: weights without metadata, left by a crash", p)
                self.fs.rm(p)
        for p in self.fs.glob(self._p(".ckpt-*.tmp-*")):
            if time.time() - self._mtime(p) > 3600:  # debris of a crash mid-write
                self.fs.rm(p)

    def _mtime(self, p: str) -> float:
        try:
            m = self.fs.modified(p)
            return m.timestamp()
        except (NotImplementedError, OSError):
            return time.time()
