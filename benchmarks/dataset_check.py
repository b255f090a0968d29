"""What validating a dataset costs at run start (`trm.data.check.check_dataset`), on a synthetic
ARC-sized split: N samples x 900 uint8 tokens and int8 labels, int32 puzzle ids.

    python benchmarks/dataset_check.py                 # 1,000,000 samples (1.8 GB), in a temporary folder
    python benchmarks/dataset_check.py --samples 4000000 --dir /data/scratch

The first pass reads the arrays from wherever the OS has them (written just before: mostly the page
cache; a cold disk is slower), the second from the page cache. Figures only; nothing is asserted.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from trm.data.check import check_dataset


def write(out: Path, n: int) -> float:
    """A split of `n` samples with ARC's shapes and value ranges; returns its size in GB."""
    (out / "train").mkdir(parents=True)
    rng = np.random.default_rng(0)
    inputs = np.lib.format.open_memmap(out / "train/inputs.npy", "w+", np.uint8, (n, 900))
    labels = np.lib.format.open_memmap(out / "train/labels.npy", "w+", np.int8, (n, 900))
    for s in range(0, n, 100_000):
        block = rng.integers(0, 12, (min(100_000, n - s), 900), dtype=np.uint8)
        inputs[s:s + len(block)] = block
        labels[s:s + len(block)] = np.where(block == 0, -100, block).astype(np.int8)
    inputs.flush(), labels.flush()
    del inputs, labels
    np.save(out / "train/puzzle_ids.npy", rng.integers(0, 1000, n, dtype=np.int32))
    (out / "meta.json").write_text(json.dumps({"name": "arc", "vocab_size": 12, "seq_len": 900,
                                               "num_puzzle_ids": 1000, "splits": {"train": n}}))
    return (2 * 900 + 4) * n / 1e9


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--samples", type=int, default=1_000_000)
    p.add_argument("--dir", help="where to write the synthetic split (default: a temporary folder)")
    a = p.parse_args()
    with tempfile.TemporaryDirectory(dir=a.dir) as d:
        gb = write(Path(d) / "data", a.samples)
        for i in (1, 2):
            t = time.perf_counter()
            check_dataset(Path(d) / "data")
            dt = time.perf_counter() - t
            print(f"check_dataset: {a.samples:,} samples, {gb:.2f} GB: {dt:.2f} s ({gb / dt:.2f} GB/s), pass {i}")


if __name__ == "__main__":
    main()
