"""Storage by URI: the one place that opens fsspec filesystems and translates their errors.

Checkpoints (``checkpoint.uri``), the candle cache (``data.cache_dir``) and staged uploads live
under a URI: a local folder, or any fsspec URI (``s3://bucket/prefix``, ``gs://``...). S3 works
out of the box (s3fs is a dependency): the endpoint comes from ``AWS_ENDPOINT_URL`` (MinIO,
Ceph, R2), credentials from the usual AWS chain (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``,
``AWS_PROFILE``, an instance role).

Every failure of the store becomes a ``StorageError`` whose message names the setting, the
URI, what failed and the fix; never a botocore traceback. S3 calls are bounded (connect and
read timeouts, a few attempts), so an unreachable endpoint is an error within seconds, not a
hang.

Writes: ``write_bytes`` replaces a local file atomically (a temporary file, fsync, rename); on
an object store it is one whole-object put, which readers see complete or not at all.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from collections.abc import Iterator
from typing import Any

import fsspec
from fsspec.implementations.local import LocalFileSystem

from pipelines.errors import StorageError

log = logging.getLogger(__name__)

# botocore's own retries; s3fs adds a few of its own for dropped connections. With these a
# refused connection fails in 1-5 s (a closed port: 1.3 s idle, 4.7 s on the loaded 2-core CI
# machine); an endpoint that drops packets within 3 attempts of a 5 s connect timeout.
_S3_CONNECT_TIMEOUT_S = 5
_S3_READ_TIMEOUT_S = 60
_S3_MAX_ATTEMPTS = 3


def is_local(uri: str) -> bool:
    """True for a plain path or a file:// URI."""
    protocol, _ = fsspec.core.split_protocol(uri)
    return protocol in (None, "file", "local")


def _options(uri: str) -> dict[str, Any]:
    protocol, _ = fsspec.core.split_protocol(uri)
    if protocol not in ("s3", "s3a"):
        return {}
    return {
        # a fresh dict per call: botocore rewrites the retries mapping it is given
        "config_kwargs": {
            "connect_timeout": _S3_CONNECT_TIMEOUT_S,
            "read_timeout": _S3_READ_TIMEOUT_S,
            "retries": {"max_attempts": _S3_MAX_ATTEMPTS, "mode": "standard"},
        },
        # other processes (a restarted actor, the CLI) write here: listings are never cached
        "use_listings_cache": False,
        # credentials and endpoint are read from the environment when the store is opened
        "skip_instance_cache": True,
    }


def is_store_error(exc: BaseException) -> bool:
    """OSError (s3fs maps S3's 403/404 to PermissionError/FileNotFoundError), a missing
    filesystem package, or a client library's own error (botocore, aiohttp)."""
    if isinstance(exc, (OSError, ImportError)):
        return True
    module = type(exc).__module__ or ""
    return module.split(".")[0] in ("botocore", "aiobotocore", "aiohttp", "google", "gcsfs")


def _diagnose(exc: BaseException, uri: str) -> tuple[str, str]:
    """(what failed, the fix) for a store error."""
    name = type(exc).__name__
    text = str(exc)
    remote = not is_local(uri)
    endpoint = os.environ.get("AWS_ENDPOINT_URL", "")
    creds = (
        "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE) to a key allowed to "
        "read and write it"
    )
    if isinstance(exc, ImportError):
        return (
            f"the filesystem package for this URI is missing ({text})",
            "install it on every node (s3fs comes with candleray; gcsfs for gs://)",
        )
    if name == "NoCredentialsError" or "Unable to locate credentials" in text:
        return "no credentials were found", creds
    if "Access Denied" in text or "AccessDenied" in text:
        return (
            f"the store knows these credentials but refused them access ({text})",
            "grant that key s3:ListBucket on the bucket and s3:GetObject/PutObject/"
            "DeleteObject on the prefix, or set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
            "(or AWS_PROFILE) to a key that has them",
        )
    if isinstance(exc, PermissionError) or "Forbidden" in text:
        return f"the store refused the credentials ({text})", creds
    if "ConnectionError" in name or "Timeout" in name or "timed out" in text:
        where = f"AWS_ENDPOINT_URL={endpoint}" if endpoint else "the default AWS endpoint"
        return (
            f"the store could not be reached at {where} ({text})",
            "set AWS_ENDPOINT_URL to your store's address (http(s)://host:port for "
            "MinIO/Ceph/R2), or unset it for AWS S3, and check the network",
        )
    if remote and isinstance(exc, FileNotFoundError) and "bucket" in text.lower():
        return (
            f"the bucket does not exist ({text})",
            "create the bucket, or point the setting at an existing one",
        )
    return f"{name}: {text}", "check the URI, its permissions and free space"


def storage_error(exc: BaseException, *, setting: str, uri: str, action: str) -> StorageError:
    what, fix = _diagnose(exc, uri)
    return StorageError(f"{setting}={uri}: {action} failed: {what}. Fix: {fix}.")


@contextlib.contextmanager
def translated(*, setting: str, uri: str, action: str) -> Iterator[None]:
    """Run a block of storage calls; a store failure leaves it as a ``StorageError``."""
    try:
        yield
    except StorageError:
        raise
    except Exception as exc:
        if not is_store_error(exc):
            raise
        raise storage_error(exc, setting=setting, uri=uri, action=action) from exc


def filesystem(uri: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """(filesystem, path) of ``uri``, with the bounded S3 options; nothing is checked."""
    return fsspec.core.url_to_fs(uri, **_options(uri))


def open_store(uri: str, *, setting: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """(filesystem, root path) of ``uri``, checked to be usable: a local folder is created;
    an S3 bucket must exist and let these credentials in. StorageError if not."""
    with translated(setting=setting, uri=uri, action="opening the store"):
        fs, root = filesystem(uri)
        if isinstance(fs, LocalFileSystem):
            fs.makedirs(root, exist_ok=True)
        elif "s3" in _protocols(fs):
            bucket = root.split("/", 1)[0]
            try:
                fs.call_s3("head_bucket", Bucket=bucket)
            except FileNotFoundError as exc:  # HEAD has no body: s3fs says only "Not Found"
                raise FileNotFoundError(f"no bucket named {bucket!r}") from exc
            except PermissionError as exc:  # "Forbidden" alone: a listing's answer says why
                raise _refusal(fs, bucket) or exc from exc
        else:
            fs.makedirs(root, exist_ok=True)
    return fs, root


def _refusal(fs: fsspec.AbstractFileSystem, bucket: str) -> PermissionError | None:
    """S3's reason for a refused HEAD (a key it does not know, a wrong secret, a key without
    access to the bucket), from the body of a one-key listing; None when that says nothing."""
    try:
        fs.call_s3("list_objects_v2", Bucket=bucket, MaxKeys=1)
    except PermissionError as exc:
        return PermissionError(f"{bucket!r}: {exc}")
    except Exception:  # only a better message was sought: keep the first error
        return None
    return None


def _protocols(fs: fsspec.AbstractFileSystem) -> tuple[str, ...]:
    p = fs.protocol
    return tuple(p) if isinstance(p, (tuple, list)) else (p,)


def write_bytes(fs: fsspec.AbstractFileSystem, path: str, data: bytes) -> None:
    """Replace ``path`` with ``data`` whole: atomically on a local disk, one put elsewhere."""
    if isinstance(fs, LocalFileSystem):
        folder = os.path.dirname(path)
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())  # the bytes are on disk before the name points at them
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
    else:
        fs.pipe_file(path, data)  # an object appears whole or not at all
