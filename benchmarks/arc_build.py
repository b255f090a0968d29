"""Throughput and memory of the ARC dataset build (`trm data arc`).

    python benchmarks/arc_build.py                       # 800 ARC-AGI-1 tasks x 100 augmentations
    python benchmarks/arc_build.py --augmentations 1000  # the paper's count (~6 GB on disk)

Builds into a temporary folder (removed afterwards unless --keep) and prints
augmentations/s, tasks/s, samples/s, the output size and the peak RSS of this
process. Loading the JSON is timed separately from the build.
"""
from __future__ import annotations

import argparse
import logging
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

from trm.data import arc
from trm.data.dataset import read_meta

DEFAULT_SRC = Path(__file__).resolve().parents[2] / "shared" / "data" / "arc-agi-1"


def folder_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--src", action="append", help=f"ARC folder(s) (default {DEFAULT_SRC})")
    p.add_argument("--augmentations", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-translate", action="store_true")
    p.add_argument("--out", help="build here instead of a temporary folder")
    p.add_argument("--keep", action="store_true", help="keep the built dataset")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")

    srcs = args.src or [str(DEFAULT_SRC)]
    t0 = time.perf_counter()
    corpus = arc.load_tasks(srcs)
    t_load = time.perf_counter() - t0

    tmp = Path(tempfile.mkdtemp(prefix="arc-bench-"))
    out = Path(args.out) if args.out else tmp / "arc"
    try:
        t0 = time.perf_counter()
        arc.build_dataset(out, corpus.tasks, args.augmentations, args.seed, translate=not args.no_translate,
                          overwrite=True)
        t_build = time.perf_counter() - t0
        meta = read_meta(out)
        size = folder_size(out)
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
            if args.out:
                shutil.rmtree(out, ignore_errors=True)
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    augs = sum(meta["task_num_augmentations"])  # (task, augmentation) puzzles, identity included
    samples = sum(meta["splits"].values())
    short = sum(1 for k in meta["task_num_augmentations"] if k < args.augmentations + 1)
    print(f"tasks                 {len(corpus.tasks)} ({sum(t.held_out for t in corpus.tasks)} held out)")
    print(f"augmentations asked   {args.augmentations} per task; {short} task(s) have fewer distinct ones")
    print(f"puzzle ids            {meta['num_puzzle_ids']}")
    print(f"samples               train {meta['splits']['train']:,}  test {meta['splits']['test']:,}")
    print(f"load JSON             {t_load:.2f} s")
    print(f"build                 {t_build:.2f} s")
    print(f"augmentations/s       {augs / t_build:,.0f}  (task x augmentation puzzles written per second)")
    print(f"tasks/s               {len(corpus.tasks) / t_build:,.1f}")
    print(f"samples/s             {samples / t_build:,.0f}")
    print(f"output size           {size / 2**20:,.1f} MiB ({size / max(samples, 1):,.0f} B/sample)")
    print(f"peak RSS              {peak_mib:,.1f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
