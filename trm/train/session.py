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
from typing import TYPE_CHECKING, Any, Protocol

from trm.spot import SpotWatcher
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

    def run_metrics(self) -> dict[str, float]:
        """Rank 0: run/* figures only the session knows (under Ray: restarts and the work they lost)."""
        ...


class TrackedSession:
    """What a session does through its tracker (an MLflow run, or None: nothing), the same on one
    machine (`LocalSession`) and on a Ray worker (`trm.launch.worker.RaySession`)."""

    tracker: Any = None

    def last_logged_step(self) -> int | None:
        return self.tracker.last_logged_step() if self.tracker is not None else None

    def log_params(self, cfg: Config) -> None:
        if self.tracker is not None:
            self.tracker.log_config(cfg)

    def run_metrics(self) -> dict[str, float]:
        return {}

    def set_parent(self, folder: Path) -> None:
        if self.tracker is not None:
            from trm.tracking import TAG_INIT_FROM

            self.tracker.set_tags({TAG_INIT_FROM: str(Path(folder).resolve())})


class LocalSession(TrackedSession):
    """Checkpoints in `out_dir/checkpoints` (the latest `keep` and the best by its score file, tagged
    best_checkpoint / best_score in MLflow), metrics appended to `out_dir/metrics.jsonl`."""

    rank, world_size = 0, 1

    def __init__(
        self, out_dir: str | Path, keep: int = 3, tracker=None, on_report: Callable[[dict, int], None] | None = None
    ):
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.keep, self.tracker, self.on_report = keep, tracker, on_report
        self.last_checkpoint: Path | None = None
        self.spot = SpotWatcher().start()  # a spot notice on this machine: checkpoint at the next boundary

    @contextlib.contextmanager
    def restore(self) -> Iterator[Path | None]:
        ckpt.check_resumable(self.out_dir / "checkpoints", f"--out {self.out_dir}")  # never silently from step 0
        folder = ckpt.latest_local(self.out_dir / "checkpoints")
        self._cut_log(ckpt.step_of(folder.name) if folder is not None else 0)
        yield folder

    def _cut_log(self, step: int) -> None:
        """metrics.jsonl back to the steps up to `step` (where training resumes), so that no step is
        logged twice; rewritten atomically."""
        path = self.out_dir / "metrics.jsonl"
        if not path.is_file():
            return
        lines = path.read_text().splitlines(keepends=True)
        kept = [line for line in lines if line.strip() and json.loads(line).get("step", 0) <= step]
        if len(kept) != len(lines):
            tmp = path.with_suffix(".jsonl.tmp")
            tmp.write_text("".join(kept))
            tmp.replace(path)
            log.info(
                "%s: %d records after step %d dropped (training resumes there)", path, len(lines) - len(kept), step
            )

    def report(self, metrics: dict, step: int, write: WriteFn | None) -> None:
        if write is not None:
            root = self.out_dir / "checkpoints"
            self.last_checkpoint = ckpt.save_local(root, step, write, self.keep)
            best = ckpt.best_local(root, verified=False)
            score = ckpt.read_score(best) if best is not None else None
            if self.tracker is not None and best == self.last_checkpoint and score is not None:
                from trm.tracking import best_checkpoint_tags

                self.tracker.set_tags(
                    best_checkpoint_tags(best, score["value"], step=score["step"], metric=score["metric"])
                )
        try:
            with open(self.out_dir / "metrics.jsonl", "a") as f:
                f.write(json.dumps({"step": step, "time": time.time(), **metrics}) + "\n")
        except OSError as e:
            if ckpt.disk_error(e) is None:
                raise
            kept = f"the last good checkpoint {self.last_checkpoint.name} is kept" if self.last_checkpoint else ""
            raise ckpt.DiskFullError(
                f"disk full while writing {self.out_dir / 'metrics.jsonl'} at step {step} ({e.strerror})"
                + (f"; {kept}" if kept else "")
            ) from e
        if self.tracker is not None:
            self.tracker.log_metrics(metrics, step)
        if self.on_report is not None:
            self.on_report(metrics, step)

    def agree(self, decision: dict) -> dict:
        return {**decision, "preempting": self.spot.noticed.is_set()}


ASIDE = "checkpoints.old-"  # + UTC time: where `trm train --restart` moves a run's previous files


def set_aside(folder: Path, keep: tuple[str, ...] = ()) -> Path | None:
    """`trm train --restart`: every entry of the run folder (checkpoints, metrics.jsonl, the MLflow
    run id, config.yaml; Ray's records under --workers) moved into `folder/checkpoints.old-<UTC time>`,
    except `keep` (the run lock) and earlier sets aside; the run then starts from step 0 with a
    new MLflow run. Returns where they went (None: nothing to move)."""
    entries = [p for p in folder.iterdir() if p.name not in keep and not p.name.startswith(ASIDE)]
    if not entries:
        return None
    aside = folder / f"{ASIDE}{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}"
    aside.mkdir()
    for entry in entries:
        entry.rename(aside / entry.name)
    log.info("--restart: the previous files of %s moved to %s", folder, aside)
    return aside
