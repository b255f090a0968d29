"""Is a dataset folder what its meta.json says, before a run writes anything?

`check_dataset(path)` reads every array's .npy header (never its data, but for the two
value checks) and refuses, naming the file and what was expected:
  * meta.json that does not parse or lacks a key the loader reads;
  * an array whose file size differs from what its header and shape need (a truncated copy
    fails later inside numpy as "mmap length is greater than file size");
  * a row count or width that differs from meta.json's splits / seq_len;
  * token ids outside [0, vocab_size) (an IndexError deep inside the model otherwise), labels
    outside it but for the ignore value, puzzle ids outside [0, num_puzzle_ids).
The value checks are a vectorised min/max over the memory map in chunks of `CHUNK_BYTES`, so a
multi-GB ARC split costs seconds (disk speed), once per run start.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

from trm.data.dataset import IGNORE, DatasetError, read_meta

log = logging.getLogger(__name__)

META_KEYS = {"vocab_size": int, "seq_len": int, "num_puzzle_ids": int, "splits": dict}  # what the loader reads
REQUIRED_ARRAYS = ("inputs", "labels", "puzzle_ids")
CHUNK_BYTES = 64 << 20


def check_dataset(path: str | Path, splits: tuple[str, ...] | None = None) -> dict:
    """Check the dataset at `path` (the splits `splits`, default every split); returns its meta."""
    path = Path(path)
    meta = read_meta(path)
    where = path / "meta.json"
    for key, kind in META_KEYS.items():
        if key not in meta:
            raise DatasetError(f"{where}: missing key {key!r}; rebuild the dataset with `trm data ...`")
        if not isinstance(meta[key], kind) or isinstance(meta[key], bool) or (kind is int and meta[key] < 1):
            raise DatasetError(
                f"{where}: {key}={meta[key]!r}: expected "
                f"{'a positive integer' if kind is int else 'an object {split: samples}'}"
            )
    t0 = time.perf_counter()
    for split in splits if splits is not None else tuple(meta["splits"]):
        if split not in meta["splits"]:
            raise DatasetError(f"{path}: no split {split!r}; it has {sorted(meta['splits'])}")
        _check_split(path, split, meta)
    log.debug("dataset %s checked in %.2fs", path, time.perf_counter() - t0)
    return meta


def _check_split(path: Path, split: str, meta: dict) -> None:
    n = meta["splits"][split]
    if not isinstance(n, int) or isinstance(n, bool) or n < 0:
        raise DatasetError(f"{path / 'meta.json'}: splits.{split}={n!r}: expected a number of samples >= 0")
    folder = path / split
    for name in REQUIRED_ARRAYS:
        if not (folder / f"{name}.npy").is_file():
            raise DatasetError(f"{folder / (name + '.npy')}: missing; rebuild the dataset with `trm data ...`")
    arrays = {}
    for f in sorted(folder.glob("*.npy")):
        shape, dtype = npy_header(f)
        if not shape or shape[0] != n:
            raise DatasetError(f"{f}: {shape[0] if shape else 0} rows, but meta.json says {split} has {n} samples")
        arrays[f.stem] = (f, shape, dtype)
    seq_len, vocab = meta["seq_len"], meta["vocab_size"]
    for name in ("inputs", "labels"):
        f, shape, dtype = arrays[name]
        if shape[1:] != (seq_len,) or dtype.kind not in "iu":
            raise DatasetError(f"{f}: {dtype}{list(shape)}: expected integers of shape [{n}, {seq_len}] (seq_len)")
    f, shape, dtype = arrays["puzzle_ids"]
    if shape != (n,) or dtype.kind not in "iu":
        raise DatasetError(f"{f}: {dtype}{list(shape)}: expected integers of shape [{n}] (one per sample)")
    _within(arrays["inputs"][0], 0, vocab, "token ids", f"[0, vocab_size={vocab})")
    _within(arrays["labels"][0], 0, vocab, "label ids", f"[0, vocab_size={vocab}) or {IGNORE} (ignored)", ignore=IGNORE)
    _within(
        arrays["puzzle_ids"][0],
        0,
        meta["num_puzzle_ids"],
        "puzzle ids",
        f"[0, num_puzzle_ids={meta['num_puzzle_ids']})",
    )


def npy_header(f: Path) -> tuple[tuple[int, ...], np.dtype]:
    """(shape, dtype) from a .npy header, after checking the file holds exactly that much data."""
    try:
        with open(f, "rb") as fh:
            version = np.lib.format.read_magic(fh)
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, _, dtype = read(fh)
            offset = fh.tell()
    except (OSError, ValueError, SyntaxError) as e:
        raise DatasetError(f"{f}: not a .npy array ({e}); rebuild the dataset with `trm data ...`") from None
    if dtype.hasobject:
        raise DatasetError(f"{f}: holds Python objects; expected a numeric array")
    need = offset + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    size = f.stat().st_size
    if size != need:
        raise DatasetError(
            f"{f}: {size:,} bytes, but its header ({dtype}{list(shape)}) needs {need:,}: "
            f"{'truncated' if size < need else 'trailing data'} (an interrupted copy?); "
            f"copy or rebuild it again"
        )
    return tuple(shape), dtype


def _within(f: Path, lo: int, hi: int, what: str, expected: str, ignore: int | None = None) -> None:
    """Every value of the array in [lo, hi) (or == `ignore`), read in chunks off the memory map."""
    a = np.load(f, mmap_mode="r")
    flat = a.reshape(len(a), -1) if a.ndim > 1 else a.reshape(-1, 1)
    rows = max(1, CHUNK_BYTES // max(1, flat.shape[1] * flat.dtype.itemsize))
    for start in range(0, len(flat), rows):
        chunk = np.asarray(flat[start : start + rows])
        if not chunk.size:
            continue
        cmin, cmax = int(chunk.min()), int(chunk.max())
        if cmax >= hi or cmin < lo:
            bad = (chunk >= hi) | (chunk < lo)
            if ignore is not None:
                bad &= chunk != ignore
            if bad.any():
                r, c = (int(i) for i in np.argwhere(bad)[0])
                raise DatasetError(
                    f"{f}: sample {start + r} holds {int(chunk[r, c])} at position {c}; {what} must be in {expected}"
                )
