"""Noisy multi-trajectory inference (PTRM, 2026) on a fixed checkpoint: pass@1 against K.

    python benchmarks/noisy_inference.py                               # trains the smoke checkpoint first
    python benchmarks/noisy_inference.py --checkpoint runs/smoke --noise 0.1 0.3 --trajectories 1 4 16

Each trajectory runs the checkpoint's recursion with Gaussian noise of scale sigma added to z after
every latent update; the answer kept is the one whose halting head is the most confident (sigmoid of
q_halt at the last supervision step), as `trm eval --trajectories K --noise SIGMA` does. Printed per
(sigma, K): pass@1 (exact accuracy of the kept answer), cell accuracy, the oracle (some run of the K
is exactly right: what a perfect selector would score) and the kept answers' mean confidence, beside
the plain evaluation (no noise), which K=1 with sigma 0 reproduces exactly (checked here too).

One prediction per sigma with the largest K: run j's noise is seeded by (seed, j, batch), so its first
K runs are exactly those of `--trajectories K` (the same draws), and each K is read from them.
Without --checkpoint it trains the smoke preset's Sudoku model (MLP-mixer, hidden 64, L1-n2-T2,
N_sup 4; the preset's 500 steps, a few minutes on 2 CPU cores) in a scratch folder.

Measured (2 CPU cores, the smoke checkpoint at step 500: plain pass@1 0.473 on its 256 test puzzles):
sigma 0.3 gives 0.457 / 0.523 / 0.543 at K = 1 / 4 / 16 (oracle 0.457 / 0.555 / 0.602); at step 600
(plain 0.961) 0.934 / 0.949 / 0.969. The halting head picks well but not perfectly (pass@1 < oracle).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import scratch  # noqa: E402  (benchmarks/common.py)

from trm.data.dataset import IGNORE, PuzzleDataset  # noqa: E402
from trm.evaluate import Trajectories, predict  # noqa: E402
from trm.sweep.presets import PRESETS  # noqa: E402
from trm.train.checkpoint import resolve  # noqa: E402
from trm.train.state import load_for_eval, pick_device  # noqa: E402

SMOKE = {**PRESETS["smoke"].overrides, "layers": 1, "n": 2, "T": 2}  # benchmarks/paper_ablations.py's depth


def train_smoke(out: Path, data: Path, steps: int) -> Path:
    """The smoke checkpoint: `trm train` in its own process, one torch thread."""
    over = {**SMOKE, "data_path": str(data), "steps": steps, "eval_every": steps, "checkpoint_every": steps}
    args = [sys.executable, "-m", "trm.cli", "train", "--no-tracking", "--out", str(out)]
    for k, v in over.items():
        args += ["--set", f"{k}={v}"]
    import os

    r = subprocess.run(args, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    if r.returncode != 0:
        raise RuntimeError(f"training the smoke checkpoint failed:\n{r.stderr[-3000:]}")
    return out


def exact_and_cells(tokens: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row: the whole answer right, and the fraction of scored cells right."""
    mask = labels != IGNORE
    right = (tokens == labels) & mask
    return right.sum(-1) == mask.sum(-1), right.sum(-1) / np.maximum(mask.sum(-1), 1)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", help="a run folder (its best checkpoint) or checkpoint folder; default: train")
    p.add_argument("--steps", type=int, default=SMOKE["steps"], help="training steps of the smoke checkpoint")
    p.add_argument("--data", help="dataset (default: the checkpoint's)")
    p.add_argument("--noise", type=float, nargs="+", default=[0.3], help="sigma values")
    p.add_argument("--trajectories", type=int, nargs="+", default=[1, 4, 16], help="K values")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--limit", type=int, default=0, help="first N test puzzles (0: all)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--device", default="auto")
    p.add_argument("--keep", action="store_true", help="keep the scratch folder (the trained checkpoint)")
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    with scratch("trm-noisy-", keep=a.keep) as tmp:
        t0 = time.time()
        run = Path(a.checkpoint) if a.checkpoint else train_smoke(tmp / "run", tmp / "data", a.steps)
        trained = time.time() - t0
        folder = resolve(str(run), prefer="best")
        device = pick_device(a.device)
        model, cfg, state = load_for_eval(folder, str(device))
        ds = PuzzleDataset(a.data or cfg.data.path, "test")
        n = len(ds) if a.limit <= 0 else min(a.limit, len(ds))
        labels = np.asarray(ds.arrays["labels"][:n])

        def run_k(traj: Trajectories, keep: bool):
            t = time.time()
            pred = predict(model, ds, a.batch_size, device, limit=n, trajectories=traj, keep_trajectories=keep)
            return pred, time.time() - t

        plain, plain_s = run_k(Trajectories(), False)
        same, _ = run_k(Trajectories(1, 0.0, a.seed), False)
        identical = np.array_equal(plain.tokens, same.tokens) and np.array_equal(plain.confidence, same.confidence)
        exact, cells = exact_and_cells(plain.tokens, labels)
        m = cfg.model
        print(
            f"\nNoisy multi-trajectory inference on {folder} (step {state['step']}"
            + (f", trained here in {trained:.0f} s" if not a.checkpoint else "")
            + ")"
        )
        print(
            f"model: {m.variant} {m.arch}, hidden {m.hidden}, layers {m.layers}, n={m.n}, T={m.T}, "
            f"N_sup {m.N_sup}; {n} test puzzles of {ds.path}; device {device}, seed {a.seed}"
        )
        print(f"K=1 with sigma 0 equals plain inference exactly: {'yes' if identical else 'NO'}")
        print(
            f"\n{'sigma':>6s} {'K':>4s} {'pass@1':>8s} {'cells':>8s} {'oracle@K':>9s} {'confidence':>11s} "
            f"{'seconds':>8s}"
        )
        print(
            f"{'plain':>6s} {1:4d} {exact.mean():8.4f} {cells.mean():8.4f} {exact.mean():9.4f} "
            f"{plain.confidence.mean():11.4f} {plain_s:8.1f}"
        )
        K_max = max(a.trajectories)
        for sigma in a.noise:
            pred, secs = run_k(Trajectories(K_max, sigma, a.seed), True)
            assert pred.run_tokens is not None and pred.run_confidence is not None
            runs = [exact_and_cells(t, labels) for t in pred.run_tokens]
            rows = np.arange(n)
            for k in sorted(a.trajectories):
                best = pred.run_confidence[:k].argmax(0)  # the first of equals, as trm.evaluate does
                kept_exact = np.stack([r[0] for r in runs[:k]])[best, rows]
                kept_cells = np.stack([r[1] for r in runs[:k]])[best, rows]
                oracle = np.stack([r[0] for r in runs[:k]]).any(0)
                print(
                    f"{sigma:6.3g} {k:4d} {kept_exact.mean():8.4f} {kept_cells.mean():8.4f} {oracle.mean():9.4f} "
                    f"{pred.run_confidence[:k].max(0).mean():11.4f} {secs * k / K_max:8.1f}"
                )
        print(
            "pass@1: exact accuracy of the most confident run's answer; oracle@K: some run of the K exactly "
            "right;\nseconds: of K runs (a share of the one K_max prediction)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
