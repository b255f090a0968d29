"""One DDP training run through Ray Train, outside Tune: `trm train --workers N`."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from trm.config import Config
from trm.launch.cluster import WorkerSpec, preflight
from trm.launch.worker import WorkerRun, checkpoint_location, make_trainer


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
    tracking: bool = True,
    on_ready: Callable[[Config], None] | None = None,
) -> dict[str, Any]:
    """Check everything (`preflight`), call `on_ready(cfg)`, train run `name` under `storage`
    (resuming from its latest checkpoint there), and return its final metrics, MLflow run id and
    last checkpoint."""
    from trm.storage import resolve
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
    tracker = runs.single_run(uri, experiment, name, cfg, mlflow_run_id) if tracking else None
    trainer = make_trainer(
        WorkerRun(cfg, uri, tracker.run_id if tracker else None),
        name=name,
        storage=storage,
        spec=spec,
        max_failures=max_failures,
    )
    with runs.guard(tracker):
        result = trainer.fit()
    checkpoint = checkpoint_location(storage, result.checkpoint)
    best = None
    if tracker is not None:
        best = tag_best(tracker, storage, result)  # rank 0 tags it as it goes; here with its full location
        runs.finish_run(tracker, checkpoint=checkpoint)
    return {
        "mlflow_run_id": tracker.run_id if tracker else None,
        "checkpoint": checkpoint,
        "best_checkpoint": best,
        **(result.metrics or {}),
    }


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
    tags = best_checkpoint_tags(checkpoint_location(storage, best), score, step=metrics.get("step"), storage=storage)
    tracker.set_tags(tags)
    return tags[TAG_BEST_CKPT]
