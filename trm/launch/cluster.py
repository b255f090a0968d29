"""Connecting to Ray (a local instance by default, a cluster with --address), what a run needs of
it, and `preflight`: every check a single run, long run or sweep makes before anything starts."""

from __future__ import annotations

import logging
import math
import os
import socket
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urlparse

from trm.errors import TrmError

if TYPE_CHECKING:
    from trm.config import Config, DataConfig

log = logging.getLogger(__name__)

# Each Tune trial is a small driver that builds a TorchTrainer; it asks for a sliver of
# this custom resource instead of a CPU (Tune refuses {"cpu": 0} alone). The cluster
# YAML gives the head node the same resource.
DRIVER_RESOURCE = "TRAIN_DRIVER"


class RayConnectError(TrmError, RuntimeError):
    """Nothing answers at --address."""


@dataclass(frozen=True)
class WorkerSpec:
    """The Ray Train workers of one run (or one trial) and what each of them holds."""

    workers: int = 1
    gpus_per_worker: float = 0
    cpus_per_worker: float = 1

    @property
    def cpus(self) -> float:
        return self.workers * self.cpus_per_worker

    @property
    def gpus(self) -> float:
        return self.workers * self.gpus_per_worker

    @property
    def billed_gpus(self) -> int:
        """A fraction of a GPU bills a whole one."""
        return math.ceil(self.gpus)

    def describe(self, workers_flag: str = "--workers") -> str:
        """The flags that asked for this, for messages."""
        return (
            f"{workers_flag} {self.workers} x (--cpus-per-worker {self.cpus_per_worker:g}, "
            f"--gpus-per-worker {self.gpus_per_worker:g})"
        )


def _check_answers(address: str, timeout: float = 5.0) -> None:
    if address == "auto":
        return
    parsed = urlparse(address if "://" in address else f"ray://{address}")
    host, port = parsed.hostname, parsed.port
    if not host or not port:
        raise RayConnectError(f"--address {address}: expected host:port, ray://host:10001 or http://host:8265")
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as e:
        raise RayConnectError(
            f"--address {address}: nothing answers at {host}:{port} ({e}); "
            f"is the cluster up (`ray up cluster/gpu.yaml`)?"
        ) from e


def connect_ray(address: str | None, num_cpus: int | None = None, quiet: bool = True) -> None:
    """ray.init once: the given cluster, $RAY_ADDRESS, or a new local instance with the dashboard
    (Train V2 needs the State API to release a stopped trial's resources). `quiet`: Ray's lines
    that are not errors for the user stay off the terminal (`trm.launch.console`)."""
    if quiet:
        from trm.launch.console import drop_ray_noise

        drop_ray_noise()  # before `import ray` where it is still to come
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        _check_answers(address)
        ray.init(address=address, log_to_driver=True)
        return
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    global OTHERS_AT_START
    if other := other_ray_instances():
        OTHERS_AT_START = other
        # both see every CPU of this host: trials of this one then wait for workers that the other's hold
        log.warning(
            "another Ray instance runs on this host (%s): this run starts its own, and the two compete for "
            "its %d CPUs (trials may wait for workers); `ray stop` it, or join it with --address auto",
            other,
            os.cpu_count() or 0,
        )
    ray.init(
        num_cpus=num_cpus,
        resources={DRIVER_RESOURCE: 1000},
        include_dashboard=True,
        dashboard_host="127.0.0.1",
        configure_logging=False,
    )
    log.info("started local Ray: %s", ray.cluster_resources())


OTHERS_AT_START = ""  # the other Ray instances this process saw on its host when it started its own


def other_ray_instances() -> str:
    """The raylets running on this host before this process starts its own ("raylet pid N since HH:MM"), or ""."""
    import time

    import psutil

    found = []
    for p in psutil.process_iter(["name", "pid", "create_time"]):
        if p.info["name"] == "raylet":
            found.append(
                f"raylet pid {p.info['pid']} since {time.strftime('%H:%M', time.localtime(p.info['create_time']))}"
            )
    return ", ".join(found)


def cluster_capacity() -> dict[str, float]:
    import ray

    return ray.cluster_resources()


def is_remote(address: str | None) -> bool:
    return bool(address or os.environ.get("RAY_ADDRESS"))


def check_fits(what: str, spec: WorkerSpec, address: str | None) -> None:
    """On a local Ray, refuse work that can never be scheduled (it would wait forever); a remote
    cluster may autoscale, so there the work waits for nodes instead."""
    cap = cluster_capacity()
    if is_remote(address) or (cap.get("CPU", 0) >= spec.cpus and cap.get("GPU", 0) >= spec.gpus):
        return
    from trm.config import ConfigError

    raise ConfigError(
        f"{what} needs {spec.cpus:g} CPUs and {spec.gpus:g} GPUs; this machine's Ray has "
        f"{cap.get('CPU', 0):g} CPUs and {cap.get('GPU', 0):g} GPUs"
    )


def check_shared(tracking_uri: str | None, storage: str, address: str | None) -> None:
    """On a cluster the training workers run on other nodes: they must reach the tracking server
    and the checkpoint storage from there. A local SQLite file cannot be shared; a local folder
    can only if it is a shared filesystem (NFS), which cannot be checked from here."""
    if not is_remote(address) or tracking_uri is None:  # None: no tracking (`--no-tracking`), nothing to reach
        return
    if tracking_uri.startswith(("sqlite:", "file:")) or "://" not in tracking_uri:
        from trm.tracking import TrackingError

        raise TrackingError(
            f"--tracking-uri {tracking_uri}: on a Ray cluster, rank 0 logs from a GPU node "
            f"and cannot reach a file on this one; start mlflow/serve.sh on the head and pass "
            f"--tracking-uri http://HEAD_PRIVATE_IP:5000 (see cluster/README.md)"
        )
    if "://" not in storage:
        log.warning(
            "--storage %s is a local folder on a Ray cluster: checkpoints written on other nodes "
            "are only found again if it is a shared filesystem; use s3://BUCKET/PREFIX",
            storage,
        )


def check_data(d: DataConfig) -> None:
    """A dataset that will not be generated must already be there, and a local one that is there
    sound (`trm.data.check.check_dataset`): say so now, naming the flag, rather than in every
    worker after Ray has started."""
    if "://" in d.path:
        return
    from pathlib import Path

    from trm.data.check import check_dataset
    from trm.data.dataset import DatasetError

    if (Path(d.path) / "meta.json").is_file():
        check_dataset(d.path)
    elif d.generate == "none":
        raise DatasetError(
            f"--data {d.path}: no dataset there; build one with `trm data ...` (or set "
            f"data.generate=sudoku|maze to generate one)"
        )


def preflight(
    cfg: Config,
    *,
    storage: str,
    tracking_uri: str | None,
    address: str | None,
    spec: WorkerSpec,
    what: str,
    tracking: bool = True,
    quiet: bool = True,
) -> str | None:
    """Everything that can fail on a user's input, cheapest first, before any worker starts: the
    dataset is there (unless generated), the storage is writable, the tracking server answers, Ray
    answers, the workers can reach tracking and storage, and `spec` fits. Then the dataset is
    built or uploaded once (`cfg.data.path` becomes where the workers read it). Returns the
    resolved tracking URI (None without `tracking`). `quiet`: see `connect_ray`."""
    from trm.data.build import stage_dataset
    from trm.storage import check_storage
    from trm.tracking import check_reachable, resolve_uri

    check_data(cfg.data)
    check_storage(storage)
    uri = resolve_uri(tracking_uri) if tracking else None
    if uri is not None:
        check_reachable(uri)
    connect_ray(address, quiet=quiet)
    check_shared(uri, storage, address)
    check_fits(what, spec, address)
    cfg.data.path = stage_dataset(cfg.data, storage)
    return uri
