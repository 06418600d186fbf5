"""Checkpoint uploads queued for the MLflow writer, from copies that retention cannot delete.

A checkpoint is queued for upload when it is written, and uploaded when the writer gets to
it, possibly minutes later while the store is slow or down; retention may prune the file in
between. So the file is staged at queue time: a hard link (a copy where links fail) in
``<checkpoint folder>/.mlflow-uploads/<id>/``, named like the original, removed after the
upload, whether it worked or not. On remote storage (s3://, gs://, ...) the stage is a copy
made by the storage itself (a server-side copy on S3), downloaded to a temporary file for the
upload; ``pipelines.storage`` opens the store with its bounded timeouts and retries.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

from fsspec.implementations.local import LocalFileSystem

from pipelines.storage import filesystem

log = logging.getLogger(__name__)

STAGING_DIR = ".mlflow-uploads"
# stages left by a writer that died with its actor; a live queue never holds one this long
_STALE_S = 24 * 3600


@dataclass(frozen=True)
class StagedFile:
    """A file queued for upload: where it was (``original``) and the copy to read (``staged``).

    ``staged`` is None when no copy could be made (the file was already gone); ``error`` says why.
    """

    original: str
    staged: str | None
    error: str = ""


def stage(uri: str) -> StagedFile:
    """Take the copy of ``uri`` that its queued upload will read."""
    try:
        fs, path = filesystem(uri)
        folder, name = path.rstrip("/").rsplit("/", 1)
        staged = f"{folder}/{STAGING_DIR}/{uuid.uuid4().hex}/{name}"
        fs.makedirs(staged.rsplit("/", 1)[0], exist_ok=True)
        if isinstance(fs, LocalFileSystem):
            try:
                os.link(path, staged)  # no bytes copied: the training thread pays nothing
            except OSError:
                shutil.copy2(path, staged)
            return StagedFile(uri, staged)
        fs.copy(path, staged)
        return StagedFile(uri, fs.unstrip_protocol(staged))
    except Exception as exc:  # the upload is reported as failed; training goes on
        log.warning("cannot queue %s for upload to MLflow: %s", uri, exc)
        return StagedFile(uri, None, f"cannot stage it for upload: {exc}")


@contextlib.contextmanager
def local_file(item: StagedFile) -> Iterator[str]:
    """A local path to upload ``item`` from; the stage is removed afterwards."""
    if item.staged is None:
        raise FileNotFoundError(item.error)
    fs, path = filesystem(item.staged)
    try:
        if isinstance(fs, LocalFileSystem):
            yield path
        else:
            with tempfile.TemporaryDirectory(prefix="candleray-upload-") as tmp:
                local = os.path.join(tmp, path.rsplit("/", 1)[-1])
                fs.get(path, local)
                yield local
    finally:
        with contextlib.suppress(OSError):
            fs.rm(path.rsplit("/", 1)[0], recursive=True)


def remove_stale(checkpoint_uri: str) -> None:
    """Remove stages that a writer which died with its actor left behind."""
    try:
        fs, root = filesystem(f"{checkpoint_uri.rstrip('/')}/{STAGING_DIR}")
        if not fs.exists(root):
            return
        for stage_dir in fs.ls(root, detail=False):
            files = fs.find(stage_dir)
            newest = max((fs.modified(f).timestamp() for f in files), default=0.0)
            if time.time() - newest > _STALE_S:
                fs.rm(stage_dir, recursive=True)
    except Exception as exc:  # housekeeping only
        log.warning("could not clean %s/%s: %s", checkpoint_uri, STAGING_DIR, exc)
