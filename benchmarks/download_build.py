"""Time and size of each `trm data download` build at its reference settings, on local files of the
real formats and sizes (no network here): the build step of the command, `trm.data.download.build`
with the built-in registry entry, plus the sha256 verification of the source files.

    python benchmarks/download_build.py sudoku-extreme-1k maze-hard       # full-size generated sources
    python benchmarks/download_build.py sudoku-extreme --sudoku-rows 380000 --test-rows 42300
    python benchmarks/download_build.py arc-agi-1 --arc-tasks 96          # a slice of the tasks

Sources: Sudoku CSVs in HRM's format with 3,831,994 / 422,786 rows (the real files' counts) made
from a few hundred generated puzzles relabelled (valid, not unique rows); 1000 + 1000 generated
30x30 mazes; Kaggle combined ARC files made from the ARC-AGI-1 per-task files in
/work/shared/data/arc-agi-1 (ConceptARC and ARC-AGI-2 stand-ins: tasks of those, re-keyed).
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import tempfile
import time
from pathlib import Path

import numpy as np

from trm.data import maze, sudoku
from trm.data.download import build, sha256_of
from trm.data.sources import BUILTIN

ARC_SRC = Path(__file__).resolve().parents[2] / "shared" / "data" / "arc-agi-1"
TRAIN_ROWS, TEST_ROWS = 3_831_994, 422_786  # sapientinc/sudoku-extreme train.csv / test.csv


def folder_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def sudoku_csv(path: Path, rows: int, base: int, seed: int) -> None:
    """`rows` HRM-format rows (source,question,answer,rating), fixed width, from `base` generated
    puzzles under random digit relabellings (vectorised: 3.8M rows in about a minute)."""
    p, s, _ = sudoku.generate(base, seed, 17, 30)
    rng = np.random.default_rng(seed)
    with open(path, "wb") as f:
        f.write(b"source,question,answer,rating\n")
        for start in range(0, rows, 500_000):
            n = min(500_000, rows - start)
            pick = rng.integers(0, base, n)
            perm = np.concatenate([np.zeros((n, 1), np.int8), np.argsort(rng.random((n, 9)), 1).astype(np.int8) + 1], 1)
            q = np.take_along_axis(perm, p[pick].reshape(n, 81).astype(np.int64), 1)
            a = np.take_along_axis(perm, s[pick].reshape(n, 81).astype(np.int64), 1)
            line = np.empty((n, 170), np.uint8)
            line[:, :4] = np.frombuffer(b"gen,", np.uint8)
            line[:, 4:85] = np.where(q == 0, ord("."), q + ord("0"))
            line[:, 85] = ord(",")
            line[:, 86:167] = a + ord("0")
            line[:, 167:] = np.frombuffer(b",0\n", np.uint8)
            f.write(line.tobytes())


def maze_csv(path: Path, rows: int, seed: int) -> None:
    q, a, _ = maze.generate(rows, seed)
    path.write_text("source,question,answer,rating\n" +
                    "".join(f"gen,{maze.to_text(x)},{maze.to_text(y)},0\n" for x, y in zip(q, a)))


def arc_files(folder: Path, subsets: dict[str, list[Path]]) -> None:
    for subset, files in subsets.items():
        ch, so = {}, {}
        for i, f in enumerate(files):
            t = json.loads(f.read_text())
            key = f"{f.stem}{i:04d}" if subset.startswith(("concept", "training2")) else f.stem
            ch[key] = {"train": t["train"], "test": [{"input": x["input"]} for x in t["test"]]}
            so[key] = [x["output"] for x in t["test"]]
        (folder / f"arc-agi_{subset}_challenges.json").write_text(json.dumps(ch))
        (folder / f"arc-agi_{subset}_solutions.json").write_text(json.dumps(so))


def sources(name: str, folder: Path, a: argparse.Namespace) -> dict[str, Path]:
    t0 = time.monotonic()
    if name.startswith("sudoku"):
        out = {"train.csv": folder / "train.csv", "test.csv": folder / "test.csv"}
        sudoku_csv(out["train.csv"], a.sudoku_rows, a.base_puzzles, 1)
        sudoku_csv(out["test.csv"], a.test_rows, a.base_puzzles // 4, 2)
    elif name == "maze-hard":
        out = {"train.csv": folder / "train.csv", "test.csv": folder / "test.csv"}
        maze_csv(out["train.csv"], 1000, 1)
        maze_csv(out["test.csv"], 1000, 2)
    else:
        tr, ev = sorted((ARC_SRC / "training").glob("*.json")), sorted((ARC_SRC / "evaluation").glob("*.json"))
        k = a.arc_tasks / 960  # ARC-AGI-1: 400 + 400 + 160 concept tasks
        cut = lambda xs, n: xs[:max(1, round(n * k))]
        if name == "arc-agi-1":
            subsets = {"training": cut(tr, 400), "evaluation": cut(ev, 400), "concept": cut(tr, 160)}
        else:  # ARC-AGI-2: 1000 training2 (they include ARC-AGI-1's), 120 evaluation2, 160 concept
            subsets = {"training2": cut(tr + ev + tr, 1000), "evaluation2": cut(ev, 120), "concept": cut(tr, 160)}
        arc_files(folder, subsets)
        out = {f"kaggle/combined/{p.name}": p for p in sorted(folder.glob("*.json"))}
    print(f"  sources generated in {time.monotonic() - t0:.0f} s: "
          f"{sum(p.stat().st_size for p in out.values()) / 1e6:.1f} MB")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("names", nargs="+", choices=sorted(BUILTIN))
    p.add_argument("--sudoku-rows", type=int, default=TRAIN_ROWS)
    p.add_argument("--test-rows", type=int, default=TEST_ROWS)
    p.add_argument("--base-puzzles", type=int, default=200)
    p.add_argument("--arc-tasks", type=int, default=960, help="ARC tasks in all (960 = ARC-AGI-1's size)")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    for name in a.names:
        src = BUILTIN[name]
        with tempfile.TemporaryDirectory() as tmp_name:
            tmp = Path(tmp_name)
            (tmp / "src").mkdir()
            print(f"{name}: trm data {src.builder} {' '.join(src.build_args)}")
            files = sources(name, tmp / "src", a)
            t0 = time.monotonic()
            for f in files.values():
                sha256_of(f)
            t1 = time.monotonic()
            with contextlib.redirect_stdout(io.StringIO()):  # the builder prints its meta.json
                out = build(src, files, tmp / "out")
            t2 = time.monotonic()
            meta = json.loads((out / "meta.json").read_text())
            print(f"  verify (sha256) {t1 - t0:.1f} s, build {t2 - t1:.1f} s, dataset {folder_size(out) / 1e6:,.0f} MB, "
                  f"splits {meta['splits']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
