"""The on-disk dataset every task shares, and the sample streams training reads.

    DIR/meta.json                 {"name", "vocab_size", "seq_len", "num_puzzle_ids",
                                   "splits": {"train": N, "test": M},
                                   "groups": {"train": {"total_groups", "total_puzzles",
                                              "mean_puzzle_examples", "epoch_samples"}, ...},
                                   ...task extras}
    DIR/<split>/inputs.npy        int  [N, seq_len]  token ids (0 = pad)
    DIR/<split>/labels.npy        int  [N, seq_len]  token ids, IGNORE where not scored
    DIR/<split>/puzzle_ids.npy    int32 [N]          row of the puzzle-embedding table
    DIR/<split>/group_ids.npy     int32 [N]          the original puzzle (ARC: task) a sample comes from
    DIR/<split>/aug_ids.npy       int32 [N]          its augmentation within that group (0 = original)
    DIR/<split>/<extra>.npy       any per-sample array a task needs (ARC: task/augmentation)

A *group* is an original puzzle and all its augmentations; a *puzzle* is one
(group, augmentation) and its *examples* are the samples that share both ids
(Sudoku and Maze: one each; ARC: a task's demonstration pairs). Training visits
every group once per epoch, in a random order, under one random augmentation,
with all that puzzle's examples together (`GroupSampler`, the reference's
sampling); datasets built before group ids existed are read row by row
(`SampleStream`). `meta["groups"]` is computed by the writer from the two arrays.

Built once (streamed to disk in chunks, into a temporary folder renamed into
place at the end, so a crash never leaves a half dataset), then memory-mapped.
"""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

import numpy as np

from trm.data.puzzle_map import FINGERPRINT, PuzzleMap
from trm.errors import TrmError

log = logging.getLogger(__name__)

IGNORE = -100  # label value excluded from loss and accuracy
GROUP_ARRAYS = ("group_ids", "aug_ids")  # per-sample group and augmentation ids


class DatasetError(TrmError, ValueError):
    """A dataset (or a source file for one) is missing or malformed; the message names it."""


class _ArrayWriter:
    """Streams row chunks straight into a .npy, written once: the header first claims 0 rows (a reader
    that opens it early sees an empty array, not a truncated one), `finish` rewrites it with the row
    count. numpy pads every header so that the first axis can grow to 21 digits in place, so the
    header keeps its length. The file lives in the writer's temporary folder until the dataset is
    published."""

    def __init__(self, path: Path):
        self.path = path
        self.f = open(self.path, "wb")
        self.dtype: np.dtype | None = None
        self.row_shape: tuple | None = None
        self.rows = 0
        self.header_len = 0

    def _header(self) -> bytes:
        assert self.dtype is not None and self.row_shape is not None  # set by the first `append`, before any header
        buf = io.BytesIO()
        np.lib.format.write_array_header_1_0(
            buf,
            {
                "descr": np.lib.format.dtype_to_descr(self.dtype),
                "fortran_order": False,
                "shape": (self.rows, *self.row_shape),
            },
        )
        return buf.getvalue()

    def append(self, chunk: np.ndarray) -> None:
        chunk = np.ascontiguousarray(chunk)
        if self.dtype is None:
            self.dtype, self.row_shape = chunk.dtype, chunk.shape[1:]
            header = self._header()
            self.header_len = len(header)
            self.f.write(header)
        elif chunk.dtype != self.dtype or chunk.shape[1:] != self.row_shape:
            raise DatasetError(
                f"{self.path.name}: chunk {chunk.dtype}{chunk.shape[1:]} does not match {self.dtype}{self.row_shape}"
            )
        self.f.write(chunk.data)
        self.rows += len(chunk)

    def finish(self) -> None:
        header = self._header()
        if len(header) != self.header_len:  # numpy's growth padding changed: never silently shift the data
            raise RuntimeError(f"{self.path.name}: .npy header grew from {self.header_len} to {len(header)} bytes")
        self.f.seek(0)
        self.f.write(header)
        self.f.close()


class DatasetWriter:
    """Write a dataset split by split, chunk by chunk; publish atomically on `close`.

    with DatasetWriter(out, meta) as w:
        w.append("train", inputs=..., labels=..., puzzle_ids=...)
    """

    def __init__(self, out: str | Path, meta: dict, overwrite: bool = False):
        self.out = Path(out)
        if self.out.exists() and not overwrite:
            raise DatasetError(f"{self.out}: already exists (pass overwrite=True / --overwrite to replace it)")
        self.meta = dict(meta)
        self.tmp = self.out.parent / f".{self.out.name}.tmp-{uuid.uuid4().hex[:8]}"
        self.tmp.mkdir(parents=True)
        self.writers: dict[str, dict[str, _ArrayWriter]] = {}

    def append(self, split: str, **arrays: np.ndarray) -> None:
        lengths = {len(a) for a in arrays.values()}
        if len(lengths) != 1:
            raise DatasetError(f"{split}: arrays of different lengths { ({k: len(a) for k, a in arrays.items()}) }")
        ws = self.writers.setdefault(split, {})
        if ws and set(ws) != set(arrays):
            raise DatasetError(f"{split}: arrays {sorted(arrays)} differ from earlier chunks {sorted(ws)}")
        for name, a in arrays.items():
            if name not in ws:
                (self.tmp / split).mkdir(exist_ok=True)
                ws[name] = _ArrayWriter(self.tmp / split / f"{name}.npy")
            ws[name].append(a)

    def close(self) -> Path:
        splits, groups = {}, {}
        for split, ws in self.writers.items():
            for required in ("inputs", "labels", "puzzle_ids"):
                if required not in ws:
                    raise DatasetError(f"{split}: missing array {required!r}")
            has = [k for k in GROUP_ARRAYS if k in ws]
            if has and len(has) != len(GROUP_ARRAYS):
                raise DatasetError(
                    f"{split}: has {has[0]!r} but not "
                    f"{[k for k in GROUP_ARRAYS if k not in ws][0]!r}; write both or neither"
                )
            for k in has:
                dtype = ws[k].dtype
                assert dtype is not None  # a writer exists only once a chunk was appended to it
                if dtype.kind not in "iu" or ws[k].row_shape != ():
                    raise DatasetError(
                        f"{split}: {k!r} must be integers, one per sample, got {ws[k].dtype}{ws[k].row_shape}"
                    )
            for w in ws.values():
                w.finish()
            splits[split] = ws["inputs"].rows
            if has:
                layout = GroupLayout(*(np.load(ws[k].path, mmap_mode="r") for k in GROUP_ARRAYS))
                groups[split] = layout.stats()
        self.meta["splits"] = splits
        if groups:
            self.meta["groups"] = groups
        if "test" in self.writers:  # the builder's default selection split, recorded (trm.data.selection)
            from trm.data.selection import record

            record(self.meta, {k: np.load(w.path, mmap_mode="r") for k, w in self.writers["test"].items()})
        self.meta[FINGERPRINT] = PuzzleMap.of(self.meta).fingerprint
        (self.tmp / "meta.json").write_text(json.dumps(self.meta, indent=2))
        if self.out.exists():
            shutil.rmtree(self.out)
        os.replace(self.tmp, self.out)
        return self.out

    def abort(self) -> None:
        for ws in self.writers.values():
            for w in ws.values():
                w.f.close()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def __enter__(self) -> DatasetWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()
            return
        try:
            self.close()
        except BaseException:  # a split refused at publication: nothing half-written stays behind
            self.abort()
            raise


def read_meta(path: str | Path) -> dict:
    meta_file = Path(path) / "meta.json"
    if not meta_file.is_file():
        raise DatasetError(f"{path}: not a dataset (no meta.json); build one with `trm data ...`")
    try:
        meta = json.loads(meta_file.read_text())
    except ValueError as e:  # JSONDecodeError and UnicodeDecodeError
        raise DatasetError(f"{meta_file}: not valid JSON ({e}); rebuild the dataset with `trm data ...`") from None
    if not isinstance(meta, dict):
        raise DatasetError(f"{meta_file}: expected a JSON object, got {type(meta).__name__}")
    return meta


class PuzzleDataset:
    """One split, memory-mapped. `arrays[name][i]` is sample i."""

    def __init__(self, path: str | Path, split: str):
        self.path, self.split = Path(path), split
        self.meta = read_meta(path)
        if split not in self.meta["splits"]:
            raise DatasetError(f"{path}: no split {split!r}; it has {sorted(self.meta['splits'])}")
        self.arrays = {f.stem: np.load(f, mmap_mode="r") for f in sorted((self.path / split).glob("*.npy"))}

    def __len__(self) -> int:
        return self.meta["splits"][self.split]

    def batch(self, idx: np.ndarray) -> dict[str, np.ndarray]:
        return {k: np.asarray(self.arrays[k][idx]) for k in ("inputs", "labels", "puzzle_ids")}


class _Stream:
    """Endless sample indices for one DDP rank from per-epoch orders, resumable from (epoch, pos).

    Training pulls as many indices as slots were freed by halting, so the count per call
    varies; `take` crosses epoch boundaries without skipping or repeating a sample."""

    kind = ""

    def __init__(self, seed: int, rank: int, world_size: int, epoch: int, pos: int):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world_size {world_size}")
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.epoch, self.pos = epoch, pos
        self._order = self._make_order()

    def _make_order(self) -> np.ndarray:
        raise NotImplementedError

    def take(self, k: int) -> np.ndarray:
        out = []
        while k > 0:
            chunk = self._order[self.pos : self.pos + k]
            out.append(chunk)
            self.pos += len(chunk)
            k -= len(chunk)
            if self.pos >= len(self._order):
                self.epoch, self.pos = self.epoch + 1, 0
                self._order = self._make_order()
        return np.concatenate(out) if out else np.empty(0, dtype=np.int64)

    def state_dict(self) -> dict:
        return {"sampler": self.kind, "epoch": self.epoch, "pos": self.pos}

    def load_state_dict(self, state: dict) -> None:
        epoch, pos = int(state["epoch"]), int(state["pos"])
        kind = state.get("sampler")  # absent in checkpoints older than the group sampler
        self.epoch, self.pos = epoch, 0
        self._order = self._make_order()
        if kind not in (None, self.kind) or not 0 <= pos <= len(self._order):
            log.warning(
                "checkpointed sample stream (%s, epoch %d, position %d) does not fit this dataset's "
                "(%s, %d samples per epoch on this rank): continuing from the start of epoch %d",
                kind or "uniform",
                epoch,
                pos,
                self.kind,
                len(self._order),
                epoch + 1,
            )
            self.epoch = epoch + 1
            self._order = self._make_order()
            return
        self.pos = pos


class SampleStream(_Stream):
    """Rows drawn uniformly: each epoch is a permutation of all samples seeded by (seed, epoch);
    rank r takes every world_size-th entry, so ranks see disjoint shards. Used for datasets
    without group ids (built before they were recorded)."""

    kind = "uniform"

    def __init__(self, n: int, seed: int, rank: int = 0, world_size: int = 1, epoch: int = 0, pos: int = 0):
        if n < world_size:
            raise DatasetError(f"dataset of {n} samples is smaller than world_size={world_size}")
        self.n = n
        self.epoch_samples = float(n - n % world_size)  # all ranks together
        super().__init__(seed, rank, world_size, epoch, pos)

    def _make_order(self) -> np.ndarray:
        perm = np.random.default_rng((self.seed, self.epoch)).permutation(self.n)
        return perm[self.rank :: self.world_size][: self.n // self.world_size]


class GroupLayout:
    """Where each puzzle's examples are, from the per-sample group and augmentation ids.

    Samples sorted by (group, augmentation), original order within: puzzle p (one group
    under one augmentation) is `rows[puzzle_start[p]:puzzle_start[p + 1]]`, and group g
    owns puzzles `group_start[g]:group_start[g + 1]`."""

    def __init__(self, group_ids: np.ndarray, aug_ids: np.ndarray):
        g, a = np.asarray(group_ids).astype(np.int64), np.asarray(aug_ids).astype(np.int64)
        if g.shape != a.shape or g.ndim != 1:
            raise DatasetError(f"group_ids {g.shape} and aug_ids {a.shape}: expected one of each per sample")
        n = len(g)
        self.num_samples = n
        if n == 0:
            self.rows = np.empty(0, np.int64)
            self.puzzle_start = self.group_start = np.zeros(1, np.int64)
            return
        _, g = np.unique(g, return_inverse=True)  # dense 0..G-1, in id order
        _, a = np.unique(a, return_inverse=True)
        key = g.reshape(-1) * (int(a.max()) + 1) + a.reshape(-1)
        self.rows = np.arange(n) if (key[1:] >= key[:-1]).all() else np.argsort(key, kind="stable")
        ks = key[self.rows]
        starts = np.flatnonzero(np.r_[True, ks[1:] != ks[:-1]])
        self.puzzle_start = np.r_[starts, n].astype(np.int64)
        pg = g.reshape(-1)[self.rows[starts]]
        self.group_start = np.r_[np.flatnonzero(np.r_[True, pg[1:] != pg[:-1]]), len(starts)].astype(np.int64)

    @classmethod
    def from_dataset(cls, ds: PuzzleDataset) -> GroupLayout:
        missing = [k for k in GROUP_ARRAYS if k not in ds.arrays]
        if missing:
            raise DatasetError(
                f"{ds.path}/{ds.split}: no {missing[0]}.npy (a dataset built before group ids "
                f"were recorded; rebuild it with `trm data ...`)"
            )
        return cls(*(ds.arrays[k] for k in GROUP_ARRAYS))

    @property
    def num_groups(self) -> int:
        return len(self.group_start) - 1

    @property
    def num_puzzles(self) -> int:
        return len(self.puzzle_start) - 1

    def stats(self) -> dict:
        """The reference's metadata (total_groups, total_puzzles, mean_puzzle_examples) and
        epoch_samples: the samples one epoch yields, the sum over groups of the mean example
        count of their puzzles (exact when a group's puzzles are the same size, as built here)."""
        if self.num_groups == 0:
            return {"total_groups": 0, "total_puzzles": 0, "mean_puzzle_examples": 0.0, "epoch_samples": 0.0}
        sizes = np.diff(self.puzzle_start)
        per_group = np.add.reduceat(sizes, self.group_start[:-1])
        return {
            "total_groups": self.num_groups,
            "total_puzzles": self.num_puzzles,
            "mean_puzzle_examples": float(self.num_samples / self.num_puzzles),
            "epoch_samples": float(np.sum(per_group / np.diff(self.group_start))),
        }


class GroupSampler(_Stream):
    """The reference's epochs: every group once, in an order seeded by (seed, epoch); for each,
    one of its augmentations drawn at random, and all that puzzle's examples back to back (in
    a random order). Rank r visits every world_size-th group of the order, so the ranks' shards
    are disjoint and together cover every group. Deterministic from (seed, epoch, rank,
    world_size); the position (epoch, pos) is the whole state."""

    kind = "groups"

    def __init__(
        self, layout: GroupLayout, seed: int, rank: int = 0, world_size: int = 1, epoch: int = 0, pos: int = 0
    ):
        if layout.num_groups < world_size:
            raise DatasetError(f"dataset of {layout.num_groups} puzzle groups is smaller than world_size={world_size}")
        self.layout = layout
        self.epoch_samples = layout.stats()["epoch_samples"]  # expected, all ranks together
        super().__init__(seed, rank, world_size, epoch, pos)

    def epoch_plan(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """(groups this rank visits in `epoch`, in order; the puzzle chosen for each)."""
        L = self.layout
        rng = np.random.default_rng((self.seed, epoch))
        order = rng.permutation(L.num_groups)
        chosen = rng.integers(L.group_start[:-1], L.group_start[1:])  # one augmentation per group
        mine = order[self.rank :: self.world_size]
        return mine, chosen[mine]

    def _make_order(self) -> np.ndarray:
        L = self.layout
        _, puzzles = self.epoch_plan(self.epoch)
        start = L.puzzle_start[puzzles]
        sizes = L.puzzle_start[puzzles + 1] - start
        total = int(sizes.sum())
        first = np.cumsum(sizes) - sizes
        pos = np.repeat(start - first, sizes) + np.arange(total)
        if sizes.max() > 1:  # examples of a puzzle in a random order, as the reference
            keys = np.random.default_rng((self.seed, self.epoch, 1 + self.rank)).random(total)
            pos = pos[np.lexsort((keys, np.repeat(np.arange(len(puzzles)), sizes)))]
        return L.rows[pos]


_told_uniform: set[str] = set()


def make_stream(ds: PuzzleDataset, seed: int, rank: int = 0, world_size: int = 1) -> _Stream:
    """The training stream of a split: `GroupSampler` when it records group ids, else the
    row-uniform `SampleStream` (said once per dataset in the log)."""
    if all(k in ds.arrays for k in GROUP_ARRAYS):
        return GroupSampler(GroupLayout.from_dataset(ds), seed, rank, world_size)
    if str(ds.path) not in _told_uniform:
        _told_uniform.add(str(ds.path))
        log.warning(
            "%s: no group ids (built before they were recorded): sampling rows uniformly, not one "
            "augmentation of every puzzle per epoch as the reference; rebuild it with `trm data ...` "
            "for the reference's epochs",
            ds.path,
        )
    return SampleStream(len(ds), seed, rank, world_size)


def epoch_size(data: str | Path | dict, split: str = "train") -> float:
    """Samples in one training epoch, all ranks together: the reference's
    total_groups * mean_puzzle_examples (the sum over groups of their puzzles' example count),
    so that steps = epochs * epoch_size(data) / global_batch_size. `data` is a dataset folder or
    its meta dict. Datasets without group ids: their sample count (one uniform pass)."""
    meta = data if isinstance(data, dict) else read_meta(data)
    if split not in meta.get("splits", {}):
        raise DatasetError(
            f"dataset {meta.get('name', '?')!r}: no split {split!r}; it has {sorted(meta.get('splits', {}))}"
        )
    g = meta.get("groups", {}).get(split)
    return float(g["epoch_samples"]) if g else float(meta["splits"][split])


class SampleRows(Protocol):
    """What evaluation reads of a split: its meta, its length and rows by index (a `PuzzleDataset`,
    or some of its rows: `trm.evaluate.Rows`)."""

    meta: dict

    def __len__(self) -> int: ...

    def batch(self, idx: np.ndarray) -> dict[str, np.ndarray]: ...


def iterate_batches(
    ds: SampleRows, batch_size: int, limit: int = 0, rank: int = 0, world_size: int = 1
) -> Iterator[tuple[np.ndarray, dict[str, np.ndarray]]]:
    """Deterministic evaluation order: this rank's shard of the first `limit` samples (0 = all)."""
    total = len(ds) if limit <= 0 else min(limit, len(ds))
    idx = np.arange(total)[rank::world_size]
    for start in range(0, len(idx), batch_size):
        sel = idx[start : start + batch_size]
        yield sel, ds.batch(sel)


def hrm_csv_rows(path: str | Path) -> Iterator[tuple[str, str, str, float]]:
    """(where, question, answer, rating) for each row of the HRM puzzle CSV format
    (`source,question,answer,rating`); `where` is 'FILE: line N' for error messages.
    The header, the column count and the rating are checked here, the grids by the caller."""
    import csv

    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: no such file")
    with open(path, newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None or [h.strip() for h in header[:3]] != ["source", "question", "answer"]:
            raise DatasetError(f"{path}: line 1: expected header 'source,question,answer,rating', got {header}")
        for line, row in enumerate(reader, start=2):
            where = f"{path}: line {line}"
            if len(row) < 3:
                raise DatasetError(f"{where}: expected at least 3 columns (source,question,answer), got {len(row)}")
            try:
                rating = float(row[3]) if len(row) > 3 and row[3].strip() else 0.0
            except ValueError:
                raise DatasetError(f"{where}: rating {row[3]!r} is not a number") from None
            yield where, row[1], row[2], rating
