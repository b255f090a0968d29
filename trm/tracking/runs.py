"""Creating, finding and reopening the project's MLflow runs, and recording how each ended.

  local run   `trm train` in one process: its id kept in OUT/mlflow_run_id, reopened when the run resumes
  single run  `trm train --workers N`: created by the driver, logged to by rank 0 of the workers
  long run    a multi-day run (`sweeps/arc_long.py`): its id kept in the run's manifest, reopened by
              --resume after a lost driver; tagged with its end reason and last checkpoint
  sweep       a parent run per sweep, found again by its storage location (--resume); one child run
              per trial, found again by its Ray trial id when the trial restarts; each child tagged
              with its end reason and best checkpoint, the parent with the trials table

Callers pass a resolved tracking URI (`trm.tracking.resolve_uri`) and get `Tracker`s back; no
other module names a tag or calls `MlflowClient` itself.
"""

from __future__ import annotations

import contextlib
import io
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trm.tracking import (
    ART_BEST_CHECKPOINT,
    ART_CHECKPOINT,
    ART_CONFIG,
    ART_TRIALS,
    EXPERIMENT_KIND,
    MODEL_ALIAS,
    TAG_BEST_CKPT,
    TAG_DRIVER_STARTS,
    TAG_END_REASON,
    TAG_EXPERIMENT_KIND,
    TAG_INSTANCE_TYPE,
    TAG_LAST_CKPT,
    TAG_MARKET,
    TAG_PARENT,
    TAG_RUN_PATH,
    TAG_SWEEP,
    TAG_TRIAL_ID,
    Tracker,
    TrackingError,
    best_checkpoint_tags,
    checkpoint_path,
    checkpoint_uri,
)

TAG_NOTE = "mlflow.note.content"  # a run's description in the UI

if TYPE_CHECKING:
    from trm.config import Config

RUN_ID_FILE = "mlflow_run_id"  # in a local run's folder


def prepare_store(uri: str) -> None:
    """Create a SQLite store's tables under a file lock beside the DB (DB.lock): two processes
    opening a new DB at once both run MLflow's schema migrations, and one fails in alembic.
    The store is cached per URI in this process, so the lock is taken once; other URIs: nothing."""
    if not uri.startswith("sqlite:///"):
        return
    from filelock import FileLock
    from mlflow.tracking import MlflowClient

    db = Path(uri[len("sqlite:///") :])
    db.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(f"{db}.lock"):
        MlflowClient(uri).search_experiments(max_results=1)


def best_metric_name(metric: str) -> str:
    """The summary name of a metric's best value: val/exact_accuracy -> best_val_exact_accuracy."""
    return "best_" + metric.replace("/", "_")


# ---------------------------------------------------------------- local and single runs
def local_run(uri: str, experiment: str, out_dir: Path, cfg: Config) -> Tracker:
    """The run of a `trm train` folder: reopened when the folder names one (a resumed run, after an
    interruption or a failure, keeps logging into its MLflow run, running again), else created and
    named after the folder."""
    run_id_file = Path(out_dir) / RUN_ID_FILE
    if run_id_file.is_file():
        tracker = Tracker(uri, run_id_file.read_text().strip())
        tracker.reopen()
    else:
        tracker = Tracker.create(uri, experiment, run_name=Path(out_dir).name)
        run_id_file.write_text(tracker.run_id)
    tracker.log_config(cfg)
    return tracker


def single_run(
    uri: str, experiment: str, name: str, cfg: Config, run_id: str | None = None, run_path: str | None = None
) -> Tracker:
    """A run driven through Ray Train outside Tune (`trm train --workers`): reopened by `run_id`, else
    the latest run of `experiment` tagged with its storage location `run_path` (re-running an
    interrupted or failed run continues its history, running again), else created with that tag."""
    run_id = run_id or (find_run(uri, experiment, run_path) if run_path else None)
    if run_id:
        tracker = Tracker(uri, run_id)
        tracker.reopen()
    else:
        tracker = Tracker.create(uri, experiment, run_name=name, tags={TAG_RUN_PATH: run_path} if run_path else None)
    tracker.log_config(cfg)
    return tracker


def find_run(uri: str, experiment: str, run_path: str) -> str | None:
    """The id of the latest run of `experiment` tagged with the storage location `run_path`."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return None
    found = client.search_runs(
        [exp.experiment_id],
        filter_string=f"tags.`{TAG_RUN_PATH}` = '{run_path}'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    return found[0].info.run_id if found else None


def set_aside(uri: str, experiment: str, run_path: str, where: str) -> None:
    """`trm train --restart`: the run at `run_path` is no longer found by it (its tag now names where
    its checkpoints were moved), so the new start gets a run of its own."""
    run_id = find_run(uri, experiment, run_path)
    if run_id is not None:
        Tracker(uri, run_id).set_tags({TAG_RUN_PATH: where})


def finish_run(
    tracker: Tracker, *, reason: str | None = None, checkpoint: str | None = None, artifact: str | Path | None = None
) -> None:
    """End a run that completed (or stopped at a limit): its end reason, its last checkpoint's
    location, and `artifact` (the final weights: a checkpoint folder or its state.pt)."""
    tags: dict[str, Any] = {}
    if reason is not None:
        tags[TAG_END_REASON] = reason
    if checkpoint is not None:
        tags[TAG_LAST_CKPT] = checkpoint_uri(checkpoint)
    if artifact is not None:
        tracker.log_artifact(artifact, ART_CHECKPOINT)
    tracker.set_tags(tags)
    tracker.end()


def fail_run(tracker: Tracker, error: BaseException, *, tag_reason: bool = False) -> None:
    """End a run that raised `error` (KILLED for an interrupt, else FAILED), tagged with the error's
    own end reason when it has one (`Diverged`: "diverged", `DiskFullError`: "disk_full");
    `tag_reason` tags "error" otherwise (long runs, whose end reason is always set)."""
    reason = getattr(error, "end_reason", None) or ("error" if tag_reason else None)
    if reason is not None:
        tracker.set_tags({TAG_END_REASON: reason})
    tracker.fail(error)


@contextlib.contextmanager
def guard(
    tracker: Tracker | None, *, tag_reason: bool = False, checkpoint: Callable[[], Any] | None = None
) -> Iterator[None]:
    """Around a run's training: an exception ends the run (`fail_run`) and goes on up. A tracking
    server that stopped answering for good goes up as a `TrackingError` naming its URI and the
    last good checkpoint (`checkpoint()`), not MLflow's traceback."""
    try:
        yield
    except BaseException as e:
        if tracker is None:
            raise
        gone = tracking_unreachable(e)
        try:
            fail_run(tracker, e, tag_reason=tag_reason)
        except Exception as f:  # the server that failed cannot record that it failed
            if not (gone or tracking_unreachable(f)):
                raise
            gone = True
        if gone:
            last = checkpoint() if checkpoint is not None else None
            raise TrackingError(
                f"--tracking-uri {tracker.uri}: the MLflow server stopped answering ({_last_line(e)}); "
                + (f"the last good checkpoint {Path(str(last)).name} is kept; " if last else "")
                + "run the same command to resume once it is back, or add --no-tracking to train without it"
            ) from e
        raise


def tracking_unreachable(error: BaseException) -> bool:
    """`error` (or what caused it) is MLflow failing to reach its server: a connection refused or
    timed out after MLflow's own retries (MLFLOW_HTTP_REQUEST_MAX_RETRIES)."""
    import requests
    from mlflow.exceptions import MlflowException

    seen: set[int] = set()
    e: BaseException | None = error
    while e is not None and id(e) not in seen:
        if isinstance(e, requests.exceptions.ConnectionError | requests.exceptions.Timeout):
            return True
        if isinstance(e, MlflowException) and ("Max retries exceeded" in str(e) or "Connection" in str(e)):
            return True
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return False


def _last_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    text = lines[-1] if lines else type(error).__name__
    return text if len(text) <= 160 else text[:157] + "..."


# ---------------------------------------------------------------- long runs
def start_long_run(
    uri: str,
    experiment: str,
    name: str,
    root: str,
    cfg: Config,
    *,
    workers: int,
    gpus_per_worker: float,
    instance_type: str,
    market: str,
) -> Tracker:
    """A new long run: tagged with its storage location and what its GPUs cost, its config as params
    and as the config.yaml artifact."""
    tracker = Tracker.create(
        uri, experiment, run_name=name, tags={TAG_RUN_PATH: root, TAG_INSTANCE_TYPE: instance_type, TAG_MARKET: market}
    )
    tracker.log_config(cfg, workers=workers, gpus_per_worker=gpus_per_worker)
    with tempfile.TemporaryDirectory() as d:
        cfg.save(Path(d) / ART_CONFIG)
        tracker.log_artifact(Path(d) / ART_CONFIG)
    return tracker


def reopen_long_run(uri: str, run_id: str, driver_starts: int) -> Tracker:
    """The long run a resumed driver continues: running again, with its count of driver starts."""
    tracker = Tracker(uri, run_id)
    tracker.reopen()
    tracker.set_tags({TAG_DRIVER_STARTS: driver_starts})
    return tracker


# ---------------------------------------------------------------- sweeps
def sweep_run(uri: str, experiment: str, sweep_path: str, resume: bool, params: dict[str, Any]) -> Tracker:
    """The sweep's parent run: with `resume`, the latest one of this storage location (running
    again), else a new one with the sweep's settings as params."""
    if resume:
        from mlflow.tracking import MlflowClient

        client = MlflowClient(uri)
        exp = client.get_experiment_by_name(experiment)
        if exp is not None:
            found = client.search_runs(
                [exp.experiment_id],
                filter_string=f"tags.`{TAG_SWEEP}` = '{sweep_path}'",
                order_by=["attributes.start_time DESC"],
                max_results=1,
            )
            if found:
                parent = Tracker(uri, found[0].info.run_id)
                parent.reopen()
                return parent
    parent = Tracker.create(uri, experiment, run_name=f"{experiment}-sweep", tags={TAG_SWEEP: sweep_path})
    # an experiment created before the kind tag existed opens in the GenAI view: tag it too
    parent.client.set_experiment_tag(parent.experiment_id(), TAG_EXPERIMENT_KIND, EXPERIMENT_KIND)
    parent.log_params(params)
    return parent


def log_dataset(tracker: Tracker, data_path: str, name: str, digest_of: dict[str, Any], context: str) -> None:
    """The run's dataset as an MLflow run input (the UI's "Datasets used"): its folder or S3 prefix,
    a name, and a digest of what built it (`digest_of`: the data config)."""
    import hashlib
    import json
    import warnings

    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.entities import DatasetInput, InputTag

    digest = hashlib.sha256(json.dumps(digest_of, sort_keys=True, default=str).encode()).hexdigest()[:10]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        source = resolve_dataset_source(data_path)
    # mlflow's stub: Dataset.profile is an @abstractmethod, but Dataset is no ABC, so MetaDataset instantiates
    dataset = MetaDataset(source, name=name, digest=digest)._to_mlflow_entity()  # type: ignore[abstract]
    tracker.client.log_inputs(
        tracker.run_id, datasets=[DatasetInput(dataset, tags=[InputTag("mlflow.data.context", context)])]
    )


def start_system_metrics(uri: str, run_id: str, interval: float = 10.0):
    """Log system/* (CPU, memory, disk, network; GPU with nvidia-ml-py) into `run_id` every
    `interval` seconds from this process until `.finish()`; None when psutil is missing."""
    try:
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor
    except ImportError:
        return None
    monitor = SystemMetricsMonitor(
        run_id, sampling_interval=interval, samples_before_logging=1, resume_logging=True, tracking_uri=uri
    )
    monitor.start()
    return monitor


def register_best_model(uri: str, run_id: str, model, name: str, params: dict[str, Any]) -> str:
    """Log `model` (a torch module) into run `run_id` with mlflow.pytorch and register it as
    `name` with alias `best`; returns the model version."""
    import logging

    from mlflow.tracking import MlflowClient

    import mlflow

    for noisy in (
        "mlflow.pytorch",
        "mlflow.utils.requirements_utils",
        "mlflow.store.model_registry",
        "mlflow.tracking._model_registry",
    ):
        logging.getLogger(noisy).setLevel(logging.ERROR)  # pickle caution, +cpu label, "Successfully registered"
    mlflow.set_tracking_uri(uri)
    # MLflow prints "Successfully registered model" / "Created version" on stderr (not through logging); the
    # caller says it in one line. Anything else MLflow prints here goes on to stderr.
    printed = io.StringIO()
    with mlflow.start_run(run_id=run_id), contextlib.redirect_stderr(printed):
        info = mlflow.pytorch.log_model(
            model, name="model", registered_model_name=name, params=params, serialization_format="pickle"
        )  # pt2 needs an input example
    for line in printed.getvalue().splitlines():
        if line.strip() and not line.startswith(("Successfully registered model", "Created version")):
            print(line, file=sys.stderr)
    client = MlflowClient(uri)
    version = str(info.registered_model_version)
    client.set_registered_model_alias(name, MODEL_ALIAS, version)
    return version


def trial_run(uri: str, parent_run_id: str, trial_id: str, trial_name: str) -> Tracker:
    """The trial's child run: found by its trial id (a restarted trial), else created."""
    parent = Tracker(uri, parent_run_id)
    exp_id = parent.experiment_id()
    found = parent.client.search_runs(
        [exp_id],
        filter_string=f"tags.{TAG_TRIAL_ID} = '{trial_id}' and tags.{TAG_PARENT} = '{parent_run_id}'",
        max_results=1,
    )
    if found:
        return Tracker(uri, found[0].info.run_id)
    name = parent.client.get_experiment(exp_id).name
    return Tracker.create(uri, name, run_name=trial_name, parent_run_id=parent_run_id, tags={TAG_TRIAL_ID: trial_id})


def end_trial_run(
    uri: str,
    parent_run_id: str,
    trial_id: str,
    trial_name: str,
    *,
    reason: str,
    errored: bool,
    metric: str,
    best: tuple[float, str] | None,
    cost: dict[str, float] | None = None,
    storage: str | None = None,
) -> None:
    """Tag the trial's child run with its end reason and `best` (value, checkpoint as Ray reports it under
    `storage`), log that checkpoint when it is a local folder, its `cost` metrics (cost/cpu_hours,
    cost/gpu_hours, ...), and end the run."""
    tracker = trial_run(uri, parent_run_id, trial_id, trial_name)
    if cost:
        tracker.log_metrics(cost, step=0, once_per_step=False)
    tags: dict[str, Any] = {TAG_END_REASON: reason}
    note = f"Trial {trial_name}: {reason.replace('_', ' ')}"
    if best is not None:
        note += f"; best {metric} {best[0]:.4f}"
    if cost:
        note += (
            f"; {cost.get('cost/gpu_hours') or cost.get('cost/cpu_hours', 0):.3f} "
            f"{'GPU' if cost.get('cost/gpu_hours') else 'CPU'}-hours"
        )
    tags[TAG_NOTE] = note + "."
    if best is not None:
        value, path = best
        tags.update(best_checkpoint_tags(path, value, metric=metric, storage=storage))
        tags[best_metric_name(metric)] = value
        local = checkpoint_path(tags[TAG_BEST_CKPT])
        if "://" not in local and Path(local).is_dir():
            tracker.log_artifact(local, ART_BEST_CHECKPOINT)
    tracker.set_tags(tags)
    tracker.end("FAILED" if errored else "FINISHED")


def trial_run_ids(parent: Tracker) -> dict[str, str]:
    """Trial id -> child run id, for every child of a sweep's parent run."""
    runs = parent.client.search_runs([parent.experiment_id()], filter_string=f"tags.{TAG_PARENT} = '{parent.run_id}'")
    return {tid: r.info.run_id for r in runs if (tid := r.data.tags.get(TAG_TRIAL_ID)) is not None}


def describe(tracker: Tracker, markdown: str) -> None:
    """The run's description in the UI (its Overview page): markdown."""
    tracker.set_tags({TAG_NOTE: markdown})


def record_sweep(
    parent: Tracker, metric: str, best: float, table: dict[str, list], extra: dict[str, float] | None = None
) -> None:
    """The parent's summary: the best value of `metric` over all trials (a resumed sweep updates
    it), `extra` summary metrics (the sweep's cost) and the trials table."""
    parent.log_metrics({best_metric_name(metric): best, **(extra or {})}, step=0, once_per_step=False)
    parent.log_table(table, ART_TRIALS)
