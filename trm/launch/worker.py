"""Ray Train: the training loop of `trm.train` as a TorchTrainer (DDP: gloo on CPU, NCCL on GPU).

Ray 2.60 runs Train V2: a TorchTrainer cannot be handed to a Tuner, so each
Tune trial is a function that builds and fits its own TorchTrainer, with
`TuneReportCallback` forwarding every `ray.train.report` to Tune (see
`trm.sweep.tune`). Re-fitting a TorchTrainer with the same
RunConfig(storage_path, name) resumes from its latest checkpoint, which is how
restarted trials and restarted jobs pick up where they stopped.
"""
from __future__ import annotations

import logging
from typing import Any

from trm.config import Config, config_from_dict

log = logging.getLogger(__name__)

METRIC = "val/exact_accuracy"


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Runs on every Ray Train worker: one rank of DDP training."""
    import ray.train
    import torch

    from trm.cost import RunLimits
    from trm.data.build import ensure_dataset
    from trm.tracking import Tracker
    from trm.train.loop import Trainer
    from trm.train.session import RaySession

    cfg = config_from_dict(config["trm_config"])
    if config.get("threads_per_worker"):
        torch.set_num_threads(int(config["threads_per_worker"]))
    cfg.data.path = str(ensure_dataset(cfg.data))  # built or downloaded once per node (file-locked)
    rank = ray.train.get_context().get_world_rank()
    tracker = None
    if rank == 0 and config.get("mlflow_run_id"):
        tracker = Tracker(config["tracking_uri"], config["mlflow_run_id"])
    trainer = Trainer(cfg, RaySession(tracker), RunLimits(**config.get("limits", {})))
    if rank == 0 and config.get("mlflow_run_id"):
        trainer.extra["mlflow_run_id"] = config["mlflow_run_id"]
    trainer.fit()


def make_trainer(cfg: Config, *, name: str, storage: str, num_workers: int = 1, gpus_per_worker: float = 0,
                 cpus_per_worker: float = 1, tracking_uri: str | None = None, mlflow_run_id: str | None = None,
                 max_failures: int = 3, num_to_keep: int = 2, metric: str = METRIC, in_tune: bool = False,
                 extra_loop_config: dict | None = None, max_preemption_failures: int = -1):
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    use_gpu = gpus_per_worker > 0
    resources = {"CPU": cpus_per_worker, **({"GPU": gpus_per_worker} if use_gpu else {})}
    callbacks = []
    if in_tune:
        from ray.tune.integration.ray_train import TuneReportCallback

        callbacks.append(TuneReportCallback())
    loop_config = {"trm_config": cfg.to_dict(), "tracking_uri": tracking_uri, "mlflow_run_id": mlflow_run_id,
                   "threads_per_worker": max(1, int(cpus_per_worker)), **(extra_loop_config or {})}
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config=loop_config,
        scaling_config=ScalingConfig(num_workers=num_workers, use_gpu=use_gpu, resources_per_worker=resources),
        run_config=RunConfig(
            name=name, storage_path=storage, callbacks=callbacks,
            checkpoint_config=CheckpointConfig(num_to_keep=num_to_keep, checkpoint_score_attribute=metric,
                                               checkpoint_score_order="max"),
            # worker errors are bounded by max_failures; spot preemptions are retried without limit
            failure_config=FailureConfig(max_failures=max_failures, max_preemption_failures=max_preemption_failures)),
    )


def run_training(cfg: Config, *, name: str, storage: str, num_workers: int, gpus_per_worker: float = 0,
                 tracking_uri: str | None = None, experiment: str = "trm-train", max_failures: int = 3,
                 mlflow_run_id: str | None = None) -> dict:
    """One DDP training run through Ray Train, outside Tune (`trm train --workers N`)."""
    from trm.data.build import stage_dataset
    from trm.sweep.cluster import connect_ray
    from trm.tracking import Tracker, resolve_uri, run_params

    connect_ray(None)
    cfg.data.path = stage_dataset(cfg.data, storage)  # an absolute path, or uploaded once to s3:// storage
    uri = resolve_uri(tracking_uri)
    tracker = Tracker(uri, mlflow_run_id) if mlflow_run_id else Tracker.create(uri, experiment, run_name=name)
    tracker.log_params(run_params(cfg.flat(), cfg.effective_depth))
    trainer = make_trainer(cfg, name=name, storage=storage, num_workers=num_workers, gpus_per_worker=gpus_per_worker,
                           tracking_uri=uri, mlflow_run_id=tracker.run_id, max_failures=max_failures)
    try:
        result = trainer.fit()
    except Exception:
        tracker.end("FAILED")
        raise
    if result.checkpoint is not None:
        tracker.set_tags({"last_checkpoint": result.checkpoint.path})
    tracker.end()
    return {"mlflow_run_id": tracker.run_id, "checkpoint": result.checkpoint.path if result.checkpoint else None,
            **(result.metrics or {})}
