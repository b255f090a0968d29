"""Where a training loop runs: one process (`LocalSession`) or a Ray Train worker (`RaySession`).

The loop in `trm.train.loop` talks only to this interface, so the same code
runs alone and under DDP. Ray Train's own local mode (num_workers=0) has no
persistent checkpoint storage in Ray 2.60, hence the small local session.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterator, Protocol

from trm.train import checkpoint as ckpt

log = logging.getLogger(__name__)
WriteFn = Callable[[Path], None]


class Session(Protocol):
    rank: int
    world_size: int

    def restore(self) -> contextlib.AbstractContextManager[Path | None]: ...

    def report(self, metrics: dict, step: int, write: WriteFn | None) -> None:
        """Report `metrics` at `step` (non-finite values are not tracked); checkpoint with
        `write(folder)` when given."""
        ...

    def agree(self, decision: dict) -> dict:
        """Rank 0's `decision` on every rank (DDP ranks must checkpoint and stop together), with
        "preempting": True once a node of the run is about to be reclaimed (a spot notice)."""
        ...

    def last_logged_step(self) -> int | None:
        """Rank 0: the last step the tracker already holds (None without a tracker)."""
        ...


class LocalSession:
    """Checkpoints in `out_dir/checkpoints`, metrics appended to `out_dir/metrics.jsonl`."""

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
            self.last_checkpoint = ckpt.save_local(self.out_dir / "checkpoints", step, write, self.keep)
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


TMP_PREFIX = "trm-ckpt-"


def _remove_stale_tmp(root: Path) -> None:
    """Checkpoint staging folders of dead processes (a worker killed mid-write leaves one)."""
    for d in root.glob(f"{TMP_PREFIX}*-*"):
        try:
            os.kill(int(d.name[len(TMP_PREFIX):].split("-")[0]), 0)
        except ProcessLookupError:
            shutil.rmtree(d, ignore_errors=True)
        except (ValueError, PermissionError):
            pass


class RaySession:
    """Inside `TorchTrainer`'s train_loop_per_worker: Ray persists and restores checkpoints."""

    def __init__(self, tracker=None):
        import ray.train

        self._train = ray.train
        ctx = ray.train.get_context()
        self.rank, self.world_size = ctx.get_world_rank(), ctx.get_world_size()
        self.tracker = tracker if self.rank == 0 else None
        # checkpoint names Ray holds: after resuming below a corrupt one, a new checkpoint under
        # its name would be deleted with it
        self._taken: set[str] = set()
        _remove_stale_tmp(Path(tempfile.gettempdir()))

    @contextlib.contextmanager
    def restore(self) -> Iterator[Path | None]:
        """The latest checkpoint whose state.pt matches its digest, else the newest older one kept by
        Ray that does. Rank 0 chooses and every rank opens its choice: ranks must resume together."""
        from ray.train.collective import broadcast_from_rank_zero

        choice = self._choose() if self.rank == 0 else None
        chosen, self._taken, error = broadcast_from_rank_zero(choice)
        if error:
            raise ckpt.CheckpointError(error)
        if chosen is None:
            yield None
            return
        with chosen.as_directory() as d:
            yield Path(d)

    def _choose(self) -> tuple:
        """(checkpoint or None, names Ray holds, error or None), on rank 0."""
        from ray.train import CheckpointConsistencyMode

        latest = self._train.get_checkpoint()
        if latest is None:
            return None, set(), None
        reported = [r.checkpoint for r in self._train.get_all_reported_checkpoints(
            consistency_mode=CheckpointConsistencyMode.COMMITTED)]
        taken = {Path(c.path).name for c in [latest, *reported]}
        older = sorted((c for c in reported if c.path != latest.path), key=lambda c: c.path, reverse=True)
        for checkpoint in [latest, *older]:
            with checkpoint.as_directory() as d:
                try:
                    ckpt.verify_digests(Path(d), ["state.pt"])
                    return checkpoint, taken, None
                except ckpt.CheckpointError as e:
                    log.warning("skipping checkpoint %s: %s", checkpoint.path, e)
        return None, taken, (f"no checkpoint of this run matches its digests (tried {1 + len(older)}, "
                             f"newest {latest.path})")

    def report(self, metrics: dict, step: int, write: WriteFn | None) -> None:
        if self.tracker is not None:
            self.tracker.log_metrics(metrics, step)
        if write is None:
            self._train.report(metrics)
            return
        tmp = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{os.getpid()}-"))
        try:
            write(tmp)
            ckpt.verify_digests(tmp)  # write, verify, then publish: Ray registers it once every rank's part is stored
            name, n = ckpt.step_dir_name(step), 0
            while name in self._taken:
                n += 1
                name = f"{ckpt.step_dir_name(step)}-{n}"
            self._train.report(metrics, checkpoint=self._train.Checkpoint.from_directory(tmp),
                               checkpoint_dir_name=name)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def agree(self, decision: dict) -> dict:
        from ray.train.collective import broadcast_from_rank_zero

        # both are barriers: every rank calls them at the same steps
        preempting = self._train.get_preemption_info() is not None
        return {**broadcast_from_rank_zero(decision), "preempting": preempting}

    def last_logged_step(self) -> int | None:
        return self.tracker.last_logged_step() if self.tracker is not None else None
