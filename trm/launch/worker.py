"""Ray Train: the training loop of `trm.train` as a TorchTrainer (DDP: gloo on CPU, NCCL on GPU).

`make_trainer` builds the TorchTrainer of one run; `train_loop_per_worker` is what each of its
workers runs, handed one typed `WorkerRun`; `RaySession` is the loop's `trm.train.session.Session`
on a worker: Ray persists, restores and broadcasts checkpoints.

Ray 2.60 runs Train V2: a TorchTrainer cannot be handed to a Tuner, so each Tune trial is a
function that builds and fits its own TorchTrainer, with `TuneReportCallback` forwarding every
`ray.train.report` to Tune (see `trm.sweep.tune`). Re-fitting a TorchTrainer with the same
RunConfig(storage_path, name) resumes from its latest checkpoint, which is how restarted trials
and restarted jobs pick up where they stopped.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

from trm.cli_common import WORKER_WAIT_MINUTES
from trm.config import Config
from trm.cost import RunLimits
from trm.launch.attempts import STALLED_RESTARTS, Attempts, Stalled
from trm.launch.cluster import WorkerSpec
from trm.train import checkpoint as ckpt
from trm.train.session import TrackedSession

log = logging.getLogger(__name__)

# The loop reports its objective (trm.evaluate.objective: ARC task pass@2 after the vote, maze path
# validity, exact accuracy; every one an accuracy, mode "max") also as "score": Ray keeps the best
# checkpoints by it, and, Train V2's CheckpointManager, always the latest besides (what a resume uses).
METRIC = "score"
# in the run's storage folder: why rank 0 stopped without a checkpoint (a divergence, restarts that do not
# advance), for the driver of that launch (trm.launch.single.fit)
STOP_FILE = "trm_stop.json"


@dataclass
class WorkerRun:
    """What every worker of one run is handed: the config, where to log, when to stop."""

    cfg: Config
    tracking_uri: str | None = None
    mlflow_run_id: str | None = None  # rank 0 logs into this run
    limits: RunLimits = field(default_factory=RunLimits)
    threads: int = 1  # torch threads per worker
    quiet: bool = False  # console: warnings only (a sweep's trials: Ray's per-report and checkpoint lines off)
    system_metrics: bool = True  # rank 0 logs system/* (CPU, memory, GPU) into the run
    checkpoint_root: str | None = None  # storage/name: where Ray puts the run's checkpoints (set by make_trainer)
    launch: str = ""  # this driver launch (set by make_trainer): its stop file and count of stalled restarts
    stalled_restarts: int = STALLED_RESTARTS  # restarts in a row from one checkpoint before the run stops


def train_loop_per_worker(config: dict) -> None:
    """Runs on every Ray Train worker: one rank of DDP training."""
    import ray.train
    import torch

    from trm.data.build import ensure_dataset
    from trm.tracking import Tracker
    from trm.train.loop import Diverged, Trainer

    run: WorkerRun = config["run"]
    cfg = run.cfg
    torch.set_num_threads(run.threads)
    cfg.data.path = str(ensure_dataset(cfg.data))  # built or downloaded once per node (file-locked)
    rank = ray.train.get_context().get_world_rank()
    tracker = None
    if rank == 0 and run.mlflow_run_id:
        assert run.tracking_uri is not None  # every launcher hands the resolved uri with the run id
        tracker = Tracker(run.tracking_uri, run.mlflow_run_id)
    attempts = Attempts(run.checkpoint_root, run.launch, run.stalled_restarts) if run.checkpoint_root else None
    trainer = Trainer(cfg, RaySession(tracker, run.checkpoint_root, attempts), run.limits)
    if tracker is not None:
        trainer.extra["mlflow_run_id"] = run.mlflow_run_id
    if run.quiet:
        _quiet_worker_logs()
    monitor = None
    if tracker is not None and run.system_metrics:
        from trm.tracking.runs import start_system_metrics

        monitor = start_system_metrics(tracker.uri, tracker.run_id)
    try:
        trainer.fit()
    except (Diverged, Stalled) as e:  # the run stops with this reason (the launcher's end reason); not retried
        log.error("%s", e)
        if rank == 0 and run.checkpoint_root:  # Ray's Result holds the last checkpoint's metrics, not this report's
            from trm.storage import join, write_json

            write_json(
                join(run.checkpoint_root, STOP_FILE),
                {"reason": e.end_reason, "step": trainer.step, "message": str(e), "launch": run.launch},
            )
    finally:
        if monitor is not None:
            monitor.finish()


def _quiet_worker_logs() -> None:
    """Ray Train's per-report ("Reporting training result ...") and per-checkpoint ("Checkpoint
    successfully created ...") INFO lines off: their loggers are named by file path, so neither
    LoggingConfig nor the `ray.train` logger's level reaches them."""
    import importlib

    for module in (
        "ray.train.v2._internal.execution.context",
        "ray.train.v2._internal.execution.storage",
        "ray.train._internal.storage",
    ):
        try:
            m = importlib.import_module(module)
        except ImportError:
            continue
        for name in {getattr(getattr(m, "logger", None), "name", None), m.__name__, m.__file__} - {None}:
            logging.getLogger(name).setLevel(logging.WARNING)
    for name in ("mlflow.system_metrics", "trm"):
        logging.getLogger(name).setLevel(logging.WARNING)


def start_retries(wait_minutes: float) -> int:
    """Train V2 gives a worker group RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S (60 s) to get its resources, then
    retries its start up to FailureConfig.controller_failure_limit times (default: forever): the limit that
    bounds the wait to `wait_minutes` (-1: no bound)."""
    return -1 if wait_minutes < 0 else max(0, math.ceil(wait_minutes * 60 / start_timeout_s()) - 1)


def start_timeout_s() -> float:
    """How long Train V2 lets one start of a worker group wait for its resources."""
    from ray.train.v2._internal.constants import (
        DEFAULT_WORKER_GROUP_START_TIMEOUT_S,
        WORKER_GROUP_START_TIMEOUT_S_ENV_VAR,
    )

    return float(os.environ.get(WORKER_GROUP_START_TIMEOUT_S_ENV_VAR, DEFAULT_WORKER_GROUP_START_TIMEOUT_S))


def make_trainer(
    run: WorkerRun,
    *,
    name: str,
    storage: str,
    spec: WorkerSpec,
    max_failures: int = 3,
    num_to_keep: int = 2,
    metric: str = METRIC,
    in_tune: bool = False,
    max_preemption_failures: int = -1,
    worker_wait_minutes: float = WORKER_WAIT_MINUTES,
):
    """The TorchTrainer of run `name` under `storage`: `spec.workers` DDP workers running `run`, waiting at
    most `worker_wait_minutes` in all for them to start (`start_retries`)."""
    from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from trm.storage import join

    use_gpu = spec.gpus_per_worker > 0
    resources = {"CPU": spec.cpus_per_worker, **({"GPU": spec.gpus_per_worker} if use_gpu else {})}
    callbacks = []
    if in_tune:
        from ray.tune.integration.ray_train import TuneReportCallback

        callbacks.append(TuneReportCallback())
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={
            "run": replace(
                run,
                threads=max(1, int(spec.cpus_per_worker)),
                checkpoint_root=join(storage, name),
                # a Tune trial's retry continues its launch: the stalled count goes on, not afresh
                launch=name if in_tune else uuid.uuid4().hex,
            )
        },
        scaling_config=ScalingConfig(num_workers=spec.workers, use_gpu=use_gpu, resources_per_worker=resources),
        # Train V2's RunConfig (logging_config, Train callbacks): mypy resolves ray.train's V1 one (ray.air.config)
        run_config=RunConfig(  # type: ignore[call-arg]
            name=name,
            storage_path=storage,
            callbacks=callbacks,  # type: ignore[arg-type]
            logging_config=LoggingConfig(log_level="WARNING" if run.quiet else "INFO"),
            checkpoint_config=CheckpointConfig(
                num_to_keep=num_to_keep, checkpoint_score_attribute=metric, checkpoint_score_order="max"
            ),
            # worker errors are bounded by max_failures; spot preemptions are retried without limit; the wait
            # for workers by worker_wait_minutes (Train V2's FailureConfig has these fields; mypy resolves V1's)
            failure_config=FailureConfig(  # type: ignore[call-arg]
                max_failures=max_failures,
                max_preemption_failures=max_preemption_failures,
                controller_failure_limit=start_retries(worker_wait_minutes),
            ),
        ),
    )


def checkpoint_location(storage: str, checkpoint) -> str | None:
    """Where a Ray checkpoint lives, as a URI a user can paste: Ray gives S3 paths without their
    scheme ("bucket/prefix/...")."""
    if checkpoint is None:
        return None
    scheme = storage.split("://", 1)[0] + "://" if "://" in storage else ""
    return scheme + checkpoint.path


# ---------------------------------------------------------------- the loop's session on a worker
TMP_PREFIX = "trm-ckpt-"


def _remove_stale_tmp(root: Path) -> None:
    """Checkpoint staging folders of dead processes (a worker killed mid-write leaves one)."""
    for d in root.glob(f"{TMP_PREFIX}*-*"):
        try:
            os.kill(int(d.name[len(TMP_PREFIX) :].split("-")[0]), 0)
        except ProcessLookupError:
            shutil.rmtree(d, ignore_errors=True)
        except (ValueError, PermissionError):
            pass


class RaySession(TrackedSession):
    """Inside `TorchTrainer`'s train_loop_per_worker: Ray persists and restores checkpoints."""

    def __init__(self, tracker=None, checkpoint_root: str | None = None, attempts: Attempts | None = None):
        import ray.train

        self._train = ray.train
        self.checkpoint_root = checkpoint_root
        ctx = ray.train.get_context()
        self.rank, self.world_size = ctx.get_world_rank(), ctx.get_world_size()
        self.tracker = tracker if self.rank == 0 else None
        self.attempts = attempts if self.rank == 0 else None  # the run's ledger of starts (rank 0 writes it)
        # checkpoint names Ray holds: after resuming below a corrupt one, a new checkpoint under
        # its name would be deleted with it
        self._taken: set[str] = set()
        _remove_stale_tmp(Path(tempfile.gettempdir()))
        from trm.spot import SpotWatcher

        self.spot = SpotWatcher().start()

    @contextlib.contextmanager
    def restore(self) -> Iterator[Path | None]:
        """The latest checkpoint whose state.pt matches its digest, else the newest older one kept by
        Ray that does. Rank 0 chooses and every rank opens its choice: ranks must resume together."""
        from ray.train.collective import broadcast_from_rank_zero

        choice = self._start(*self._choose()) if self.rank == 0 else None
        chosen, self._taken, error, stalled = broadcast_from_rank_zero(choice)
        if error:
            raise ckpt.CheckpointError(error)
        if stalled:  # every rank stops: the run fails before it advances
            raise Stalled(stalled)
        if chosen is None:
            yield None
            return
        with chosen.as_directory() as d:
            yield Path(d)

    def _start(self, chosen, taken: set[str], error: str | None) -> tuple:
        """Rank 0: this start in the run's ledger (`trm.launch.attempts`), from the chosen checkpoint."""
        stalled = None
        if self.attempts is not None and error is None:
            try:
                self.attempts.start(ckpt.step_of(Path(chosen.path).name) if chosen is not None else None)
            except Stalled as e:
                stalled = str(e)
        return chosen, taken, error, stalled

    def run_metrics(self) -> dict[str, float]:
        """Rank 0 under Ray: restarts as the ledger counts them (an attempt that died before its first
        checkpoint too) and the wall time of work that restarts threw away."""
        if self.attempts is None:
            return {}
        ledger = self.attempts.ledger
        return {"run/restarts": ledger.starts - 1, "run/lost_seconds": ledger.lost_seconds}

    def _choose(self) -> tuple:
        """(checkpoint or None, names Ray holds, error or None), on rank 0."""
        from ray.train import CheckpointConsistencyMode

        latest = self._train.get_checkpoint()
        if latest is None:
            return None, set(), None
        reported = [
            r.checkpoint
            for r in self._train.get_all_reported_checkpoints(consistency_mode=CheckpointConsistencyMode.COMMITTED)
        ]
        taken = {Path(c.path).name for c in [latest, *reported]}
        older = sorted((c for c in reported if c.path != latest.path), key=lambda c: c.path, reverse=True)
        for checkpoint in [latest, *older]:
            with checkpoint.as_directory() as d:
                try:
                    ckpt.verify(Path(d))
                    return checkpoint, taken, None
                except ckpt.CheckpointError as e:
                    log.warning("skipping checkpoint %s: %s", checkpoint.path, e)
        return (
            None,
            taken,
            (f"no checkpoint of this run matches its digests (tried {1 + len(older)}, newest {latest.path})"),
        )

    def report(self, metrics: dict, step: int, write) -> None:
        if self.tracker is not None:
            self.tracker.log_metrics(metrics, step)
        if write is None:
            self._train.report(metrics)
            if self.attempts is not None:
                self.attempts.beat(step, checkpoint=False)
            return
        tmp = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{os.getpid()}-"))
        try:
            write(tmp)
            ckpt.verify_digests(tmp)  # write, verify, then publish: Ray registers it once every rank's part is stored
            name, n = ckpt.step_dir_name(step), 0
            while name in self._taken:
                n += 1
                name = f"{ckpt.step_dir_name(step)}-{n}"
            self._train.report(metrics, checkpoint=self._train.Checkpoint.from_directory(tmp), checkpoint_dir_name=name)
            if self.attempts is not None:  # registered: the work up to here is saved
                self.attempts.beat(step, checkpoint=True)
            if self.tracker is not None and metrics.get("best/step") == step:  # this evaluation is the best
                from trm.storage import join
                from trm.tracking import best_checkpoint_tags

                where = join(self.checkpoint_root, name) if self.checkpoint_root else name
                self.tracker.set_tags(best_checkpoint_tags(where, metrics["best/score"], step=step))
        except Exception as e:  # out of space staging it here or in Ray's copy to storage: say so (Ray retries)
            if isinstance(e, ckpt.DiskFullError) or (cause := ckpt.disk_error(e)) is None:
                raise
            raise ckpt.DiskFullError(
                f"disk full while writing checkpoint {ckpt.step_dir_name(step)} (staged under {tmp.parent}, "
                f"stored under {self.checkpoint_root}): {os.strerror(cause.errno or 0)}; the last registered "
                f"checkpoint is kept"
            ) from e
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def agree(self, decision: dict) -> dict:
        from ray.train.collective import broadcast_from_rank_zero

        # both are barriers: every rank calls them at the same steps. Ray's info covers nodes Ray drains;
        # each rank's spot watcher the provider's notice to its own node, so the flag is any rank's
        preempting = self._train.get_preemption_info() is not None or self.spot.noticed.is_set()
        return {**broadcast_from_rank_zero(decision), "preempting": _any_rank(preempting)}


def _any_rank(flag: bool) -> bool:
    """True on every rank when it is True on any (one tiny all-reduce, at the loop's boundaries only)."""
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return flag
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
    t = torch.tensor([int(flag)], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())
