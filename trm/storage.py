"""Where runs and datasets live: a local folder or an ``s3://bucket/prefix``.

``check_storage(uri)`` proves, before any GPU is paid for, that the place is writable, and turns
the usual failures (missing bucket, rejected credentials, endpoint that does not answer) into one
``StorageError`` with a readable message within about ten seconds. ``upload_dir`` /
``download_dir`` stage a dataset once in S3 and cache it per node, keyed by its ``meta.json``
(a ``filelock`` lets one worker per node download while the others wait). ``read_json`` /
``write_json`` hold small records (a long run's manifest) in either place; ``resolve`` and
``join`` spell storage locations the same way everywhere.

S3 is reached with boto3 (checks) and pyarrow (copies) through the standard AWS environment,
including ``AWS_ENDPOINT_URL`` for S3-compatible servers.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

from trm.errors import TrmError

__all__ = [
    "StorageError",
    "StorageNotFound",
    "check_local_folder",
    "check_storage",
    "download_dir",
    "is_s3",
    "join",
    "read_json",
    "resolve",
    "upload_dir",
    "write_json",
]


class StorageError(TrmError, RuntimeError):
    """Storage URI is unusable; the message says why and what to check."""


def is_s3(uri: str) -> bool:
    return uri.startswith("s3://")


class StorageNotFound(StorageError, FileNotFoundError):
    """A dataset folder or prefix that is not there."""


def resolve(uri: str) -> str:
    """A storage location as every process must see it: a URI as given, a local folder absolute
    (Ray workers run in other working folders)."""
    return uri if "://" in uri else str(Path(uri).expanduser().resolve())


def join(uri: str, *parts: str) -> str:
    """``uri/part/...`` for a folder or a URI (no Path: it would fold ``s3://`` to ``s3:/``)."""
    return "/".join([uri.rstrip("/"), *(p.strip("/") for p in parts)])


def split_s3(uri: str) -> tuple[str, str]:
    """s3://BUCKET/PREFIX -> (BUCKET, PREFIX without slashes at its ends)."""
    rest = uri[len("s3://") :].split("?", 1)[0]
    bucket, _, prefix = rest.partition("/")
    if not bucket:
        raise StorageError(f"{uri!r}: no bucket name; expected s3://BUCKET/PREFIX")
    return bucket, prefix.strip("/")


def _local_path(uri: str) -> Path:
    if uri.startswith("file://"):
        uri = uri[len("file://") :]
    elif "://" in uri:
        raise StorageError(f"{uri!r}: unsupported scheme; expected a local path or s3://BUCKET/PREFIX")
    return Path(uri).expanduser().resolve()


def check_storage(uri: str, timeout_s: float = 3.0) -> None:
    """Write and delete a probe file under ``uri``; raise StorageError if that fails.

    ``uri`` is a local path (created if missing) or ``s3://bucket/prefix``.
    For S3 the standard AWS environment is used, including ``AWS_ENDPOINT_URL``
    for S3-compatible stores. ``timeout_s`` is botocore's connect and read
    timeout for a single attempt: a refused connection fails at once, a hung
    endpoint in about 2.5 x ``timeout_s`` (botocore waits once for the
    100-continue and once for the reply), i.e. under ten seconds by default.
    """
    probe = f".trm-storage-probe-{uuid.uuid4().hex}"
    if not is_s3(uri):
        path = _local_path(uri)
        check_local_folder(path, "--storage")  # a file or a read-only disk, said as such
        try:
            path.mkdir(parents=True, exist_ok=True)
            f = path / probe
            f.write_bytes(b"ok")
            f.unlink()
        except OSError as e:
            raise StorageError(f"local storage {str(path)!r} is not writable: {e}") from e
        return

    import boto3
    from botocore.config import Config
    from botocore.exceptions import (
        BotoCoreError,
        ClientError,
        ConnectTimeoutError,
        EndpointConnectionError,
        NoCredentialsError,
        ReadTimeoutError,
    )

    bucket, prefix = split_s3(uri)
    key = f"{prefix}/{probe}" if prefix else probe
    # One attempt, short timeouts: botocore's defaults (several retries, 60 s
    # timeouts) hang for minutes on a wrong endpoint before saying anything.
    # A preflight should fail fast; the trainers' own clients do the retrying.
    cfg = Config(
        connect_timeout=timeout_s,
        read_timeout=timeout_s,
        retries={"max_attempts": 1, "mode": "standard"},
    )
    client = boto3.client("s3", config=cfg)
    endpoint = client.meta.endpoint_url
    try:
        client.put_object(Bucket=bucket, Key=key, Body=b"ok")
        client.delete_object(Bucket=bucket, Key=key)
    except NoCredentialsError as e:
        raise StorageError(
            f"{uri}: no AWS credentials found. On EC2 attach an instance profile; "
            "elsewhere set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_PROFILE."
        ) from e
    except (EndpointConnectionError, ConnectTimeoutError, ReadTimeoutError) as e:
        raise StorageError(
            f"{uri}: S3 endpoint {endpoint} does not answer ({e}). Check AWS_ENDPOINT_URL / network access."
        ) from e
    except ClientError as e:
        code = str(e.response.get("Error", {}).get("Code", ""))
        status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if code == "NoSuchBucket":
            why = f"bucket {bucket!r} does not exist (at {endpoint}); create it or fix the name"
        elif code in (
            "InvalidAccessKeyId",
            "SignatureDoesNotMatch",
            "InvalidToken",
            "ExpiredToken",
            "TokenRefreshRequired",
        ):
            why = f"credentials were rejected ({code}); check AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY/AWS_PROFILE"
        elif code == "AccessDenied":
            why = (
                f"access denied; the credentials/instance profile need "
                f"s3:PutObject and s3:DeleteObject on {bucket}/{prefix}*"
            )
        elif code.isdigit():  # bare HTTP status, no S3 error document
            why = (
                f"{endpoint} answered HTTP {status} without an S3 error code; "
                "is it really an S3 endpoint? (check AWS_ENDPOINT_URL)"
            )
        else:
            why = f"S3 error {code or status}: {e}"
        raise StorageError(f"{uri}: {why}") from e
    except BotoCoreError as e:
        raise StorageError(f"{uri}: S3 check failed at {endpoint}: {e}") from e


def check_local_folder(path: str | os.PathLike[str], flag: str) -> Path:
    """A local folder a run will write into (created later), checked without writing anything: not
    a file, and the folder (or, when it does not exist yet, its nearest existing parent) a folder
    this process may write into (a read-only disk included). Returns it absolute."""
    folder = Path(path).expanduser().absolute()
    if folder.exists() and not folder.is_dir():
        raise StorageError(f"{flag} {path}: is a file; expected a folder (a new or existing run folder)")
    existing = folder
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise StorageError(f"{flag} {path}: {existing} is a file, so the folder cannot be created")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise StorageError(
            f"{flag} {path}: {existing} is not writable (read-only disk or permissions); "
            f"expected a folder this user can write"
        )
    return folder


# --- datasets and small records -------------------------------------------

META = "meta.json"


def _fs_and_path(uri: str) -> tuple[Any, str]:
    """pyarrow filesystem and path for a local path or an s3:// URI.

    ``FileSystem.from_uri`` honours ``AWS_ENDPOINT_URL`` and the usual AWS
    credential chain (same as Ray's ``storage_path``).
    """
    import pyarrow.fs as pafs

    if is_s3(uri):
        return pafs.FileSystem.from_uri(uri)
    return pafs.LocalFileSystem(), str(_local_path(uri))


def _read_bytes(fs: Any, path: str) -> bytes | None:
    import pyarrow.fs as pafs

    if fs.get_file_info(path).type != pafs.FileType.File:
        return None
    with fs.open_input_stream(path) as f:
        return f.read()


def upload_dir(local_dir: str | os.PathLike[str], uri: str, overwrite: bool = False) -> bool:
    """Copy ``local_dir`` to ``uri`` unless an identical ``meta.json`` is there.

    ``meta.json`` is written last, so its presence marks a complete upload.
    Returns True if files were copied.
    """
    import pyarrow.fs as pafs

    src = Path(local_dir)
    if not src.is_dir():
        raise StorageNotFound(f"{src} is not a directory")
    fs, root = _fs_and_path(uri)
    root = root.rstrip("/")
    local_meta = (src / META).read_bytes() if (src / META).is_file() else None
    if not overwrite and local_meta is not None and _read_bytes(fs, f"{root}/{META}") == local_meta:
        return False
    local_fs = pafs.LocalFileSystem()
    files = sorted(p for p in src.rglob("*") if p.is_file())
    files.sort(key=lambda p: p.relative_to(src).as_posix() == META)  # meta.json last
    for f in files:
        rel = f.relative_to(src).as_posix()
        if "/" in rel:
            fs.create_dir(f"{root}/{rel.rsplit('/', 1)[0]}", recursive=True)
        dst = f"{root}/{rel}"
        pafs.copy_files(str(f), dst, source_filesystem=local_fs, destination_filesystem=fs)
        # copy_files has been seen to return normally after a failed
        # multipart completion; check that the object really landed.
        if fs.get_file_info(dst).size != f.stat().st_size:
            raise OSError(f"upload of {f} to {uri}/{rel} did not complete")
    return True


def read_json(uri: str) -> dict | None:
    """A small JSON file at a local path or s3:// URI; None when it is not there."""
    fs, path = _fs_and_path(uri)
    data = _read_bytes(fs, path)
    return None if data is None else json.loads(data)


def write_json(uri: str, obj: Any) -> None:
    """Write a small JSON file to a local path or s3:// URI (S3 puts are atomic; locally, rename)."""
    fs, path = _fs_and_path(uri)
    parent = path.rsplit("/", 1)[0]
    fs.create_dir(parent, recursive=True)
    tmp = path if is_s3(uri) else f"{parent}/.{path.rsplit('/', 1)[1]}.tmp"
    with fs.open_output_stream(tmp) as f:
        f.write(json.dumps(obj, indent=2, default=str).encode())
    if tmp != path:
        fs.move(tmp, path)


def _default_cache_dir() -> Path:
    return Path(os.environ.get("TRM_CACHE_DIR", "~/.cache/trm")).expanduser()


def download_dir(
    uri: str,
    local_dir: str | os.PathLike[str] | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
) -> Path:
    """Return a local copy of the directory at ``uri``, downloading only if needed.

    A local ``uri`` is returned as is. Otherwise the copy goes to ``local_dir``
    or, if that is None, to ``cache_dir/<bucket>/<prefix>`` (``cache_dir``
    defaults to ``$TRM_CACHE_DIR`` or ``~/.cache/trm``). The download is
    skipped when the local ``meta.json`` equals the remote one; a directory
    without ``meta.json`` is downloaded every time. The copy is swapped in
    atomically, so a reader never sees half a dataset.
    """
    import pyarrow.fs as pafs
    from filelock import FileLock

    if not is_s3(uri):
        return _local_path(uri)
    bucket, prefix = split_s3(uri)
    if local_dir is not None:
        dest = Path(local_dir).expanduser().resolve()
    else:
        base = Path(cache_dir).expanduser() if cache_dir is not None else _default_cache_dir()
        dest = (base / bucket / prefix).resolve()
    fs, root = _fs_and_path(uri)
    root = root.rstrip("/")
    if fs.get_file_info(root).type != pafs.FileType.Directory:
        raise StorageNotFound(f"{uri} does not exist or is not a directory")
    # Several Train workers on one node download the same dataset: one does the work, the
    # others wait and then find the cache filled.
    dest.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(dest.parent / f".{dest.name}.lock"):
        remote_meta = _read_bytes(fs, f"{root}/{META}")
        local_meta = (dest / META).read_bytes() if (dest / META).is_file() else None
        if remote_meta is not None and remote_meta == local_meta:
            return dest
        tmp = dest.parent / f".{dest.name}.tmp-{uuid.uuid4().hex}"
        try:
            pafs.copy_files(root, str(tmp), source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem())
            tmp.mkdir(parents=True, exist_ok=True)  # an empty remote dir copies nothing
            for info in fs.get_file_info(pafs.FileSelector(root, recursive=True)):
                if info.type == pafs.FileType.File:
                    got = tmp / info.path[len(root) + 1 :]
                    if not got.is_file() or got.stat().st_size != info.size:
                        raise OSError(f"download of {uri} is incomplete at {info.path}")
            old = dest.parent / f".{dest.name}.old-{uuid.uuid4().hex}"
            if dest.exists():
                dest.rename(old)
            tmp.rename(dest)
            shutil.rmtree(old, ignore_errors=True)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return dest
