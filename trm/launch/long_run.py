"""Long runs: one multi-day training as a Ray job that survives spot preemption and driver loss.

What survives what:
  a worker or node lost   Ray Train restarts the worker group from the latest checkpoint in storage
                          (FailureConfig: spot preemptions without limit, other errors --max-failures)
  the driver lost         run the same command with --resume: the run's manifest, next to its
                          checkpoints, holds the config, limits and MLflow run id, and Ray Train
                          resumes from the latest checkpoint
  MLflow                  one run holds the whole history: the run id rides in the manifest and in
                          every checkpoint, and a resumed run does not log a step twice

The manifest (`STORAGE/NAME/trm_run.json`) is written before the first step, so a driver lost
before the first checkpoint still resumes into its MLflow run. The driver reads the run id from
it rather than from a checkpoint, which for ARC holds a multi-GB puzzle-embedding table.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import shlex
import sys
import time
from dataclasses import asdict, dataclass, fields
from datetime import datetime, timezone
from typing import Any

from trm.cli_common import (
    ArgumentParser,
    add_flags,
    check_max_failures,
    check_worker_wait,
    overrides_from,
    require_positive,
    run_main,
)
from trm.config import Config, ConfigError, apply_overrides, config_from_dict, load_config
from trm.cost import DEFAULT_INSTANCE_TYPE, DEFAULT_MARKET, RunLimits
from trm.launch.cluster import WorkerSpec

log = logging.getLogger(__name__)
MANIFEST = "trm_run.json"
RAY_SNAPSHOT = "checkpoint_manager_snapshot.json"  # Ray Train's record of a run's checkpoints


@dataclass
class LongRunSettings:
    """How a long run is executed. On --resume, a field left as None takes the manifest's value."""

    workers: int | None = None
    gpus_per_worker: float | None = None
    cpus_per_worker: float | None = None
    deadline: float | None = None  # unix seconds
    budget_gpu_hours: float | None = None
    instance_type: str | None = None
    market: str | None = None
    prices: dict | None = None  # instance type -> {"gpus", "on_demand", "spot"}
    max_failures: int | None = None
    worker_wait_minutes: float | None = None
    tracking_uri: str | None = None
    experiment: str | None = None


DEFAULTS = LongRunSettings(
    workers=1,
    gpus_per_worker=0,
    cpus_per_worker=1,
    instance_type=DEFAULT_INSTANCE_TYPE,
    market=DEFAULT_MARKET,
    max_failures=10,
    worker_wait_minutes=-1,  # days on spot: capacity comes back when it does (the ledger counts the restarts)
    experiment="trm-long",
)


def parse_deadline(text: str, now: float | None = None) -> float:
    """'72h', '90m', '3d', '3600s' from now, or an ISO date-time (UTC unless it says otherwise)."""
    now = time.time() if now is None else now
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd])\s*", text)
    if m:
        return now + float(m.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise ConfigError(
            f"--deadline {text!r}: expected a duration (72h, 90m, 3d) or an ISO date-time (2026-11-26T12:00)"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    if when.timestamp() <= now:
        raise ConfigError(f"--deadline {text!r}: that is in the past")
    return when.timestamp()


def run_exists(root: str) -> bool:
    from trm.storage import join, read_json

    return read_json(join(root, MANIFEST)) is not None or read_json(join(root, RAY_SNAPSHOT)) is not None


def run_long(
    name: str,
    storage: str,
    cfg: Config,
    overrides: dict[str, Any],
    given: LongRunSettings,
    resume: bool = False,
    address: str | None = None,
    resume_command: str | None = None,
) -> dict[str, Any]:
    """Start run `name` under `storage` (or, with resume, continue it) and train until it completes
    or a limit stops it. `cfg` is the config of a new run; on resume the manifest's is used, with
    `overrides` on top. Returns the final metrics, the MLflow run id and the last checkpoint.
    The run is held while it runs (`trm.run_lock.hold`: the lock of `trm train` locally, a lease on S3)."""
    import contextlib
    from pathlib import Path

    from trm.launch.cluster import preflight
    from trm.storage import check_storage, join, read_json, resolve

    storage = resolve(storage)
    check_storage(storage)
    root = join(storage, name)
    manifest = read_json(join(root, MANIFEST))
    if run_exists(root) and not resume:
        raise ConfigError(
            f"--name {name}: a run already exists at {root}; pass --resume to continue it, or choose another --name"
        )
    if manifest is not None and resume:
        cfg = apply_overrides(config_from_dict(manifest["config"]), overrides).validate()
        settings = _merge(given, LongRunSettings(**manifest["settings"]))
        log.info("resuming run %s from %s", name, root)
    else:
        if resume:
            log.info("--resume: no run %s at %s yet; starting it", name, root)
        settings = _merge(given, DEFAULTS)
    # DEFAULTS give these a value (a manifest's settings were merged with them before it was written)
    assert settings.workers is not None and settings.gpus_per_worker is not None
    assert settings.cpus_per_worker is not None and settings.instance_type is not None and settings.market is not None
    spec = WorkerSpec(settings.workers, settings.gpus_per_worker, settings.cpus_per_worker)
    limits = RunLimits(
        settings.deadline,
        settings.budget_gpu_hours,
        spec.billed_gpus,
        settings.instance_type,
        settings.market,
        settings.prices,
    )
    if limits.deadline is not None and limits.deadline <= time.time():
        raise ConfigError(f"--deadline: {_when(limits.deadline)} has passed; give a later --deadline to continue")

    uri = preflight(
        cfg, storage=storage, tracking_uri=settings.tracking_uri, address=address, spec=spec, what=spec.describe()
    )
    assert uri is not None  # a long run is always tracked
    settings.tracking_uri = uri
    with contextlib.ExitStack() as held:
        # one writer: a second driver, or `trm train --workers` on this run, is refused (a lock on a local
        # folder, a lease on S3 that lapses when this driver is lost, so --resume can take it over)
        from trm.run_lock import hold

        if "://" not in root:
            Path(root).mkdir(parents=True, exist_ok=True)
        held.enter_context(hold(root, "--name"))
        return _run_held(name, storage, root, cfg, settings, spec, limits, manifest, resume, uri, resume_command)


def _run_held(
    name: str,
    storage: str,
    root: str,
    cfg: Config,
    settings: LongRunSettings,
    spec: WorkerSpec,
    limits: RunLimits,
    manifest: dict[str, Any] | None,
    resume: bool,
    uri: str,
    resume_command: str | None,
) -> dict[str, Any]:
    """`run_long` once everything is checked and the run is held: its MLflow run, manifest and training."""
    # merged with DEFAULTS (`run_long`): these have values
    assert settings.experiment is not None and settings.instance_type is not None and settings.market is not None
    assert settings.max_failures is not None
    import tempfile
    from pathlib import Path

    from trm.launch.single import fit, tag_best
    from trm.launch.worker import WorkerRun, checkpoint_location, make_trainer
    from trm.storage import join, write_json
    from trm.tracking import runs

    driver_starts = int((manifest or {}).get("driver_starts", 0)) + 1
    if manifest is not None and resume:
        tracker = runs.reopen_long_run(uri, manifest["mlflow_run_id"], driver_starts)
    else:
        tracker = runs.start_long_run(
            uri,
            settings.experiment,
            name,
            root,
            cfg,
            workers=spec.workers,
            gpus_per_worker=spec.gpus_per_worker,
            instance_type=settings.instance_type,
            market=settings.market,
        )
    write_json(
        join(root, MANIFEST),
        {
            "name": name,
            "config": cfg.to_dict(),
            "settings": asdict(settings),
            "mlflow_run_id": tracker.run_id,
            "driver_starts": driver_starts,
            "updated": time.time(),
        },
    )
    log.info("run %s: MLflow run %s at %s; checkpoints in %s; %s", name, tracker.run_id, uri, root, _describe(limits))

    trainer = make_trainer(
        WorkerRun(cfg, uri, tracker.run_id, limits),
        name=name,
        storage=storage,
        spec=spec,
        max_failures=settings.max_failures,
        worker_wait_minutes=settings.worker_wait_minutes if settings.worker_wait_minutes is not None else -1,
    )
    with runs.guard(tracker, tag_reason=True):
        result = fit(trainer, settings.max_failures if settings.max_failures is not None else -1, resume_command, root)
    metrics = dict(result.metrics or {})
    reason = metrics.get("stop_reason") or "completed"
    checkpoint = checkpoint_location(storage, result.checkpoint)
    with tempfile.TemporaryDirectory() as d:  # the final weights as an artifact, wherever they are stored
        weights = Path(result.checkpoint.to_directory(d)) / "state.pt" if result.checkpoint is not None else None
        runs.finish_run(tracker, reason=reason, checkpoint=checkpoint, artifact=weights)
    best = tag_best(tracker, storage, result)  # the loop tags it as it goes; here with its full location
    log.info("run %s ended (%s) at step %s", name, reason, metrics.get("step"))
    return {
        "mlflow_run_id": tracker.run_id,
        "end_reason": reason,
        "checkpoint": checkpoint,
        "best_checkpoint": best,
        **metrics,
    }


def _merge(given: LongRunSettings, base: LongRunSettings) -> LongRunSettings:
    return LongRunSettings(
        **{
            f.name: getattr(given, f.name) if getattr(given, f.name) is not None else getattr(base, f.name)
            for f in fields(LongRunSettings)
        }
    )


def _when(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def _describe(limits) -> str:
    parts = [
        f"deadline {_when(limits.deadline)}" if limits.deadline else "no deadline",
        f"budget {limits.gpu_hours:g} GPU-hours" if limits.gpu_hours else "no GPU-hour budget",
    ]
    if limits.gpus:
        parts.append(f"{limits.gpus} GPUs on {limits.instance_type} {limits.market}")
    return ", ".join(parts)


def parser(description: str) -> argparse.ArgumentParser:
    p = ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--name", default="arc-long", help="run name: its folder under --storage and its MLflow run name")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue the run of this name (after losing the driver); starts it if there is none",
    )
    add_flags(p, "storage", storage="runs/long")
    add_flags(p, "config", "set", "data")
    p.add_argument("--workers", type=int, help="DDP workers (default 1)")
    add_flags(p, "gpus_per_worker", "cpus_per_worker")
    p.add_argument("--deadline", help="stop with a checkpoint at this time: 72h, 90m, 3d or 2026-11-26T12:00 (UTC)")
    p.add_argument("--budget-gpu-hours", type=float, help="stop with a checkpoint after this many GPU-hours")
    p.add_argument("--instance-type", help=f"for the cost estimate (default {DEFAULT_INSTANCE_TYPE})")
    p.add_argument("--market", choices=["spot", "on_demand"], help=f"for the cost estimate (default {DEFAULT_MARKET})")
    p.add_argument("--prices", help="JSON/YAML price table overriding the defaults (see trm/cost.py)")
    add_flags(p, "max_failures")  # default: the manifest's on --resume, else DEFAULTS (10)
    add_flags(p, "worker_wait_minutes")  # default: the manifest's on --resume, else DEFAULTS (-1: no bound)
    add_flags(p, "tracking_uri", "experiment", "address")
    return p


def main(base: dict[str, Any], description: str, argv: list[str] | None = None) -> int:
    """The command line of `sweeps/arc_long.py`: `base` is the config it starts a new run from."""
    return run_main(parser(description), lambda a: _main(a, base), argv)


def _main(a: argparse.Namespace, base: dict[str, Any]) -> None:
    from trm.cost import load_price_table

    overrides = overrides_from(a)
    if a.resume and a.config:
        raise ConfigError("--config with --resume: a resumed run keeps its config; change fields with --set")
    require_positive(a, "--workers")
    check_max_failures(a.max_failures)
    check_worker_wait(a.worker_wait_minutes)
    if a.budget_gpu_hours is not None and a.budget_gpu_hours <= 0:
        raise ConfigError(f"--budget-gpu-hours {a.budget_gpu_hours}: expected a number > 0")
    # a new run's config; a resumed run takes its manifest's instead (with the --set overrides)
    cfg = load_config(a.config, overrides) if a.config else apply_overrides(Config(), {**base, **overrides}).validate()
    given = LongRunSettings(
        workers=a.workers,
        gpus_per_worker=a.gpus_per_worker,
        cpus_per_worker=a.cpus_per_worker,
        deadline=parse_deadline(a.deadline) if a.deadline else None,
        budget_gpu_hours=a.budget_gpu_hours,
        instance_type=a.instance_type,
        market=a.market,
        prices=load_price_table(a.prices) if a.prices else None,
        max_failures=a.max_failures,
        worker_wait_minutes=a.worker_wait_minutes,
        tracking_uri=a.tracking_uri,
        experiment=a.experiment,
    )
    again = [*sys.argv, *([] if a.resume else ["--resume"])]  # what continues this run after a failure
    result = run_long(
        a.name,
        a.storage,
        cfg,
        overrides,
        given,
        resume=a.resume,
        address=a.address,
        resume_command="python " + shlex.join(again),
    )
    print(json.dumps(result, indent=2, default=str))
