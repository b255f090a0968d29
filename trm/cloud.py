"""Cloud helpers: a GPU cost model and storage preflight / dataset staging.

Cost model
    ``DEFAULT_PRICES`` holds USD per *instance*-hour (us-east-1, order of
    magnitude only: spot prices move hourly and differ per zone). Override them
    with a JSON or YAML file through ``load_price_table(path)``. ``CostMeter``
    accumulates wall seconds x GPUs across restarts and keeps its state as a
    plain dict so it can ride along in a training checkpoint.

Storage
    ``check_storage(uri)`` proves, before any GPU is paid for, that a local
    path or ``s3://bucket/prefix`` is writable, and turns the usual failures
    (missing bucket, rejected credentials, endpoint that does not answer) into
    one ``StorageError`` with a readable message within about ten seconds.
    ``upload_dir`` / ``download_dir`` stage a dataset once in S3 and cache it
    per node, keyed by its ``meta.json``.

Run ``python -m trm.cloud [PRICES.json|yaml]`` to print the cost of the
paper's ARC run (4 H100 for 3 days).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import shutil
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "DEFAULT_PRICES",
    "MARKETS",
    "CostMeter",
    "PriceTableError",
    "RunLimits",
    "StorageError",
    "check_storage",
    "download_dir",
    "estimate_cost",
    "gpu_hours",
    "load_price_table",
    "paper_arc_run_cost",
    "read_json",
    "upload_dir",
    "write_json",
]

# --------------------------------------------------------------------------
# Cost model
# --------------------------------------------------------------------------

MARKETS = ("on_demand", "spot")

# USD per instance-hour. DEFAULTS, not quotes: published us-east-1 on-demand
# list prices (p5 after the mid-2025 price cut) and spot at roughly a third of
# on-demand. Override with load_price_table("prices.json") for real numbers.
DEFAULT_PRICES: dict[str, dict[str, float]] = {
    "p5.4xlarge": {"gpus": 1, "on_demand": 6.88, "spot": 2.29},  # 1 x H100 80GB
    "p5.48xlarge": {"gpus": 8, "on_demand": 55.04, "spot": 18.35},  # 8 x H100 80GB
    "m6i.2xlarge": {"gpus": 0, "on_demand": 0.384, "spot": 0.15},  # CPU head node
}

_PRICE_FIELDS = ("gpus", *MARKETS)


class PriceTableError(ValueError):
    """A price override file is missing, unreadable or malformed."""


def _normalize_market(market: str) -> str:
    m = market.strip().lower().replace("-", "_")
    if m == "ondemand":
        m = "on_demand"
    if m not in MARKETS:
        raise ValueError(f"market must be one of {MARKETS}, got {market!r}")
    return m


def load_price_table(path: str | os.PathLike[str] | None = None) -> dict[str, dict[str, float]]:
    """Return DEFAULT_PRICES, updated from a JSON/YAML file if ``path`` is given.

    The file maps instance type -> {"gpus": int, "on_demand": $/h, "spot": $/h}.
    Fields may be partial for a known instance type (e.g. only a fresh spot
    price); a new instance type needs all three.
    """
    table = {k: dict(v) for k, v in DEFAULT_PRICES.items()}
    if path is None:
        return table
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as e:
        raise PriceTableError(f"cannot read price file {p}: {e}") from e
    try:
        if p.suffix.lower() in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except Exception as e:  # json.JSONDecodeError / yaml.YAMLError
        raise PriceTableError(f"cannot parse price file {p}: {e}") from e
    if not isinstance(data, dict):
        raise PriceTableError(
            f"{p}: expected a mapping of instance type -> {{gpus, on_demand, spot}}, "
            f"got {type(data).__name__}"
        )
    for itype, entry in data.items():
        where = f"{p}: {itype!r}"
        if not isinstance(entry, dict):
            raise PriceTableError(
                f"{where}: expected a mapping with keys {list(_PRICE_FIELDS)}, "
                f"got {type(entry).__name__}"
            )
        merged = dict(table.get(itype, {}))
        for key, value in entry.items():
            if key not in _PRICE_FIELDS:
                raise PriceTableError(
                    f"{where}: unknown key {key!r}; expected one of {list(_PRICE_FIELDS)} "
                    "(prices in USD per instance-hour)"
                )
            if key == "gpus":
                if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                    raise PriceTableError(f"{where}.gpus: expected an integer >= 0, got {value!r}")
            elif (
                isinstance(value, bool)
                or not isinstance(value, (int, float))
                or not math.isfinite(value)
                or value < 0
            ):
                raise PriceTableError(
                    f"{where}.{key}: expected a number >= 0 (USD per instance-hour), got {value!r}"
                )
            merged[key] = value
        missing = [k for k in _PRICE_FIELDS if k not in merged]
        if missing:
            raise PriceTableError(
                f"{where}: new instance type is missing {missing}; "
                f"expected all of {list(_PRICE_FIELDS)}"
            )
        table[itype] = merged
    return table


def gpu_hours(num_gpus: float, seconds: float) -> float:
    """GPU-hours used by ``num_gpus`` GPUs busy for ``seconds`` wall seconds."""
    return num_gpus * seconds / 3600.0


def _instance_rate(
    gpus: int, instance_type: str, market: str, prices: Mapping[str, Mapping[str, float]] | None
) -> float:
    """USD per wall-hour for enough instances of ``instance_type`` to hold ``gpus``."""
    table = prices if prices is not None else DEFAULT_PRICES
    if instance_type not in table:
        raise KeyError(f"no price for instance type {instance_type!r}; known: {sorted(table)}")
    entry = table[instance_type]
    per_instance = int(entry["gpus"])
    # Whole instances are billed: 4 GPUs on p5.48xlarge pay for all 8.
    instances = 1 if per_instance == 0 else max(1, math.ceil(gpus / per_instance))
    return instances * float(entry[_normalize_market(market)])


def estimate_cost(
    gpus: int,
    hours: float,
    instance_type: str = "p5.4xlarge",
    market: str = "spot",
    prices: Mapping[str, Mapping[str, float]] | None = None,
) -> float:
    """Dollars for ``gpus`` GPUs held ``hours`` wall hours on ``instance_type``."""
    return _instance_rate(gpus, instance_type, market, prices) * hours


class CostMeter:
    """Accumulates GPU wall time and dollars across restarts.

    Call ``metrics()`` whenever you report; put ``state_dict()`` in the
    checkpoint and pass it back as ``state=`` after a restart. Time between a
    preemption and the restart is not seen, so the figure is a lower bound.
    Dollars accumulate per segment, so a run resumed on another instance type
    or market keeps the price of what it already used.
    """

    def __init__(
        self,
        num_gpus: int,
        instance_type: str = "p5.4xlarge",
        market: str = "spot",
        prices: Mapping[str, Mapping[str, float]] | None = None,
        state: Mapping[str, Any] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.num_gpus = num_gpus
        self.instance_type = instance_type
        self.market = _normalize_market(market)
        self._usd_per_second = _instance_rate(num_gpus, instance_type, self.market, prices) / 3600.0
        self._clock = clock
        self.gpu_seconds = 0.0
        self.usd = 0.0
        self.restarts = 0
        if state is not None:
            self.load_state_dict(state)
        self._last = clock()

    def _advance(self) -> None:
        now = self._clock()
        dt = max(0.0, now - self._last)
        self._last = now
        self.gpu_seconds += dt * self.num_gpus
        self.usd += dt * self._usd_per_second

    def metrics(self) -> dict[str, float]:
        """``{"cost/gpu_hours", "cost/usd_estimate"}`` up to now."""
        self._advance()
        return {"cost/gpu_hours": self.gpu_seconds / 3600.0, "cost/usd_estimate": self.usd}

    def state_dict(self) -> dict[str, Any]:
        self._advance()
        return {
            "gpu_seconds": self.gpu_seconds,
            "usd": self.usd,
            "restarts": self.restarts,
            "instance_type": self.instance_type,
            "market": self.market,
            "num_gpus": self.num_gpus,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.gpu_seconds = float(state["gpu_seconds"])
        self.usd = float(state["usd"])
        self.restarts = int(state.get("restarts", 0)) + 1
        self._last = self._clock()


STOP_REASONS = ("deadline", "gpu_budget")


@dataclass
class RunLimits:
    """When a long run stops by itself, and what its GPUs cost.

    Rank 0 of the trainer checks these at every log step; the run then writes
    a checkpoint and ends cleanly, so a later ``--resume`` with a later
    deadline or a bigger budget continues it. GPU-hours count the time the
    workers ran, across restarts (the meter rides in the checkpoint), not the
    time a preempted run waited for nodes.
    """

    deadline: float | None = None  # unix seconds
    gpu_hours: float | None = None  # budget, restarts included
    gpus: int = 0  # GPUs the run holds: workers x GPUs per worker
    instance_type: str = "p5.4xlarge"
    market: str = "spot"
    prices: dict[str, dict[str, float]] | None = None

    def __post_init__(self) -> None:
        if self.gpu_hours is not None and self.gpu_hours <= 0:
            raise ValueError(f"GPU-hour budget {self.gpu_hours}: expected a number > 0")
        if self.gpu_hours is not None and self.gpus <= 0:
            raise ValueError("a GPU-hour budget needs GPUs: set --gpus-per-worker > 0")
        if self.gpus > 0:
            _instance_rate(self.gpus, self.instance_type, self.market, self.prices)  # unknown type/market: fail now

    def meter(self, state: Mapping[str, Any] | None = None) -> CostMeter | None:
        if self.gpus <= 0:
            return None
        return CostMeter(self.gpus, self.instance_type, self.market, self.prices, state)

    def reached(self, meter: CostMeter | None, now: float | None = None) -> str | None:
        """"deadline", "gpu_budget" or None."""
        if self.deadline is not None and (now if now is not None else time.time()) >= self.deadline:
            return "deadline"
        if self.gpu_hours is not None and meter is not None and meter.metrics()["cost/gpu_hours"] >= self.gpu_hours:
            return "gpu_budget"
        return None


def paper_arc_run_cost(prices: Mapping[str, Mapping[str, float]] | None = None) -> dict[str, float]:
    """Print and return the cost of the paper's ARC run: 4 H100 x 3 days."""
    table = prices if prices is not None else DEFAULT_PRICES
    gpus, hours = 4, 72.0
    rows = {
        f"{itype} {market}": estimate_cost(gpus, hours, itype, market, table)
        for itype in ("p5.4xlarge", "p5.48xlarge")
        for market in MARKETS
    }
    head = estimate_cost(0, hours, "m6i.2xlarge", "on_demand", table)
    print(f"Paper ARC run: {gpus} x H100 for {hours:.0f} h = {gpu_hours(gpus, hours * 3600):.0f} GPU-hours")
    for name, usd in rows.items():
        itype = name.split()[0]
        per = int(table[itype]["gpus"])
        n = math.ceil(gpus / per)
        idle = f", {n * per - gpus} GPUs idle" if n * per > gpus else ""
        print(f"  {n} x {name:<22} ${usd:>9,.2f}{idle}")
    print(f"  + on-demand m6i.2xlarge head ${head:,.2f}")
    spot, od = rows["p5.4xlarge spot"], rows["p5.4xlarge on_demand"]
    print(f"  spot saves ${od - spot:,.2f} ({1 - spot / od:.0%}) on 4 x p5.4xlarge; "
          "add restarts lost to preemption (about one checkpoint interval each).")
    return {**rows, "head m6i.2xlarge on_demand": head}


# --------------------------------------------------------------------------
# Storage
# --------------------------------------------------------------------------


class StorageError(RuntimeError):
    """Storage URI is unusable; the message says why and what to check."""


def _is_s3(uri: str) -> bool:
    return uri.startswith("s3://")


def _split_s3(uri: str) -> tuple[str, str]:
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
    if not _is_s3(uri):
        path = _local_path(uri)
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

    bucket, prefix = _split_s3(uri)
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
            f"{uri}: S3 endpoint {endpoint} does not answer ({e}). "
            "Check AWS_ENDPOINT_URL / network access."
        ) from e
    except ClientError as e:
        code = str(e.response.get("Error", {}).get("Code", ""))
        status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if code == "NoSuchBucket":
            why = f"bucket {bucket!r} does not exist (at {endpoint}); create it or fix the name"
        elif code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken",
                      "ExpiredToken", "TokenRefreshRequired"):
            why = f"credentials were rejected ({code}); check AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY/AWS_PROFILE"
        elif code == "AccessDenied":
            why = (f"access denied; the credentials/instance profile need "
                   f"s3:PutObject and s3:DeleteObject on {bucket}/{prefix}*")
        elif code.isdigit():  # bare HTTP status, no S3 error document
            why = (f"{endpoint} answered HTTP {status} without an S3 error code; "
                   "is it really an S3 endpoint? (check AWS_ENDPOINT_URL)")
        else:
            why = f"S3 error {code or status}: {e}"
        raise StorageError(f"{uri}: {why}") from e
    except BotoCoreError as e:
        raise StorageError(f"{uri}: S3 check failed at {endpoint}: {e}") from e


# --- dataset staging ------------------------------------------------------

META = "meta.json"


def _fs_and_path(uri: str) -> tuple[Any, str]:
    """pyarrow filesystem and path for a local path or an s3:// URI.

    ``FileSystem.from_uri`` honours ``AWS_ENDPOINT_URL`` and the usual AWS
    credential chain (same as Ray's ``storage_path``).
    """
    import pyarrow.fs as pafs

    if _is_s3(uri):
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
        raise FileNotFoundError(f"{src} is not a directory")
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
    tmp = path if _is_s3(uri) else f"{parent}/.{path.rsplit('/', 1)[1]}.tmp"
    with fs.open_output_stream(tmp) as f:
        f.write(json.dumps(obj, indent=2, default=str).encode())
    if tmp != path:
        fs.move(tmp, path)


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    # Several Train workers on one node download the same dataset: one does
    # the work, the others wait and then find the cache filled.
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


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

    if not _is_s3(uri):
        return _local_path(uri)
    bucket, prefix = _split_s3(uri)
    if local_dir is not None:
        dest = Path(local_dir).expanduser().resolve()
    else:
        base = Path(cache_dir).expanduser() if cache_dir is not None else _default_cache_dir()
        dest = (base / bucket / prefix).resolve()
    fs, root = _fs_and_path(uri)
    root = root.rstrip("/")
    if fs.get_file_info(root).type != pafs.FileType.Directory:
        raise FileNotFoundError(f"{uri} does not exist or is not a directory")
    with _file_lock(dest.parent / f".{dest.name}.lock"):
        remote_meta = _read_bytes(fs, f"{root}/{META}")
        local_meta = (dest / META).read_bytes() if (dest / META).is_file() else None
        if remote_meta is not None and remote_meta == local_meta:
            return dest
        tmp = dest.parent / f".{dest.name}.tmp-{uuid.uuid4().hex}"
        try:
            pafs.copy_files(root, str(tmp), source_filesystem=fs,
                            destination_filesystem=pafs.LocalFileSystem())
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


if __name__ == "__main__":
    paper_arc_run_cost(load_price_table(sys.argv[1] if len(sys.argv) > 1 else None))
