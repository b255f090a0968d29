"""One DDP training run through Ray Train, outside Tune: `trm train --workers N`."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from trm.cli_common import WORKER_WAIT_MINUTES
from trm.config import Config
from trm.errors import TrmError
from trm.launch.cluster import WorkerSpec, preflight
from trm.launch.worker import WorkerRun, checkpoint_location, make_trainer, start_timeout_s


def run_training(
    cfg: Config,
    *,
    name: str,
    storage: str,
    spec: WorkerSpec,
    tracking_uri: str | None = None,
    experiment: str = "trm-train",
    max_failures: int = 3,
    mlflow_run_id: str | None = None,
    address: str | None = None,
    worker_wait_minutes: float = WORKER_WAIT_MINUTES,
    tracking: bool = True,
    on_ready: Callable[[Config], None] | None = None,
    resume_command: str | None = None,
) -> dict[str, Any]:
    """Check everything (`preflight`), call `on_ready(cfg)`, train run `name` under `storage`
    (resuming from its latest checkpoint there, into its MLflow run: the one tagged with that
    location), and return its final metrics, MLflow run id and last checkpoint. A divergence, worker
    errors beyond `max_failures`, or workers that did not start within `worker_wait_minutes`, end the
    MLflow run FAILED and raise one line (`Diverged`, `RetriesExhausted`, `WorkersUnavailable`, naming
    `resume_command`)."""
    from trm.storage import join, resolve
    from trm.tracking import runs

    storage = resolve(storage)
    uri = preflight(
        cfg,
        storage=storage,
        tracking_uri=tracking_uri,
        address=address,
        spec=spec,
        what=spec.describe(),
        tracking=tracking,
    )
    if on_ready is not None:
        on_ready(cfg)
    tracker = (
        runs.single_run(uri, experiment, name, cfg, mlflow_run_id, run_path=join(storage, name))
        if tracking and uri is not None
        else None
    )
    trainer = make_trainer(
        WorkerRun(cfg, uri, tracker.run_id if tracker else None),
        name=name,
        storage=storage,
        spec=spec,
        max_failures=max_failures,
        worker_wait_minutes=worker_wait_minutes,
    )
    best = None
    with runs.guard(tracker):
        result = fit(trainer, max_failures, resume_command, join(storage, name))
        checkpoint = checkpoint_location(storage, result.checkpoint)
        if tracker is not None:
            best = tag_best(tracker, storage, result)  # rank 0 tags it as it goes; here with its full location
            runs.finish_run(tracker, checkpoint=checkpoint)
    return {
        "mlflow_run_id": tracker.run_id if tracker else None,
        "checkpoint": checkpoint,
        "best_checkpoint": best,
        **(result.metrics or {}),
    }


class RetriesExhausted(TrmError):
    """Ray Train gave up on a run: its workers failed more often than --max-failures allows."""

    end_reason = "error"


class WorkersUnavailable(TrmError):
    """A run's (or trial's) workers could not get their resources within --worker-wait-minutes."""

    end_reason = "no_workers"


def workers_unavailable(trainer, error: BaseException, resume_command: str | None = None) -> WorkersUnavailable | None:
    """The one line for a `TrainingFailedError` that is Ray Train giving up on starting `trainer`'s worker
    group (its start retries are the wait bound, `worker.start_retries`), naming what the workers asked for
    and what Ray has free; None for any other failure."""
    import ray
    from ray.train.v2._internal.exceptions import WorkerGroupStartupTimeoutError

    from trm.launch import cluster

    if not isinstance(getattr(error, "controller_failure", None), WorkerGroupStartupTimeoutError):
        return None  # a worker that died starting is a failure with a cause (`failure_cause`), not a wait
    scaling = trainer.scaling_config
    each = ", ".join(f"{v:g} {k}" for k, v in sorted((scaling.resources_per_worker or {}).items()))
    free, total = ray.available_resources(), ray.cluster_resources()
    have = ", ".join(
        f"{free.get(k, 0):g} of {total.get(k, 0):g} {k}" for k in sorted(scaling.resources_per_worker or {})
    )
    waited = (trainer.run_config.failure_config.controller_failure_limit + 1) * start_timeout_s() / 60
    others = (
        f"; other Ray instances on this host hold CPUs too ({cluster.OTHERS_AT_START})"
        if cluster.OTHERS_AT_START
        else ""
    )
    again = f"; once the cluster has room, resume with: {resume_command}" if resume_command else ""
    return WorkersUnavailable(
        f"stopped: {scaling.num_workers} worker(s) of {each} each did not start within {waited:g} min "
        f"(--worker-wait-minutes): Ray has {have} free{others}{again}"
    )


def fit(trainer, max_failures: int, resume_command: str | None, root: str):
    """`trainer.fit()` of the run stored at `root`, as one line when it ends badly: `Diverged` when
    the loop stopped on a non-finite loss, `Stalled` when it restarted too often without advancing a
    checkpoint (the workers catch both and leave the message in root/STOP_FILE, with this launch's id),
    `RetriesExhausted` naming the cause when the workers failed beyond `max_failures`. Inside the run's
    `runs.guard`: the MLflow run ends FAILED with that error's end reason."""
    from ray.train import TrainingFailedError

    from trm.launch.attempts import Stalled
    from trm.train.loop import Diverged

    try:
        result = trainer.fit()
    except TrainingFailedError as e:
        if (unavailable := workers_unavailable(trainer, e, resume_command)) is not None:
            raise unavailable from e
        again = f"; resume from the last checkpoint with: {resume_command}" if resume_command else ""
        raise RetriesExhausted(
            f"training failed after {max_failures} retries (--max-failures {max_failures}): {failure_cause(e)}{again}"
        ) from e
    stop = stop_of_launch(trainer, root)
    message = str(stop.get("message") or f"{stop.get('reason')} at step {stop.get('step')}")
    if stop.get("reason") == "diverged":
        raise Diverged(message)
    if stop.get("reason") == "stalled":
        raise Stalled(message + (f"; once fixed, resume with: {resume_command}" if resume_command else ""))
    return result


def stop_of_launch(trainer, root: str) -> dict:
    """Why the workers of `trainer` (this launch) stopped the run stored at `root` without finishing:
    its STOP_FILE record ({"reason", "step", "message"}), or {} (one of an earlier launch is not this one's)."""
    from trm.launch.worker import STOP_FILE
    from trm.storage import join, read_json

    stop = read_json(join(root, STOP_FILE)) or {}
    return stop if stop.get("launch") == trainer.train_loop_config["run"].launch else {}


def failure_cause(error: BaseException) -> str:
    """The worker's error behind Ray's `TrainingFailedError`, in one short phrase (the rank, the
    exception's type and its message's last line; Ray's own text holds the remote traceback)."""
    failures = getattr(error, "worker_failures", None) or {}
    if failures:
        rank, cause = min(failures.items(), key=lambda kv: kv[0])
        where: str = f"rank {rank}: "
    else:
        cause, where = getattr(error, "controller_failure", None) or error, ""
    cause = getattr(cause, "cause", None) or cause  # a RayTaskError wraps the worker's own exception
    lines = [line.strip() for line in str(cause).splitlines() if line.strip()]
    text = lines[-1] if lines else ""
    if not text.startswith(type(cause).__name__):
        text = f"{type(cause).__name__}: {text}" if text else type(cause).__name__
    if isinstance(cause, TrmError):  # the platform's own one-line reason: whole
        return where + text
    return where + (text if len(text) <= 200 else text[:197] + "...")


def tag_best(tracker, storage: str, result) -> str | None:
    """Tag the run's best checkpoint (Ray keeps the best by the loop's "score", and the latest) with
    its location (`trm.tracking.checkpoint_uri`), score and step; return the location."""
    import math

    from trm.launch.worker import METRIC
    from trm.tracking import TAG_BEST_CKPT, best_checkpoint_tags

    scored = [
        (m[METRIC], c, m)
        for c, m in (getattr(result, "best_checkpoints", None) or [])
        if isinstance(m.get(METRIC), (int, float)) and math.isfinite(m[METRIC])
    ]
    if not scored:
        return None
    # ties go to the later checkpoint, as the loop's own best does
    score, best, metrics = max(scored, key=lambda x: (x[0], Path(x[1].path).name))
    location = checkpoint_location(storage, best)
    assert location is not None  # `best` is one of Ray's checkpoints, not None
    tags = best_checkpoint_tags(location, score, step=metrics.get("step"), storage=storage)
    tracker.set_tags(tags)
    return tags[TAG_BEST_CKPT]
