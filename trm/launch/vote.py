"""The ARC augmentation vote over Ray workers: each task loads the checkpoint and predicts a
shard of the test split, the driver votes (`trm.evaluate.vote`) on the shards as they arrive."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from trm.evaluate import Predictions
from trm.evaluate.vote import VoteResult, VoteSamples, check_model, predict_rows, vote_on

log = logging.getLogger(__name__)


def _predict_shard(checkpoint_dir: str, data_path: str, start: int, stop: int, batch_size: int,
                   device: str, use_ema: bool) -> Predictions:
    """Ray task body: load the checkpoint and predict rows [start, stop) of the test split."""
    import torch

    from trm.data.dataset import PuzzleDataset
    from trm.train.loop import load_for_eval

    model, _, _ = load_for_eval(checkpoint_dir, device=device, use_ema=use_ema)
    ds = PuzzleDataset(data_path, "test")
    check_model(model, ds)
    return predict_rows(model, ds, start, stop, batch_size, torch.device(device))


def vote_with_ray(checkpoint_dir: str | Path, data_path: str | Path, num_workers: int, batch_size: int = 64,
                  device: str = "cpu", use_ema: bool = True, limit: int = 0, num_gpus_per_worker: float = 0.0,
                  keep_predictions: bool = False) -> VoteResult:
    """The vote as a Ray job: `num_workers` remote tasks each load the checkpoint and
    predict a contiguous shard of the test split; the driver votes on what they return.

    Uses the running Ray (ray.init first to pick a cluster); starts and stops a local
    one otherwise. checkpoint_dir and data_path must be readable by every worker."""
    import ray

    from trm.config import ConfigError
    from trm.data.dataset import PuzzleDataset

    if num_workers < 1:
        raise ConfigError(f"num_workers={num_workers}: expected >= 1")
    ds = PuzzleDataset(data_path, "test")
    samples = VoteSamples.from_dataset(ds)
    stop = len(ds) if limit <= 0 else min(limit, len(ds))
    bounds = np.linspace(0, stop, num_workers + 1).astype(int)
    started = not ray.is_initialized()
    if started:
        ray.init(include_dashboard=False)
    try:
        task = ray.remote(num_cpus=1, num_gpus=num_gpus_per_worker, max_retries=2)(_predict_shard)
        refs = [task.remote(str(Path(checkpoint_dir).resolve()), str(Path(data_path).resolve()), int(a), int(b),
                            batch_size, device, use_ema) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]

        def as_done():  # vote on shards as they finish, so the driver holds one shard at a time
            pending = list(refs)
            while pending:
                done, pending = ray.wait(pending, num_returns=1)
                yield ray.get(done[0])

        result = vote_on(samples, as_done(), keep_predictions)
    finally:
        if started:
            ray.shutdown()
    log.info("vote_with_ray: %d rows over %d workers", stop, len(refs))
    return result
