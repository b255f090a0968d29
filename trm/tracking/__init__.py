"""MLflow: the one place that names runs, params, metrics, tags and artifacts.

Runs are addressed by id through `MlflowClient` (never the process-global
"active run"), so a Ray worker can reopen the run its driver created, and a
restarted trial or job keeps logging into the same run. A reopened run never
logs a step twice: a run resumed from a checkpoint recomputes the steps since
that checkpoint, and those steps are already in MLflow.

Here: the names below, `Tracker` (one run, by id) and `TrackingError`. In
`trm.tracking.runs`: creating, finding and reopening each kind of run (local,
single, long, sweep parent, trial child) and recording how it ended. In
`trm.tracking.arc`: the records of an ARC vote.

Names used across the project:
  experiments  trm-train (`trm train`), trm-long (long runs), the sweep's name (a sweep)
  runs         a sweep's parent `NAME-sweep` with one child per trial; a long run named as its folder
  params       the flat config (`Config.flat()`: n, T, layers, arch, hidden, ema, ...) + effective_depth
  metrics      train/*, val/*, throughput/*, run/*, cost/*, eval/* (MLflow forbids '@': pass@k is
               eval/pass_at_k); a sweep's parent holds best_<metric>
  tags         trial_end_reason, ray_trial_id, git_commit, best_checkpoint, best_score, best_metric,
               best_step, last_checkpoint, init_from_checkpoint,
               trm.sweep_path, trm.run_path, driver_starts, instance_type, market, eval_dataset
  experiments  tagged mlflow.experimentKind=custom_model_development (the UI's model-training view)
  inputs       a sweep's parent and every trial log their dataset (`runs.log_dataset`)
  models       a sweep's best trial logs `model` (mlflow.pytorch), registered as the sweep's name, alias best
  system       every trial's rank 0 logs system/* (CPU, memory, GPU when present)
  artifacts    checkpoint/ (final weights), best_checkpoint/ (a trial's), config.yaml, trials.json
               (a sweep's table), depth_table.md and depth_vs_accuracy.png (the depth report)
"""

from __future__ import annotations

import logging
import math
import os
import subprocess
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trm.errors import TrmError

if TYPE_CHECKING:
    from trm.config import Config

log = logging.getLogger(__name__)

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
EXPERIMENT_TRAIN, EXPERIMENT_LONG = "trm-train", "trm-long"
END_REASONS = ("completed", "asha_pruned", "overfit_stopped", "diverged", "error")  # a trial's
# tags
TAG_END_REASON = "trial_end_reason"  # END_REASONS for trials; completed | deadline | gpu_budget | error for long runs
TAG_TRIAL_ID = "ray_trial_id"
TAG_COMMIT = "git_commit"
TAG_BEST_CKPT = "best_checkpoint"  # a run's best checkpoint: `checkpoint_uri`, written by `best_checkpoint_tags` only
TAG_LAST_CKPT = "last_checkpoint"  # a run's last checkpoint: `checkpoint_uri`
TAG_BEST_SCORE = "best_score"  # the best checkpoint's score (by TAG_BEST_METRIC)
TAG_BEST_METRIC = "best_metric"  # the metric that picks a run's best checkpoint (trm.evaluate.objective)
TAG_BEST_STEP = "best_step"
TAG_INIT_FROM = "init_from_checkpoint"  # a fine-tuned run's parent checkpoint (trm train --init-from)
TAG_PARENT = "mlflow.parentRunId"
TAG_SWEEP = "trm.sweep_path"  # a sweep parent's storage location: how --resume finds it
TAG_RUN_PATH = "trm.run_path"  # a long run's storage location
TAG_DRIVER_STARTS = "driver_starts"
TAG_INSTANCE_TYPE, TAG_MARKET = "instance_type", "market"
TAG_EVAL_DATASET = "eval_dataset"
# experiment tag MLflow's UI (3.x) reads to open an experiment in its model-training view, not GenAI's
TAG_EXPERIMENT_KIND, EXPERIMENT_KIND = "mlflow.experimentKind", "custom_model_development"
MODEL_ALIAS = "best"  # alias of a sweep's registered best model version
# artifacts
ART_CHECKPOINT, ART_BEST_CHECKPOINT, ART_CONFIG = "checkpoint", "best_checkpoint", "config.yaml"
ART_TRIALS = "trials.json"
ART_DEPTH_TABLE, ART_DEPTH_FIGURE = "depth_table.md", "depth_vs_accuracy.png"


class TrackingError(TrmError, RuntimeError):
    """The tracking server cannot be used (the message names --tracking-uri)."""


def resolve_uri(uri: str | None) -> str:
    """--tracking-uri, else MLFLOW_TRACKING_URI, else a SQLite file in the working folder."""
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        uri = "sqlite:///" + str(Path(uri[len("sqlite:///") :]).resolve())  # workers run elsewhere
    return uri


# the schemes MLflow's tracking stores take (a database's may name its driver: postgresql+psycopg2)
KNOWN_SCHEMES = ("http", "https", "sqlite", "postgresql", "mysql", "mssql", "file", "databricks", "databricks-uc")


def check_reachable(uri: str, timeout: float = 10.0) -> None:
    """Fail early, naming the flag, when the URI's scheme is not a tracking store's or an HTTP
    tracking server does not answer."""
    scheme = uri.split("://", 1)[0].split("+", 1)[0].lower() if "://" in uri else ""
    if scheme and scheme not in KNOWN_SCHEMES:
        raise TrackingError(
            f"--tracking-uri {uri}: unknown scheme {scheme!r}; expected one of "
            f"{', '.join(s + '://' for s in KNOWN_SCHEMES[:6])} or a local folder"
        )
    if scheme not in ("http", "https"):
        return
    import urllib.request

    try:
        urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout).read()
    except Exception as e:  # noqa: BLE001
        raise TrackingError(
            f"--tracking-uri {uri}: the MLflow server does not answer ({e}); "
            f"start one with mlflow/serve.sh or omit the flag for {DEFAULT_TRACKING_URI}"
        ) from e


def git_commit() -> str:
    try:
        return (
            subprocess.run(
                ["git", "rev-parse", "HEAD"],
                capture_output=True,
                text=True,
                timeout=5,
                cwd=Path(__file__).resolve().parent,
            ).stdout.strip()
            or "unknown"
        )
    except Exception:  # noqa: BLE001
        return "unknown"


class Tracker:
    """One MLflow run. Create it (`Tracker.create`) or reopen it by id (`Tracker(uri, run_id)`)."""

    def __init__(self, tracking_uri: str, run_id: str):
        from mlflow.tracking import MlflowClient

        self.uri, self.run_id = tracking_uri, run_id
        self.client = MlflowClient(tracking_uri)
        self._last_step: dict[str, int] | None = None  # per metric, the last step in MLflow; looked up on first use

    @classmethod
    def create(
        cls,
        tracking_uri: str | None,
        experiment: str,
        run_name: str | None = None,
        parent_run_id: str | None = None,
        tags: dict[str, str] | None = None,
    ) -> Tracker:
        from mlflow.tracking import MlflowClient

        uri = resolve_uri(tracking_uri)
        check_reachable(uri)
        from trm.tracking.runs import prepare_store

        prepare_store(uri)  # a new SQLite DB: created by one process at a time
        client = MlflowClient(uri)
        exp = client.get_experiment_by_name(experiment)
        exp_id = (
            exp.experiment_id
            if exp is not None
            else client.create_experiment(experiment, tags={TAG_EXPERIMENT_KIND: EXPERIMENT_KIND})
        )
        all_tags = {TAG_COMMIT: git_commit(), **(tags or {})}
        if parent_run_id:
            all_tags[TAG_PARENT] = parent_run_id
        run = client.create_run(exp_id, run_name=run_name, tags=all_tags)
        tracker = cls(uri, run.info.run_id)
        tracker._last_step = {}  # a new run has no history
        return tracker

    # ---- logging ----
    def log_config(self, cfg: Config, **extra: Any) -> None:
        """The run's params: the flat config, its effective depth, and `extra` (how it ran)."""
        self.log_params({**run_params(cfg.flat(), cfg.effective_depth), **extra})

    def log_params(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        existing = self.client.get_run(self.run_id).data.params
        new = [Param(k, str(v)) for k, v in params.items() if k not in existing]  # params are write-once
        for i in range(0, len(new), 100):
            self.client.log_batch(self.run_id, params=new[i : i + 100])

    def _last_steps(self) -> dict[str, int]:
        if self._last_step is None:
            keys = self.client.get_run(self.run_id).data.metrics
            self._last_step = {k: max(m.step for m in self.client.get_metric_history(self.run_id, k)) for k in keys}
        return self._last_step

    def last_logged_step(self) -> int:
        """The highest step of any metric in this run (-1 for none)."""
        return max(self._last_steps().values(), default=-1)

    def log_metrics(self, metrics: dict[str, Any], step: int, once_per_step: bool = True) -> None:
        """Log at `step` each metric that does not hold that step yet (a resumed run recomputes
        the steps since its checkpoint; MLflow keeps the values logged the first time).
        `once_per_step=False` logs anyway: a summary value that a later pass may update."""
        from mlflow.entities import Metric

        last = self._last_steps() if once_per_step else {}
        now = int(time.time() * 1000)
        batch = [
            Metric(k, float(v), now, step)
            for k, v in metrics.items()
            if isinstance(v, (int, float)) and k != "step" and math.isfinite(float(v)) and step > last.get(k, -1)
        ]
        if batch:
            self.client.log_batch(self.run_id, metrics=batch)
            if self._last_step is not None:
                self._last_step.update({m.key: max(step, self._last_step.get(m.key, -1)) for m in batch})

    def set_tags(self, tags: dict[str, Any]) -> None:
        for k, v in tags.items():
            self.client.set_tag(self.run_id, k, str(v))

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        path = Path(path)
        if path.is_dir():
            self.client.log_artifacts(self.run_id, str(path), artifact_path)
        else:
            self.client.log_artifact(self.run_id, str(path), artifact_path)

    def log_table(self, data: dict[str, list], artifact_file: str) -> None:
        self.client.log_table(self.run_id, data=data, artifact_file=artifact_file)

    def log_figure(self, figure, artifact_file: str) -> None:
        self.client.log_figure(self.run_id, figure, artifact_file)

    def log_text(self, text: str, artifact_file: str) -> None:
        self.client.log_text(self.run_id, text, artifact_file)

    def end(self, status: str = "FINISHED") -> None:
        self.client.set_terminated(self.run_id, status)

    def fail(self, error: BaseException) -> None:
        """End the run after `error`: KILLED for an interrupt, else FAILED."""
        self.end("KILLED" if isinstance(error, KeyboardInterrupt) else "FAILED")

    def reopen(self) -> None:
        """Mark a finished or failed run as running again (a resumed sweep or long run)."""
        self.client.update_run(self.run_id, status="RUNNING")

    def experiment_id(self) -> str:
        return self.client.get_run(self.run_id).info.experiment_id

    def history(self, key: str) -> list:
        return self.client.get_metric_history(self.run_id, key)

    def download(self, artifact_path: str) -> Path:
        return Path(self.client.download_artifacts(self.run_id, artifact_path, tempfile.mkdtemp()))


def checkpoint_uri(location: str | Path, storage: str | None = None) -> str:
    """A checkpoint's location in the one form tags hold: ``file:///abs/path`` or ``s3://bucket/key``.
    `location` is a local path (made absolute), a file:// or s3:// URI, or Ray's scheme-less path of a
    checkpoint under `storage` (Ray drops the scheme: s3://bucket/p -> "bucket/p/...")."""
    text = str(location)
    if "://" in text:
        return text
    if storage is not None and "://" in storage:
        return storage.split("://", 1)[0] + "://" + text.lstrip("/")
    return Path(text).expanduser().resolve().as_uri()


def checkpoint_path(uri: str) -> str:
    """What `trm eval --checkpoint` and `load_for_eval` open from a tag: a local folder's path for
    file:// (and for a bare path, as older runs wrote), the URI itself for s3://."""
    if uri.startswith("file://"):
        from urllib.parse import unquote, urlparse

        return unquote(urlparse(uri).path)
    return uri


def best_checkpoint_tags(
    location: str | Path,
    score: float,
    *,
    step: int | None = None,
    metric: str | None = None,
    storage: str | None = None,
) -> dict[str, Any]:
    """The tags of a run's best checkpoint, for every writer (local runs, Ray runs, long runs, sweep
    trials): its `checkpoint_uri`, score, and, when known, step and the metric that scored it."""
    tags: dict[str, Any] = {TAG_BEST_CKPT: checkpoint_uri(location, storage), TAG_BEST_SCORE: score}
    if step is not None:
        tags[TAG_BEST_STEP] = step
    if metric is not None:
        tags[TAG_BEST_METRIC] = metric
    return tags


def run_params(flat_config: dict[str, Any], effective_depth: int) -> dict[str, Any]:
    return {**flat_config, "effective_depth": effective_depth}
