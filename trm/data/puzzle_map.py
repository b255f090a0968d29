"""Which rows of the puzzle-embedding table belong to which task, and its fingerprint.

A checkpoint's puzzle embeddings are rows of a table indexed by puzzle id; on ARC, task t under
augmentation k is row `task_first_puzzle_id[t] + k`. Two builds of "the same" data can number the
tasks differently (one folder with --subsets, or three --src files), and then a checkpoint used
with the other build answers every task with another task's embedding, silently: the sizes
agree. So every dataset records `puzzle_map_fingerprint` in meta.json (`DatasetWriter`), every
checkpoint carries its training data's map, and evaluation, submission and fine-tuning compare
them by task id:

  * evaluate / submit (`check_same_ids`): each task of the dataset must be a task of the
    checkpoint at the same puzzle ids;
  * fine-tune (`check_extends`): tasks in both must keep their ids; new tasks are allowed (their
    rows start at the mean of the trained ones).

Sudoku and Maze have no tasks (one puzzle id): their map is the id count alone.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field

from trm.errors import TrmError

log = logging.getLogger(__name__)

FINGERPRINT = "puzzle_map_fingerprint"  # meta.json key
_warned: set[str] = set()


class PuzzleMapError(TrmError, ValueError):
    """A dataset whose puzzle ids mean other tasks than the checkpoint's; the message names them."""


@dataclass(frozen=True)
class PuzzleMap:
    num_puzzle_ids: int
    tasks: dict[str, tuple[int, int]] = field(default_factory=dict)  # task id -> (first puzzle id, count)

    @classmethod
    def of(cls, meta: dict) -> PuzzleMap:
        """The map a dataset's meta.json describes (task_ids, task_first_puzzle_id, task_num_augmentations)."""
        ids, first, count = (meta.get(k) for k in ("task_ids", "task_first_puzzle_id", "task_num_augmentations"))
        tasks = (
            {str(t): (int(f), int(c)) for t, f, c in zip(ids, first, count, strict=True)}
            if ids and first and count
            else {}
        )
        return cls(int(meta.get("num_puzzle_ids", 1)), tasks)

    @property
    def fingerprint(self) -> str:
        body = json.dumps([self.num_puzzle_ids, sorted(self.tasks.items())], separators=(",", ":"))
        return hashlib.sha256(body.encode()).hexdigest()[:16]

    def to_dict(self) -> dict:
        """What a checkpoint records (`from_dict` reads it back)."""
        return {
            "fingerprint": self.fingerprint,
            "num_puzzle_ids": self.num_puzzle_ids,
            "tasks": {t: list(v) for t, v in self.tasks.items()},
        }

    @classmethod
    def from_dict(cls, d: dict) -> PuzzleMap:
        return cls(int(d["num_puzzle_ids"]), {t: (int(v[0]), int(v[1])) for t, v in d["tasks"].items()})

    def moved(self, other: PuzzleMap) -> list[str]:
        """Tasks of both maps at other puzzle ids in `other`."""
        return [t for t, v in other.tasks.items() if t in self.tasks and self.tasks[t] != v]


def dataset_map(meta: dict, where: str) -> PuzzleMap:
    """A dataset's map; a dataset built before fingerprints were recorded is said once."""
    if FINGERPRINT not in meta and where not in _warned:
        _warned.add(where)
        log.warning(
            "%s: built before datasets recorded their puzzle-map fingerprint; its task-to-puzzle-id map "
            "is read from its task ids%s",
            where,
            "" if meta.get("task_ids") else " (none recorded)",
        )
    return PuzzleMap.of(meta)


def _names(tasks: list[str], k: int = 5) -> str:
    return ", ".join(tasks[:k]) + (f" and {len(tasks) - k} more" if len(tasks) > k else "")


def check_same_ids(saved: PuzzleMap | None, data: PuzzleMap, where: str) -> None:
    """Evaluation and submission: every task of the dataset at the checkpoint's puzzle ids."""
    if saved is None or saved.fingerprint == data.fingerprint:
        return
    moved = saved.moved(data)
    unknown = [t for t in data.tasks if t not in saved.tasks]
    if moved:
        raise PuzzleMapError(
            f"{where}: task(s) {_names(moved)} have other puzzle ids than in the checkpoint's "
            f"training data (another build order?); evaluate on the dataset it was trained on, "
            f"or rebuild this one as that was built"
        )
    if unknown:
        raise PuzzleMapError(
            f"{where}: task(s) {_names(unknown)} are not in the checkpoint's training data (their "
            f"puzzle embeddings were never trained); fine-tune on it first (trm train --init-from)"
        )
    if data.num_puzzle_ids > saved.num_puzzle_ids or (not data.tasks and data.num_puzzle_ids != saved.num_puzzle_ids):
        raise PuzzleMapError(
            f"{where}: {data.num_puzzle_ids} puzzle ids, the checkpoint's training data {saved.num_puzzle_ids}"
        )


def check_extends(saved: PuzzleMap | None, data: PuzzleMap, where: str) -> list[str]:
    """Fine-tuning: tasks in both keep their puzzle ids (new tasks are welcome); returns those tasks."""
    if saved is None:
        return []
    moved = saved.moved(data)
    if moved:
        raise PuzzleMapError(
            f"{where}: task(s) {_names(moved)} have other puzzle ids here than in the checkpoint's "
            f"training data (another build order?); their trained embeddings would be "
            f"attached to other tasks. Fine-tune on a dataset built as that one was, or on "
            f"new tasks only"
        )
    return [t for t in data.tasks if t in saved.tasks]


def checkpoint_map(state: dict, where: str) -> PuzzleMap | None:
    """The map a checkpoint was trained with: recorded in it (`extra.puzzle_map`), else read from its
    training dataset when that is still there; None (said once) when neither is known."""
    recorded = (state.get("extra") or {}).get("puzzle_map")
    if recorded:
        return PuzzleMap.from_dict(recorded)
    path = (state.get("config") or {}).get("data", {}).get("path", "")
    try:
        from trm.data.dataset import read_meta

        meta = read_meta(path)
    except (TrmError, OSError):
        meta = None
    if meta is None and where not in _warned:
        _warned.add(where)
        log.warning(
            "%s: the checkpoint records no puzzle map, and its training dataset %s is not here: task ids not checked",
            where,
            path or "?",
        )
    return PuzzleMap.of(meta) if meta else None
