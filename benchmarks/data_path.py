"""The data path's figures: Sudoku-Extreme CSV reading rate, and what a dataset build writes.

    python benchmarks/data_path.py                         # a 422,786-row CSV (the size of Sudoku-Extreme's
                                                           # test.csv) and a 1,000,000-row build (~1-2 min)
    python benchmarks/data_path.py --csv-rows 50000 --build-rows 100000 --repeat 1   # quick

CSV: `trm.data.sudoku.load_csv` (parse, check every row's grids, convert) on a generated file in
HRM's format, in rows/s, next to the rate of the CSV reader alone (`hrm_csv_rows`), which bounds
it. The rows are a few generated puzzles under random digit relabellings and transpositions:
valid, distinct, and checked like real ones.

Build: `trm.data.dataset.DatasetWriter` writing Sudoku-shaped arrays (uint8 inputs, int16 labels,
three int32 id arrays) in 100,000-row chunks, as every `trm data ...` build does. "written" is the
bytes this process handed to write() during the build (/proc/self/io wchar, Linux), against the
bytes of the arrays themselves; "peak disk" is the most the build's folders held at once
(sampled every 10 ms), against the same.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from trm.data import sudoku  # noqa: E402
from trm.data.dataset import DatasetWriter, hrm_csv_rows  # noqa: E402


def write_csv(path: Path, rows: int, seed: int) -> None:
    """`rows` valid Sudoku-Extreme-style rows: 16 generated puzzles, digits relabelled and the grid
    transposed at random per row (vectorised: generating 422k puzzles would take hours)."""
    p, s, _ = sudoku.generate(16, seed, 30, 40)
    rng = np.random.default_rng(seed)
    pick = rng.integers(0, len(p), rows)
    relabel = np.concatenate([np.zeros((rows, 1), np.int8),
                              (np.argsort(rng.random((rows, 9)), axis=1) + 1).astype(np.int8)], axis=1)
    flip = rng.random(rows) < 0.5
    grids = []
    for g in (p[pick], s[pick]):
        g = np.where(flip[:, None, None], g.transpose(0, 2, 1), g).reshape(rows, 81)
        grids.append(np.take_along_axis(relabel, g.astype(np.int64), axis=1))
    q = (grids[0] + ord("0")).astype(np.uint8)
    q[grids[0] == 0] = ord(".")
    a = (grids[1] + ord("0")).astype(np.uint8)
    q_text, a_text = q.tobytes().decode(), a.tobytes().decode()
    ratings = rng.integers(0, 100, rows)
    with open(path, "w") as f:
        f.write("source,question,answer,rating\n")
        f.writelines(f"bench,{q_text[81 * i:81 * i + 81]},{a_text[81 * i:81 * i + 81]},{ratings[i]}\n"
                     for i in range(rows))


def best_of(repeat: int, fn) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def wchar() -> int:
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("wchar:"):
            return int(line.split()[1])
    raise OSError("/proc/self/io has no wchar")


def folder_bytes(root: Path) -> int:
    total = 0
    for f in root.rglob("*"):
        try:
            total += f.stat().st_size if f.is_file() else 0
        except FileNotFoundError:  # renamed or removed under us
            pass
    return total


def build(root: Path, rows: int, chunk: int = 100_000) -> tuple[float, int, int, int]:
    """(seconds, bytes handed to write(), array bytes, peak bytes on disk) of one DatasetWriter build."""
    rng = np.random.default_rng(0)
    inputs = rng.integers(1, 11, (chunk, 81), dtype=np.uint8)
    labels = inputs.astype(np.int16)
    ids = np.arange(chunk, dtype=np.int32)
    peak, done = [0], threading.Event()

    def sample():
        while not done.wait(0.01):
            peak[0] = max(peak[0], folder_bytes(root))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    array_bytes = 0
    w0, t0 = wchar(), time.perf_counter()
    with DatasetWriter(root / "built", {"name": "bench", "vocab_size": 11, "seq_len": 81, "num_puzzle_ids": 1}) as w:
        for start in range(0, rows, chunk):
            k = min(chunk, rows - start)
            arrays = {"inputs": inputs[:k], "labels": labels[:k], "puzzle_ids": np.zeros(k, np.int32),
                      "group_ids": ids[:k] + start, "aug_ids": np.zeros(k, np.int32)}
            w.append("train", **arrays)
            array_bytes += sum(a.nbytes for a in arrays.values())
    seconds, written = time.perf_counter() - t0, wchar() - w0
    done.set()
    sampler.join()
    return seconds, written, array_bytes, max(peak[0], folder_bytes(root))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--csv-rows", type=int, default=422_786, help="rows of the generated CSV (Sudoku-Extreme test)")
    p.add_argument("--build-rows", type=int, default=1_000_000, help="rows of the dataset build")
    p.add_argument("--repeat", type=int, default=2, help="timings: best of this many")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="trm-data-path-") as tmp:
        root = Path(tmp)
        csv = root / "test.csv"
        t0 = time.perf_counter()
        write_csv(csv, args.csv_rows, args.seed)
        print(f"CSV: {args.csv_rows:,} rows, {csv.stat().st_size / 1e6:.1f} MB, generated in "
              f"{time.perf_counter() - t0:.1f}s")
        reader_s, _ = best_of(args.repeat, lambda: sum(1 for _ in hrm_csv_rows(csv)))
        load_s, loaded = best_of(args.repeat, lambda: sudoku.load_csv(csv))
        assert len(loaded[0]) == args.csv_rows
        print(f"   CSV reader alone (hrm_csv_rows): {args.csv_rows / reader_s:12,.0f} rows/s  ({reader_s:.2f}s)")
        print(f"   load_csv (read, check, convert): {args.csv_rows / load_s:12,.0f} rows/s  ({load_s:.2f}s, "
              f"{1e6 * load_s / args.csv_rows:.1f} us/row)")
        csv.unlink()

        seconds, written, array_bytes, peak = build(root / "build", args.build_rows)
        print(f"build: {args.build_rows:,} rows, arrays {array_bytes / 1e6:,.1f} MB, in {seconds:.2f}s "
              f"({array_bytes / 1e6 / seconds:,.0f} MB/s of arrays)")
        print(f"   written {written / 1e6:,.1f} MB = {written / array_bytes:.2f}x the array bytes; "
              f"peak disk {peak / 1e6:,.1f} MB = {peak / array_bytes:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
