"""One DDP training run through Ray Train, outside Tune: `trm train --workers N`."""
from __future__ import annotations

from typing import Any, Callable

from trm.config import Config
from trm.launch.cluster import WorkerSpec, preflight
from trm.launch.worker import WorkerRun, checkpoint_location, make_trainer


def run_training(cfg: Config, *, name: str, storage: str, spec: WorkerSpec, tracking_uri: str | None = None,
                 experiment: str = "trm-train", max_failures: int = 3, mlflow_run_id: str | None = None,
                 address: str | None = None, tracking: bool = True,
                 on_ready: Callable[[Config], None] | None = None) -> dict[str, Any]:
    """Check everything (`preflight`), call `on_ready(cfg)`, train run `name` under `storage`
    (resuming from its latest checkpoint there), and return its final metrics, MLflow run id and
    last checkpoint."""
    from trm.storage import resolve
    from trm.tracking import runs

    storage = resolve(storage)
    uri = preflight(cfg, storage=storage, tracking_uri=tracking_uri, address=address, spec=spec,
                    what=spec.describe(), tracking=tracking)
    if on_ready is not None:
        on_ready(cfg)
    tracker = runs.single_run(uri, experiment, name, cfg, mlflow_run_id) if tracking else None
    trainer = make_trainer(WorkerRun(cfg, uri, tracker.run_id if tracker else None), name=name, storage=storage,
                           spec=spec, max_failures=max_failures)
    with runs.guard(tracker):
        result = trainer.fit()
    checkpoint = checkpoint_location(storage, result.checkpoint)
    if tracker is not None:
        runs.finish_run(tracker, checkpoint=checkpoint)
    return {"mlflow_run_id": tracker.run_id if tracker else None, "checkpoint": checkpoint, **(result.metrics or {})}
