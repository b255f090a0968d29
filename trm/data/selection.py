"""The selection split: the held-out groups that choose (the best checkpoint, ASHA, Optuna, the
overfitting stopper), disjoint from the ones that are reported.

A result selected on its own test split is optimistic (reference issue #26: the final checkpoint 2 %, a
hand-picked earlier one 7-8 % on the same evaluation set). So the test split is cut in two, by group, never
by row: a puzzle travels with all its augmentations (Sudoku, Maze: a test puzzle; ARC: a held-out task, all
its test inputs and augmentations), so no selection answer is also a reported one.

    selection:  ceil(fraction x groups) groups, drawn by a permutation seeded by `seed`
    reported:   every other row (ARC: unlabelled tasks too; they are voted on, never scored)

The split is a pure function of (the test split's group ids, fraction, seed): builders record the default
one in meta.json ("selection": fraction, seed, count, digest and, when short, the chosen ids); a dataset
built before that, or a run with another fraction or seed, computes it at load time. When the recorded
split's (fraction, seed) are the run's, the computed one must match its digest.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from trm.config import ConfigError

if TYPE_CHECKING:
    from trm.data.dataset import PuzzleDataset

DEFAULT_FRACTION = 0.1  # of the test split's groups (train.selection_fraction)
DEFAULT_SEED = 0  # train.selection_seed
META_KEY = "selection"
_LISTED = 1000  # meta.json lists the chosen groups up to this many (ARC: every task); a digest always
_SALT = 0x5E1EC7  # keeps the permutation apart from every other stream seeded by the same integer


class SelectionError(ConfigError):
    """A selection fraction that leaves the selection split or the reported one empty."""


@dataclass(frozen=True)
class SplitRows:
    select: np.ndarray  # test-split rows that choose (sorted)
    report: np.ndarray  # the others: what is reported (sorted)
    groups: np.ndarray  # the selection's group keys (sorted)
    pool: int  # groups it was drawn from
    by: str  # what a group is: "tasks", "puzzles" or "rows"


@dataclass(frozen=True)
class Selection:
    """How a run cuts its test split: `fraction` of its groups, drawn with `seed`."""

    fraction: float = DEFAULT_FRACTION
    seed: int = DEFAULT_SEED

    @classmethod
    def of(cls, train_cfg) -> Selection | None:
        """A run's selection (`train.selection_fraction`, `train.selection_seed`), or None when it selects on
        what it reports (`train.select_on=test`, the reference's behaviour)."""
        if getattr(train_cfg, "select_on", "selection") == "test":
            return None
        return cls(getattr(train_cfg, "selection_fraction", DEFAULT_FRACTION), getattr(train_cfg, "selection_seed", 0))

    def split(self, ds: PuzzleDataset) -> SplitRows:
        meta_file = Path(ds.path) / "meta.json"  # a dataset rebuilt in place is split afresh
        stamp = meta_file.stat().st_mtime_ns if meta_file.exists() else 0
        key = (str(ds.path), ds.split, len(ds), stamp, repr(ds.meta.get(META_KEY)), self.fraction, self.seed)
        if key not in _CACHE:
            _CACHE[key] = _split(ds, self)
        return _CACHE[key]

    def describe(self, parts: SplitRows) -> str:
        by = parts.by
        return (
            f"reported: the test split less its selection split ({parts.pool - len(parts.groups)} of {parts.pool} "
            f"{by}, {len(parts.report)} rows); select/*: the other {len(parts.groups)} {by} ({len(parts.select)} "
            f"rows; train.selection_fraction={self.fraction:g}, train.selection_seed={self.seed})"
        )


_CACHE: dict[tuple, SplitRows] = {}


def check_selection(train_cfg, data: str | Path) -> None:
    """Refuse (SelectionError, naming train.selection_fraction) a run whose selection split, or the rest,
    would be empty on the dataset at `data`; nothing to check when it selects on what it reports."""
    from trm.data.dataset import PuzzleDataset

    sel = Selection.of(train_cfg)
    if sel is not None:
        sel.split(PuzzleDataset(data, "test"))


def group_keys(arrays: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray, str]:
    """(each row's group key, the keys a selection may draw from, what a group is). ARC: the task
    (task_index), drawn from the labelled tasks only (an unlabelled one is never scored); else the puzzle
    (group_ids: one with all its augmentations); a dataset without group ids: the row."""
    if "task_index" in arrays:
        keys = np.asarray(arrays["task_index"]).astype(np.int64)
        scored = keys[np.asarray(arrays["labelled"]).astype(bool)] if "labelled" in arrays else keys
        return keys, np.unique(scored), "tasks"
    if "group_ids" in arrays:
        keys = np.asarray(arrays["group_ids"]).astype(np.int64)
        return keys, np.unique(keys), "puzzles"
    n = len(arrays["inputs"])
    return np.arange(n, dtype=np.int64), np.arange(n, dtype=np.int64), "rows"


def choose(pool: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """ceil(fraction x len(pool)) keys of `pool`, by a permutation seeded by `seed` (sorted). Refuses a
    fraction that leaves either side empty."""
    pool = np.unique(pool)
    count = math.ceil(fraction * len(pool) - 1e-9) if 0 < fraction < 1 else 0
    if not 0 < count < len(pool):
        side = "the reported split" if count >= len(pool) else "the selection split"
        raise SelectionError(
            f"train.selection_fraction={fraction:g}: leaves {side} empty ({count} of {len(pool)} test groups "
            f"selected); expected a fraction in (0, 1) that leaves both sides at least one group (or "
            f"train.select_on=test to select on what is reported, as the reference)"
        )
    perm = np.random.default_rng((_SALT, seed)).permutation(pool)
    return np.sort(perm[:count])


def digest(groups: np.ndarray) -> str:
    return hashlib.sha256(np.asarray(groups, dtype=np.int64).tobytes()).hexdigest()[:16]


def record(meta: dict, arrays: dict[str, np.ndarray]) -> None:
    """Fill `meta["selection"]` (the builder's request: fraction and seed) with the split it names, from the
    test split's arrays, so the dataset carries the default selection split in its meta."""
    want = meta.get(META_KEY)
    if not isinstance(want, dict):
        return
    fraction, seed = float(want.get("fraction", DEFAULT_FRACTION)), int(want.get("seed", DEFAULT_SEED))
    _, pool, by = group_keys(arrays)
    try:
        chosen = choose(pool, fraction, seed)
    except SelectionError:  # too few test groups for the default: the run's own fraction decides, or refuses
        meta[META_KEY] = {"fraction": fraction, "seed": seed, "by": by, "count": 0, "of": len(pool)}
        return
    rec = {"fraction": fraction, "seed": seed, "by": by, "count": len(chosen), "of": len(pool)}
    rec["digest"] = digest(chosen)
    if len(chosen) <= _LISTED:
        rec["groups"] = [int(g) for g in chosen]
        if by == "tasks" and "task_ids" in meta:
            rec["task_ids"] = [meta["task_ids"][g] for g in chosen]
    meta[META_KEY] = rec


def _split(ds: PuzzleDataset, sel: Selection) -> SplitRows:
    from trm.data.dataset import DatasetError

    keys, pool, by = group_keys(ds.arrays)
    if len(pool) == 0:  # nothing scored on either side (ARC test inputs whose outputs are unknown): no split
        return SplitRows(np.arange(0), np.arange(len(keys)), pool, 0, by)
    chosen = choose(pool, sel.fraction, sel.seed)
    rec = ds.meta.get(META_KEY)
    if (
        isinstance(rec, dict)
        and rec.get("digest")
        and (rec.get("fraction"), rec.get("seed")) == (sel.fraction, sel.seed)
        and rec["digest"] != digest(chosen)
    ):
        raise DatasetError(
            f"{ds.path}/meta.json: its selection split (fraction {sel.fraction:g}, seed {sel.seed}) is not the one "
            f"its test split's group ids give; the dataset changed after it was built: rebuild it with `trm data ...`"
        )
    mask = np.isin(keys, chosen)
    return SplitRows(np.flatnonzero(mask), np.flatnonzero(~mask), chosen, len(pool), by)
