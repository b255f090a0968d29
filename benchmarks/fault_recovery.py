"""What a lost worker costs a long run: wall time and recomputed steps per SIGKILL, against an
uninterrupted run of the same work measured in the same invocation.

    python benchmarks/fault_recovery.py                 # 2 CPU workers, 240 steps, 3 kills (~5 min on 2 cores)
    python benchmarks/fault_recovery.py --kills 5 --checkpoint-every 40

Both runs are `sweeps/arc_long.py` on a fresh local Ray (a subprocess each, like a user's job) with the
same seed and the tiny Sudoku config of tests/test_long_run.py. For the faulty run, after each new
checkpoint a random Ray Train worker (found by its process title, `RayTrainWorker`) is SIGKILLed after
a random delay; Ray Train restarts the worker group from the latest checkpoint. Printed: wall time
of both, the extra seconds per kill, the steps computed twice (`run/recomputed_steps`: steps logged
before a kill, redone after it; the steps after the last report are not counted, at most
`eval_every` per kill), and whether the final weights equal the uninterrupted run's.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from tests.processes import kill_session, train_workers  # noqa: E402
from tests.test_long_run import SMALL, final_model, latest_registered_step, result_of  # noqa: E402


def run(name: str, args: list[str], cwd: Path, kills: int, rnd: random.Random) -> tuple[dict, float, list[int]]:
    t0 = time.time()
    proc = subprocess.Popen([sys.executable, str(REPO / "sweeps" / "arc_long.py"), "--name", name, *args],
                            cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True, env={**os.environ, "RAY_AUTH_MODE": "disabled"})
    folder, killed_at, last = cwd / "runs" / name, [], -1
    try:
        while len(killed_at) < kills and proc.poll() is None:
            step = latest_registered_step(folder)
            if step <= last or len(train_workers(proc.pid)) != 2:
                time.sleep(0.2)
                continue
            last = step
            time.sleep(rnd.uniform(0.0, 2.5))
            workers = train_workers(proc.pid)
            if len(workers) == 2:
                os.kill(rnd.choice(workers), signal.SIGKILL)
                killed_at.append(last)
                print(f"  {name}: SIGKILL {len(killed_at)} after checkpoint {last}", flush=True)
        out, _ = proc.communicate(timeout=1800)
    finally:
        if proc.poll() is None:
            kill_session(proc.pid)
    if proc.returncode != 0:
        raise SystemExit(f"{name} failed:\n{out[-4000:]}")
    return result_of(out), time.time() - t0, killed_at


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=240)
    p.add_argument("--kills", type=int, default=3)
    p.add_argument("--checkpoint-every", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    with tempfile.TemporaryDirectory() as d:
        cwd = Path(d)
        common = ["--storage", str(cwd / "runs"), "--data", str(cwd / "data"), "--workers", "2", *SMALL,
                  "--set", f"steps={a.steps}", "--set", f"checkpoint_every={a.checkpoint_every}",
                  "--tracking-uri", f"sqlite:///{cwd / 'mlflow.db'}"]
        # build the dataset and warm the file caches outside the timed runs
        run("warmup", [*common, "--set", "steps=10"], cwd, 0, random.Random(a.seed))
        clean, t_clean, _ = run("clean", common, cwd, 0, random.Random(a.seed))
        faulty, t_faulty, killed_at = run("faulty", common, cwd, a.kills, random.Random(a.seed))
        ref, got = final_model(cwd / "runs" / "clean", a.steps), final_model(cwd / "runs" / "faulty", a.steps)
        exact = all(torch.equal(ref[k], got[k]) for k in ref)
        max_diff = max(float((ref[k].float() - got[k].float()).abs().max()) for k in ref)
    n = max(len(killed_at), 1)
    print(json.dumps({
        "steps": a.steps, "workers": 2, "checkpoint_every": a.checkpoint_every, "kills": len(killed_at),
        "restarts_seen_by_the_run": faulty["run/restarts"],
        "wall_s_uninterrupted": round(t_clean, 1), "wall_s_with_kills": round(t_faulty, 1),
        "wall_ratio": round(t_faulty / t_clean, 2), "extra_s_per_kill": round((t_faulty - t_clean) / n, 1),
        "recomputed_steps": faulty["run/recomputed_steps"],
        "recomputed_steps_per_kill": round(faulty["run/recomputed_steps"] / n, 1),
        "final_weights_bit_identical": exact, "final_weights_max_abs_diff": max_diff,
        "final_val_exact_accuracy": [clean["val/exact_accuracy"], faulty["val/exact_accuracy"]]}, indent=2))


if __name__ == "__main__":
    main()
