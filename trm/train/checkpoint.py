"""Checkpoint files: atomic writes, digests, score files, and finding the latest / best / given one.

What goes into the files is `trm.train.state`'s (the one writer and reader of their schema).
A checkpoint is a folder:
    state.pt        rank 0: config, model, EMA, optimizer, scheduler, step, tracking ids, history
    rank<r>.pt      each DDP rank: its carried (y, z) and slots, data-stream position, RNG
    *.sha256        digest of each file, written after it; verified on load

Under Ray Train every rank writes into a folder of the same name and Ray merges
them in storage. Locally, `save_local` writes into a temporary folder and
renames it into place only when complete, so a crash mid-write never becomes
the latest checkpoint; `latest_local` skips folders whose state.pt fails its digest
(the same check as a Ray Train worker's, `trm.launch.worker.RaySession`).
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from trm.errors import TrmError

log = logging.getLogger(__name__)


class CheckpointError(TrmError, RuntimeError):
    """A checkpoint that is missing, corrupt or does not fit this run's config."""


class DiskFullError(TrmError, RuntimeError):
    """Writing a checkpoint ran out of space (or hit a file-size limit); the last good one is kept."""

    end_reason = "disk_full"  # the MLflow run's end reason (trm.tracking.runs.fail_run)


# out of space, out of quota, over the process's file-size limit: the run cannot write its checkpoint
DISK_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def disk_error(error: BaseException) -> OSError | None:
    """The out-of-space OSError behind `error`, if any: torch's writer raises its own RuntimeError
    ("unexpected pos ...") with the OSError of the file object's write() as its context."""
    seen: set[int] = set()
    e: BaseException | None = error
    while e is not None and id(e) not in seen:
        if isinstance(e, OSError) and e.errno in DISK_FULL:
            return e
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return None


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_file(folder: Path, name: str, obj: Any) -> None:
    """torch.save then its digest; the digest is written last, so its presence means complete."""
    path = folder / name
    tmp = folder / f".{name}.tmp"
    with open(tmp, "wb") as f:  # a file object, not a path: a failed write keeps its errno (disk full)
        torch.save(obj, f)
    os.replace(tmp, path)
    (folder / f"{name}.sha256").write_text(_digest(path))


def read_file(folder: Path, name: str) -> Any:
    verify_digests(folder, [name])
    path = folder / name
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:
        raise CheckpointError(f"{folder}: {name} cannot be read: {e}") from e


def verify(folder: Path) -> None:
    """The checkpoint's state.pt is complete and matches its digest (no unpickling)."""
    verify_digests(folder, ["state.pt"])


def verify_digests(folder: Path, names: list[str] | None = None) -> None:
    """The files `names` (default: every file with a digest) match their digests; no unpickling."""
    for name in names if names is not None else [d.name[: -len(".sha256")] for d in folder.glob("*.sha256")]:
        path, digest = folder / name, folder / f"{name}.sha256"
        if not path.is_file() or not digest.is_file():
            raise CheckpointError(f"{folder}: {name} is missing or incomplete")
        if _digest(path) != digest.read_text().strip():
            raise CheckpointError(f"{folder}: {name} is corrupt (checksum mismatch)")


def step_dir_name(step: int) -> str:
    return f"step_{step:09d}"


def step_of(name: str) -> int:
    """The step of a checkpoint folder named by `step_dir_name` (with a "-N" suffix when one of that step
    was already taken)."""
    return int(name.split("_", 1)[1].split("-")[0])


def save_local(root: Path, step: int, write: Callable[[Path], None], keep: int) -> Path:
    """Call write(tmp_folder), then publish it as root/step_N atomically; keep the newest `keep`.
    Out of disk space: `DiskFullError` naming the step, the folder and the last good checkpoint."""
    try:
        root.mkdir(parents=True, exist_ok=True)
        tmp = root / f".tmp-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
    except OSError as e:
        _raise_if_disk_full(e, root, step)
        raise
    try:
        write(tmp)
        verify(tmp)
        final = root / step_dir_name(step)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)  # frees what the partial write took
        _raise_if_disk_full(e, root, step)
        raise
    best = best_local(root, verified=False)
    for old in sorted(p for p in root.glob("step_*") if p.is_dir())[:-keep]:
        if old != best:  # the latest `keep` for resume, and never the best
            shutil.rmtree(old, ignore_errors=True)
    return final


def _raise_if_disk_full(error: BaseException, root: Path, step: int) -> None:
    if (cause := disk_error(error)) is None or cause.errno is None:  # disk_error's have an errno (in DISK_FULL)
        return
    last = latest_local(root)
    kept = f"the last good checkpoint {last.name} is kept" if last is not None else "no checkpoint was written yet"
    raise DiskFullError(
        f"disk full while writing checkpoint {step_dir_name(step)} under {root} ({os.strerror(cause.errno)}); {kept}",
    ) from error


# ---------------------------------------------------------------- the best checkpoint
SCORE_FILE = "score.json"  # {"metric", "value", "step", "mode"}: the evaluation this checkpoint was written after


def write_score(folder: Path, metric: str, value: float, step: int, mode: str = "max") -> None:
    import json

    (folder / SCORE_FILE).write_text(json.dumps({"metric": metric, "value": value, "step": step, "mode": mode}))


def read_score(folder: Path) -> dict | None:
    import json
    import math

    try:
        s = json.loads((folder / SCORE_FILE).read_text())
        return s if isinstance(s.get("value"), (int, float)) and math.isfinite(s["value"]) else None
    except (OSError, ValueError, AttributeError):
        return None


def best_local(root: Path, verified: bool = True) -> Path | None:
    """The checkpoint under root with the best score (the highest, or the lowest for an objective of
    mode "min"; the later one on a tie), None if none is scored; with `verified`, only one whose
    state.pt matches its digest."""
    if not root.is_dir():
        return None
    scored = [
        (s["value"] if s.get("mode", "max") == "max" else -s["value"], p.name, p)
        for p in root.glob("step_*")
        if p.is_dir() and (s := read_score(p))
    ]
    for _, _, folder in sorted(scored, key=lambda x: (x[0], x[1]), reverse=True):
        try:
            if verified:
                verify(folder)
            return folder
        except CheckpointError as e:
            log.warning("skipping checkpoint: %s", e)
    return None


def resolve(path: str | Path, flag: str = "--checkpoint", prefer: str = "best") -> Path:
    """A checkpoint folder from what a user gives: the folder itself (it holds state.pt), or a run
    folder (runs/NAME, or its checkpoints/): its best checkpoint by default, else its latest. A file://
    URI (how MLflow's best_checkpoint tag names a local checkpoint) is its path."""
    if str(path).startswith("file://"):
        from urllib.parse import unquote, urlparse

        path = unquote(urlparse(str(path)).path)
    folder = Path(path)
    if (folder / "state.pt").is_file():
        return folder
    for root in (folder / "checkpoints", folder):
        found = (best_local(root) if prefer == "best" else None) or latest_local(root)
        if found is not None:
            return found
    raise CheckpointError(
        f"{flag} {path}: no checkpoint there (expected a checkpoint folder with state.pt, "
        f"or a run folder with checkpoints/step_*)"
    )


def check_resumable(root: Path, where: str) -> None:
    """A run whose checkpoints under `root` all fail verification is refused, naming the files: it
    used to warn and train again from step 0 (a second copy of every step). `--restart` starts over
    on purpose."""
    folders = sorted((p for p in root.glob("step_*") if p.is_dir()), reverse=True) if root.is_dir() else []
    problems = []
    for folder in folders:
        try:
            verify(folder)
            return
        except CheckpointError as e:
            problems.append(f"{folder.name}/{str(e).removeprefix(f'{folder}: ')}")
    if problems:
        raise CheckpointError(
            f"{where}: none of its {len(problems)} checkpoints under {root} verifies ({'; '.join(problems)}); "
            "nothing was changed; pass --restart to start over from step 0 (the old files are moved aside)"
        )


def latest_local(root: Path) -> Path | None:
    """Newest checkpoint under root whose state.pt matches its digest (no unpickling: the ARC puzzle
    table makes it GBs); corrupt ones are reported and skipped."""
    if not root.is_dir():
        return None
    for folder in sorted((p for p in root.glob("step_*") if p.is_dir()), reverse=True):
        try:
            verify(folder)
            return folder
        except CheckpointError as e:
            log.warning("skipping checkpoint: %s", e)
    return None
