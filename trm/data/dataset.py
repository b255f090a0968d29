"""The on-disk dataset every task shares, and the sample stream training reads.

    DIR/meta.json                 {"name", "vocab_size", "seq_len", "num_puzzle_ids",
                                   "splits": {"train": N, "test": M}, ...task extras}
    DIR/<split>/inputs.npy        int  [N, seq_len]  token ids (0 = pad)
    DIR/<split>/labels.npy        int  [N, seq_len]  token ids, IGNORE where not scored
    DIR/<split>/puzzle_ids.npy    int32 [N]          row of the puzzle-embedding table
    DIR/<split>/<extra>.npy       any per-sample array a task needs (ARC: task/augmentation)

Built once (streamed to disk in chunks, into a temporary folder renamed into
place at the end, so a crash never leaves a half dataset), then memory-mapped.
"""
from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Iterator

import numpy as np

IGNORE = -100  # label value excluded from loss and accuracy


class DatasetError(ValueError):
    pass


class _ArrayWriter:
    """Appends row chunks to a raw file; `finish` turns it into a .npy without loading it."""

    def __init__(self, path: Path):
        self.path, self.raw = path, path.with_suffix(".raw")
        self.f = open(self.raw, "wb")
        self.dtype: np.dtype | None = None
        self.row_shape: tuple | None = None
        self.rows = 0

    def append(self, chunk: np.ndarray) -> None:
        chunk = np.ascontiguousarray(chunk)
        if self.dtype is None:
            self.dtype, self.row_shape = chunk.dtype, chunk.shape[1:]
        elif chunk.dtype != self.dtype or chunk.shape[1:] != self.row_shape:
            raise DatasetError(f"{self.path.name}: chunk {chunk.dtype}{chunk.shape[1:]} does not match "
                               f"{self.dtype}{self.row_shape}")
        self.f.write(chunk.tobytes())
        self.rows += len(chunk)

    def finish(self) -> None:
        self.f.close()
        header = {"descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False,
                  "shape": (self.rows, *self.row_shape)}
        with open(self.path, "wb") as out, open(self.raw, "rb") as src:
            np.lib.format.write_array_header_1_0(out, header)
            shutil.copyfileobj(src, out, length=16 << 20)
        self.raw.unlink()


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
            raise DatasetError(f"{split}: arrays of different lengths {({k: len(a) for k, a in arrays.items()})}")
        ws = self.writers.setdefault(split, {})
        if ws and set(ws) != set(arrays):
            raise DatasetError(f"{split}: arrays {sorted(arrays)} differ from earlier chunks {sorted(ws)}")
        for name, a in arrays.items():
            if name not in ws:
                (self.tmp / split).mkdir(exist_ok=True)
                ws[name] = _ArrayWriter(self.tmp / split / f"{name}.npy")
            ws[name].append(a)

    def close(self) -> Path:
        splits = {}
        for split, ws in self.writers.items():
            for required in ("inputs", "labels", "puzzle_ids"):
                if required not in ws:
                    raise DatasetError(f"{split}: missing array {required!r}")
            for w in ws.values():
                w.finish()
            splits[split] = ws["inputs"].rows
        self.meta["splits"] = splits
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

    def __enter__(self) -> "DatasetWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def read_meta(path: str | Path) -> dict:
    meta_file = Path(path) / "meta.json"
    if not meta_file.is_file():
        raise DatasetError(f"{path}: not a dataset (no meta.json); build one with `trm data ...`")
    return json.loads(meta_file.read_text())


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


class SampleStream:
    """Endless shuffled sample indices for one DDP rank, resumable from (epoch, pos).

    Each epoch is a permutation seeded by (seed, epoch); rank r takes every
    world_size-th entry, so ranks see disjoint shards. Training pulls as many
    indices as slots were freed by halting, so the count per call varies.
    """

    def __init__(self, n: int, seed: int, rank: int = 0, world_size: int = 1, epoch: int = 0, pos: int = 0):
        if n < world_size:
            raise DatasetError(f"dataset of {n} samples is smaller than world_size={world_size}")
        self.n, self.seed, self.rank, self.world_size = n, seed, rank, world_size
        self.epoch, self.pos = epoch, pos
        self._perm = self._make_perm()

    def _make_perm(self) -> np.ndarray:
        perm = np.random.default_rng((self.seed, self.epoch)).permutation(self.n)
        return perm[self.rank::self.world_size][: self.n // self.world_size]

    def take(self, k: int) -> np.ndarray:
        out = []
        while k > 0:
            chunk = self._perm[self.pos:self.pos + k]
            out.append(chunk)
            self.pos += len(chunk)
            k -= len(chunk)
            if self.pos >= len(self._perm):
                self.epoch, self.pos = self.epoch + 1, 0
                self._perm = self._make_perm()
        return np.concatenate(out) if out else np.empty(0, dtype=np.int64)

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "pos": self.pos}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.pos = int(state["epoch"]), int(state["pos"])
        self._perm = self._make_perm()


def iterate_batches(ds: PuzzleDataset, batch_size: int, limit: int = 0, rank: int = 0,
                    world_size: int = 1) -> Iterator[tuple[np.ndarray, dict[str, np.ndarray]]]:
    """Deterministic evaluation order: this rank's shard of the first `limit` samples (0 = all)."""
    total = len(ds) if limit <= 0 else min(limit, len(ds))
    idx = np.arange(total)[rank::world_size]
    for start in range(0, len(idx), batch_size):
        sel = idx[start:start + batch_size]
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
