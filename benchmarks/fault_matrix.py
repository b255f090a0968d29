"""Everyday faults of an unattended run, each tried through the real `trm` entry point on tiny Sudoku data,
and how each ended: `fault | outcome | exit | message | lost` (issue 17).

    python benchmarks/fault_matrix.py            # about 3-5 minutes on 2 CPU cores, no Ray

outcome, read from what happened (nothing here is typed in):
  refused    exit 2, one `error:` line, no traceback, and nothing written (run folder as before)
  stopped    a fault during training: exit != 0, one `error:` line, no traceback
  recovered  exit 0 after the fault, the run reached its last step, no step logged twice
  TRACEBACK  a Python traceback reached the user
  SILENT     exit 0 where the fault should have stopped or been refused
lost: what the fault cost (files written by a refusal, steps logged twice, a non-finite checkpoint,
the newest good checkpoint missing), or "nothing".
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
# the settings and corruptions tests/test_faults.py uses: the matrix tries what the tests check
from tests.test_faults import TINY, _drop_key, _truncate  # noqa: E402
from tests.test_faults import _token_over_vocab as _over_vocab  # noqa: E402


@dataclass
class Result:
    exit: int
    out: str  # stdout + stderr
    stderr: str


def trm(*args: str, cwd: Path, preexec: Callable[[], None] | None = None, timeout: float = 300) -> Result:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "MLFLOW_TRACKING_URI": ""}
    r = subprocess.run([sys.executable, "-m", "trm.cli", *args], cwd=cwd, capture_output=True, text=True,
                       env=env, timeout=timeout, check=False, preexec_fn=preexec)  # fmt: skip
    return Result(r.returncode, r.stdout + r.stderr, r.stderr)


def snapshot(root: Path) -> dict[str, bytes]:
    if not root.exists():
        return {}
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def logged_twice(run: Path) -> list[int]:
    f = run / "metrics.jsonl"
    steps = [json.loads(line)["step"] for line in f.read_text().splitlines() if line.strip()] if f.is_file() else []
    return sorted({s for s in steps if steps.count(s) > 1})


def non_finite_checkpoints(run: Path) -> list[str]:
    import torch

    bad = []
    for state in sorted((run / "checkpoints").glob("step_*/state.pt")):
        weights = torch.load(state, map_location="cpu", weights_only=False)["model"]
        if any(t.is_floating_point() and not torch.isfinite(t).all() for t in weights.values()):
            bad.append(state.parent.name)
    return bad


def error_lines(r: Result) -> list[str]:
    return [line for line in r.stderr.splitlines() if "error:" in line.lower()]


def outcome(r: Result, expect: str) -> str:
    """What happened, in the vocabulary above. `expect`: refused | stopped | recovered."""
    if "Traceback (most recent call last)" in r.out:
        return "TRACEBACK"
    if r.exit == 0:
        return "recovered" if expect == "recovered" else "SILENT"
    if len(error_lines(r)) != 1:
        return f"exit {r.exit}, {len(error_lines(r))} error lines"
    return "stopped" if expect == "stopped" else "refused" if r.exit == 2 else "stopped"


# ---------------------------------------------------------------- the faults
def build_data(root: Path) -> Path:
    from trm.data import sudoku

    path = root / "sudoku"
    train, test = sudoku.generate(16, 0, 30, 40, 0), sudoku.generate(8, 1, 30, 40, 0)
    sudoku.build_dataset(path, train[:2], test[:2], 1, 0)
    return path


def train_run(data: Path, cwd: Path, name: str, steps: int, *extra: str) -> tuple[Result, Path]:
    r = trm("train", "--out", f"runs/{name}", "--no-tracking", "--set", f"data_path={data}", *TINY,
            "--set", f"steps={steps}", *extra, cwd=cwd)  # fmt: skip
    return r, cwd / "runs" / name


def broken_data(data: Path, cwd: Path, how: Callable[[Path], None]) -> Path:
    bad = cwd / "bad-data"
    shutil.copytree(data, bad)
    how(bad)
    return bad


def refusal(r: Result, cwd: Path, before: dict[str, bytes], watched: Path) -> tuple[str, str]:
    """(outcome, lost) for a fault that should be refused without writing under `watched`."""
    after = snapshot(watched)
    new = sorted(set(after) - set(before)) + sorted(k for k in before if after.get(k) != before[k])
    return outcome(r, "refused"), (f"{len(new)} files written/changed" if new else "nothing")


def bad_dataset(how: Callable[[Path], None]) -> Callable[[Path, Path, Path], tuple[Result, str, str]]:
    def fault(data: Path, run: Path, cwd: Path) -> tuple[Result, str, str]:
        bad = broken_data(data, cwd, how)
        r, _ = train_run(bad, cwd, "x", 2)
        return r, *refusal(r, cwd, {}, cwd / "runs")

    return fault


def yaml_error(data: Path, run: Path, cwd: Path) -> tuple[Result, str, str]:
    (cwd / "bad.yaml").write_text("train:\n  lr: 1.0e-4\n   steps: [3\n")
    r = trm("train", "--config", "bad.yaml", "--out", "runs/x", cwd=cwd)
    return r, *refusal(r, cwd, {}, cwd / "runs")


def out_is_a_file(data: Path, run: Path, cwd: Path) -> tuple[Result, str, str]:
    (cwd / "runs").write_text("not a folder")
    r = trm("train", "--out", "runs", "--no-tracking", "--set", f"data_path={data}", *TINY, cwd=cwd)
    return r, outcome(r, "refused"), "nothing" if (cwd / "runs").read_text() == "not a folder" else "file overwritten"


def unknown_tracking_scheme(data: Path, run: Path, cwd: Path) -> tuple[Result, str, str]:
    r = trm("train", "--out", "runs/x", "--tracking-uri", "sqlit:///mlflow.db", "--set", f"data_path={data}", *TINY,
            cwd=cwd)  # fmt: skip
    return r, *refusal(r, cwd, {}, cwd / "runs")


def eval_batch(size: str) -> Callable[[Path, Path, Path], tuple[Result, str, str]]:
    def fault(data: Path, run: Path, cwd: Path) -> tuple[Result, str, str]:
        r = trm("eval", "--checkpoint", str(run), "--batch-size", size, cwd=cwd)
        return r, outcome(r, "refused"), "nothing"

    return fault


def setting(value: str) -> Callable[[Path, Path, Path], tuple[Result, str, str]]:
    def fault(data: Path, run: Path, cwd: Path) -> tuple[Result, str, str]:
        r, _ = train_run(data, cwd, "x", 2, "--set", value)
        return r, *refusal(r, cwd, {}, cwd / "runs")

    return fault


def divergence(data: Path, run: Path, cwd: Path) -> tuple[Result, str, str]:
    r, folder = train_run(data, cwd, "x", 6, "--set", "lr=1e6")
    bad = non_finite_checkpoints(folder)
    return r, outcome(r, "stopped"), f"non-finite checkpoints {bad}" if bad else "nothing"


def resume_with(data: Path, run: Path, cwd: Path, setting: str) -> tuple[Result, Path, dict[str, bytes]]:
    """A copy of the finished base run, resumed to step 4 with one setting changed."""
    folder = cwd / "a"
    shutil.copytree(run, folder)
    before = snapshot(folder)
    r = trm("train", "--out", str(folder), "--no-tracking", "--set", f"data_path={data}", *TINY,
            "--set", "steps=4", "--set", setting, cwd=cwd)  # fmt: skip
    return r, folder, before


def refused_resume(data: Path, run: Path, cwd: Path) -> tuple[Result, str, str]:
    r, folder, before = resume_with(data, run, cwd, "hidden=32")
    return r, *refusal(r, cwd, before, folder)


def other_batch_size(data: Path, run: Path, cwd: Path) -> tuple[Result, str, str]:
    r, folder, before = resume_with(data, run, cwd, "batch_size=4")
    if r.exit == 0:  # re-slotted: then it must have gone on from the checkpoint without a step twice
        twice = logged_twice(folder)
        return r, outcome(r, "recovered"), f"steps twice {twice}" if twice else "nothing"
    return r, *refusal(r, cwd, before, folder)


def all_checkpoints_corrupt(data: Path, run: Path, cwd: Path) -> tuple[Result, str, str]:
    folder = cwd / "a"
    shutil.copytree(run, folder)
    for state in folder.glob("checkpoints/step_*/state.pt"):
        state.write_bytes(state.read_bytes()[:-50])
    before = snapshot(folder)
    r = trm("train", "--out", str(folder), "--no-tracking", "--set", f"data_path={data}", *TINY,
            "--set", "steps=4", cwd=cwd)  # fmt: skip
    return r, *refusal(r, cwd, before, folder)


def corrupt_latest_checkpoint(data: Path, run: Path, cwd: Path) -> tuple[Result, str, str]:
    r, folder = train_run(data, cwd, "x", 4)
    older, latest = sorted(folder.glob("checkpoints/step_*"))[-2:]
    (latest / "state.pt").write_bytes((latest / "state.pt").read_bytes()[:-50])
    r, _ = train_run(data, cwd, "x", 6)
    twice = logged_twice(folder)
    redone = int(latest.name.split("_")[1]) - int(older.name.split("_")[1])  # resumed from the older one
    return r, outcome(r, "recovered"), f"steps twice {twice}" if twice else f"{redone} steps recomputed"


def sigterm_mid_run(data: Path, run: Path, cwd: Path) -> tuple[Result, str, str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "MLFLOW_TRACKING_URI": ""}
    args = [sys.executable, "-m", "trm.cli", "train", "--out", "runs/x", "--no-tracking", "--set",
            f"data_path={data}", *TINY, "--set", "steps=400"]  # fmt: skip
    proc = subprocess.Popen(args, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    folder = cwd / "runs" / "x"
    deadline = time.time() + 120
    while not list(folder.glob("checkpoints/step_*")) and time.time() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=120)
    r, _ = train_run(data, cwd, "x", 400)
    twice = logged_twice(folder)
    return r, outcome(r, "recovered"), f"steps twice {twice}" if twice else "nothing"


def _file_size_limit(limit: int) -> Callable[[], None]:
    def limit_writes() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return limit_writes


def disk_full(data: Path, run: Path, cwd: Path) -> tuple[Result, str, str]:
    folder = cwd / "a"
    shutil.copytree(run, folder)
    size = max(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    r = trm("train", "--out", str(folder), "--no-tracking", "--set", f"data_path={data}", *TINY,
            "--set", "steps=6", cwd=cwd, preexec=_file_size_limit(size - 1))  # fmt: skip
    good = [p.parent.name for p in folder.glob("checkpoints/step_*/state.pt")]
    return r, outcome(r, "stopped"), "nothing" if good else "every checkpoint"


def tracking_gone(data: Path, run: Path, cwd: Path) -> tuple[Result, str, str]:
    r = trm("train", "--out", "runs/x", "--tracking-uri", "http://127.0.0.1:9", "--set", f"data_path={data}", *TINY,
            "--set", "steps=2", cwd=cwd, timeout=600)  # fmt: skip
    return r, *refusal(r, cwd, {}, cwd / "runs")


def second_writer(data: Path, run: Path, cwd: Path) -> tuple[Result, str, str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "MLFLOW_TRACKING_URI": ""}
    first = subprocess.Popen([sys.executable, "-m", "trm.cli", "train", "--out", "runs/x", "--no-tracking",
                              "--set", f"data_path={data}", *TINY, "--set", "steps=1000000"],
                             cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        holder = cwd / "runs" / "x" / ".trm.writer.json"
        deadline = time.time() + 120
        while not holder.is_file() and first.poll() is None and time.time() < deadline:
            time.sleep(0.2)
        r, folder = train_run(data, cwd, "x", 1000000)
        twice = logged_twice(folder)
        return r, outcome(r, "refused"), f"steps twice {twice}" if twice else "nothing"
    finally:
        first.kill()
        first.wait()


FAULTS: list[tuple[str, Callable[[Path, Path, Path], tuple[Result, str, str]]]] = [
    ("truncated inputs.npy", bad_dataset(_truncate)),
    ("meta.json missing a key", bad_dataset(_drop_key)),
    ("meta.json not JSON", bad_dataset(lambda d: (d / "meta.json").write_text("{not json"))),
    ("token over vocab_size", bad_dataset(_over_vocab)),
    ("YAML syntax error", yaml_error),
    ("--out is a file", out_is_a_file),
    ("tracking URI unknown scheme", unknown_tracking_scheme),
    ("tracking server unreachable", tracking_gone),
    ("trm eval --batch-size 0", eval_batch("0")),
    ("trm eval --batch-size -1", eval_batch("-1")),
    ("--set lr=nan", setting("lr=nan")),
    ("--set steps=3 on an epochs config", setting("epochs=3")),
    ("loss diverges (lr=1e6)", divergence),
    ("resume, other architecture", refused_resume),
    ("resume, other batch_size", other_batch_size),
    ("every checkpoint corrupt", all_checkpoints_corrupt),
    ("latest checkpoint corrupt", corrupt_latest_checkpoint),
    ("SIGTERM mid-run, then resume", sigterm_mid_run),
    ("disk full while checkpointing", disk_full),
    ("second writer on one run", second_writer),
]


def main() -> None:
    only = sys.argv[1:]
    with tempfile.TemporaryDirectory(prefix="trm-faults-") as tmp:
        root = Path(tmp)
        data = build_data(root)
        r, run = train_run(data, root, "base", 2)
        assert r.exit == 0, r.out[-3000:]
        rows = []
        for name, fault in FAULTS:
            if only and not any(o in name for o in only):
                continue
            cwd = root / f"fault-{len(rows)}"
            cwd.mkdir()
            t0 = time.time()
            res, how, lost = fault(data, run, cwd)
            errors = error_lines(res)
            message = errors[0].lower().split("error:", 1)[1].strip() if errors else ""
            message = errors[0][len(errors[0]) - len(message) :] if errors else ""  # the line's own case
            rows.append((name, how, str(res.exit), message[:110], lost, time.time() - t0))
            print(f"  {name}: {how} ({time.time() - t0:.0f} s)", file=sys.stderr, flush=True)
    print("| fault | outcome | exit | message | lost |")
    print("|---|---|---|---|---|")
    for name, how, code, message, lost, _ in rows:
        print(f"| {name} | {how} | {code} | {message.replace('|', '/')} | {lost} |")
    bad = [r for r in rows if r[1] in ("TRACEBACK", "SILENT") or r[1].startswith("exit")]
    print(f"\n{len(rows) - len(bad)} of {len(rows)} faults end well (refused, stopped with one line, or recovered)")


if __name__ == "__main__":
    main()
