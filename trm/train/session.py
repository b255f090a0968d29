"""Where a training loop runs: the `Session` interface, and `LocalSession` for one process.

The loop in `trm.train.loop` talks only to this interface, so the same code
runs alone and under DDP: on a Ray Train worker the session is
`trm.launch.worker.RaySession` (this package imports no Ray). Ray Train's own
local mode (num_workers=0) has no persistent checkpoint storage in Ray 2.60,
hence the small local session.
"""
from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from trm.train import checkpoint as ckpt

if TYPE_CHECKING:
    from trm.config import Config

log = logging.getLogger(__name__)
WriteFn = Callable[[Path], None]


class Session(Protocol):
    rank: int
    world_size: int

    def restore(self) -> contextlib.AbstractContextManager[Path | None]: ...

    def report(self, metrics: dict, step: int, write: WriteFn | None) -> None:
        """Report `metrics` at `step` (non-finite values are not tracked); checkpoint with
        `write(folder)` when given. `metrics["best/step"] == step`: this evaluation is the best so far."""
        ...

    def agree(self, decision: dict) -> dict:
        """Rank 0's `decision` on every rank (DDP ranks must checkpoint and stop together), with
        "preempting": True once a node of the run is about to be reclaimed (a spot notice)."""
        ...

    def last_logged_step(self) -> int | None:
        """Rank 0: the last step the tracker already holds (None without a tracker)."""
        ...

    def log_params(self, cfg: Config) -> None:
        """Rank 0: add `cfg`'s values to the run's params (those derived once the data is read)."""
        ...

    def set_parent(self, folder: Path) -> None:
        """Rank 0: the run is fine-tuned from the checkpoint `folder` (train.init_from)."""
        ...


class LocalSession:
    """Checkpoints in `out_dir/checkpoints` (the latest `keep` and the best by its score file, tagged
    best_checkpoint / best_score in MLflow), metrics appended to `out_dir/metrics.jsonl`."""

    rank, world_size = 0, 1

    def __init__(self, out_dir: str | Path, keep: int = 3, tracker=None,
                 on_report: Callable[[dict, int], None] | None = None):
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.keep, self.tracker, self.on_report = keep, tracker, on_report
        self.last_checkpoint: Path | None = None

    @contextlib.contextmanager
    def restore(self) -> Iterator[Path | None]:
        yield ckpt.latest_local(self.out_dir / "checkpoints")

    def report(self, metrics: dict, step: int, write: WriteFn | None) -> None:
        if write is not None:
            root = self.out_dir / "checkpoints"
            self.last_checkpoint = ckpt.save_local(root, step, write, self.keep)
            best = ckpt.best_local(root, verified=False)
            score = ckpt.read_score(best) if best is not None else None
            if self.tracker is not None and best == self.last_checkpoint and score is not None:
                from trm.tracking import (
                    TAG_BEST_CKPT,
                    TAG_BEST_METRIC,
                    TAG_BEST_SCORE,
                    TAG_BEST_STEP,
                )

                self.tracker.set_tags({TAG_BEST_CKPT: str(best.resolve()), TAG_BEST_SCORE: score["value"],
                                       TAG_BEST_METRIC: score["metric"], TAG_BEST_STEP: score["step"]})
        with open(self.out_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps({"step": step, "time": time.time(), **metrics}) + "\n")
        if self.tracker is not None:
            self.tracker.log_metrics(metrics, step)
        if self.on_report is not None:
            self.on_report(metrics, step)

    def agree(self, decision: dict) -> dict:
        return {**decision, "preempting": False}

    def last_logged_step(self) -> int | None:
        return self.tracker.last_logged_step() if self.tracker is not None else None

    def log_params(self, cfg: Config) -> None:
        if self.tracker is not None:
            self.tracker.log_config(cfg)

    def set_parent(self, folder: Path) -> None:
        if self.tracker is not None:
            from trm.tracking import TAG_INIT_FROM

            self.tracker.set_tags({TAG_INIT_FROM: str(Path(folder).resolve())})
