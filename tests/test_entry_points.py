"""Every entry point, given a user's mistake, prints one line `PROG: error: ...` naming the flag and
exits 2: no traceback, nothing written. And the core imports none of Ray, MLflow, boto3, Optuna."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TRM = [sys.executable, "-m", "trm.cli"]


def script(name: str) -> list[str]:
    return [sys.executable, str(REPO / "sweeps" / name)]


# (command, what the error line must hold: the flag or field at fault)
BAD_INPUTS = [
    (TRM + ["trian"], "invalid choice: 'trian'"),
    (TRM + ["train", "--bogus"], "unrecognized arguments: --bogus"),
    (TRM + ["train", "--tracking-uri", "http://127.0.0.1:9"], "--tracking-uri http://127.0.0.1:9"),
    (TRM + ["train", "--workers", "1", "--tracking-uri", "http://127.0.0.1:9"], "--tracking-uri http://127.0.0.1:9"),
    (TRM + ["train", "--set", "n=0"], "model.n=0"),
    (TRM + ["train", "--workers", "-1"], "--workers -1"),
    (TRM + ["eval", "--checkpoint", "no-such-run"], "--checkpoint no-such-run"),
    (TRM + ["data", "sudoku", "--out", "d", "--num-train", "0"], "--num-train"),
    (TRM + ["data", "maze", "--out", "d", "--num-test", "0"], "--num-test"),
    (TRM + ["data", "arc", "--src", "no-such-folder", "--out", "d"], "no-such-folder"),
    (TRM + ["import", "--checkpoint", "no-such-file", "--out", "d"], "--checkpoint no-such-file"),
    ([sys.executable, "-m", "trm.cost", "--prices", "no-such-prices.json"], "--prices no-such-prices.json"),
    (script("depth_sweep.py") + ["--preset", "sudoku-extreme"], ("--data ", "data/sudoku-extreme: no dataset there")),
    (script("depth_sweep.py") + ["--num-samples", "0"], "--num-samples 0"),
    (script("regularization_sweep.py") + ["--tracking-uri", "http://127.0.0.1:9"], "--tracking-uri http://127.0.0.1:9"),
    (script("architecture_sweep.py") + ["--address", "127.0.0.1:1"], "--address 127.0.0.1:1"),
    (script("architecture_sweep.py") + ["--preset", "huge"], "argument --preset: invalid choice: 'huge'"),
    (script("arc_long.py"), ("--data ", "data/arc1: no dataset there")),
    (script("arc_long.py") + ["--deadline", "tomorrow"], "--deadline 'tomorrow'"),
    (script("arc_long.py") + ["--prices", "no-such-prices.json"], "--prices no-such-prices.json"),
    (script("arc_long.py") + ["--gpus-per-worker", "1", "--instance-type", "p9.nano"], "--instance-type 'p9.nano'"),
]


def _id(case) -> str:
    cmd = case[0]
    where = cmd[2].removeprefix("trm.").replace("cli", "trm") if cmd[1] == "-m" else Path(cmd[1]).stem
    return " ".join([where, *cmd[3 if cmd[1] == "-m" else 2:]])[:60]


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


@pytest.mark.parametrize("cmd,needle", BAD_INPUTS, ids=[_id(c) for c in BAD_INPUTS])
def test_bad_input_is_one_error_line_and_exit_2(tmp_path, cmd, needle):
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "PYTHONPATH": str(REPO), "MLFLOW_TRACKING_URI": ""}
    env.pop("RAY_ADDRESS", None)
    r = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env)
    out = r.stdout + r.stderr
    assert r.returncode == 2, out[-3000:]
    assert "Traceback" not in out, out[-3000:]
    errors = [line for line in r.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1, r.stderr[-3000:]
    for part in (needle,) if isinstance(needle, str) else needle:
        assert part in errors[0], errors[0]
    assert _files(tmp_path) == []  # nothing half-written (an empty storage folder at most)


def test_debug_adds_the_traceback(tmp_path):
    r = subprocess.run(TRM + ["eval", "--checkpoint", "nowhere", "--debug"], cwd=tmp_path, capture_output=True,
                       text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert r.returncode == 2
    assert "Traceback" in r.stderr and r.stderr.rstrip().splitlines()[-1].startswith("trm eval: error: --checkpoint")


def test_one_line_keeps_every_line_of_a_message():
    from trm.cli_common import one_line

    assert one_line(ValueError("x: incompatible:\n  a: 1 vs 2\n  b: 3 vs 4")) == "x: incompatible: a: 1 vs 2; b: 3 vs 4"
    assert one_line(ValueError("")) == "ValueError"


# ---------------------------------------------------------------- layers
CORE = ("trm.config", "trm.model", "trm.data", "trm.train", "trm.evaluate")
HEAVY = ("ray", "mlflow", "boto3", "optuna")


def test_the_core_imports_no_ray_mlflow_boto3_or_optuna():
    """Every module of the core (and the modules `trm params` / `trm data` need), imported in a fresh
    interpreter, pulls in none of the platform's heavy libraries, nor trm.launch / trm.sweep."""
    code = f"""
import importlib, json, pkgutil, sys
names = []
for top in {CORE!r} + ("trm.errors", "trm.cost", "trm.storage", "trm.cli_common", "trm.cli"):
    mod = importlib.import_module(top)
    names.append(top)
    for info in pkgutil.walk_packages(getattr(mod, "__path__", []), top + "."):
        importlib.import_module(info.name)
        names.append(info.name)
loaded = sorted({{m.split(".")[0] for m in sys.modules}} & set({HEAVY!r}))
upper = sorted(m for m in sys.modules if m.startswith(("trm.launch", "trm.sweep", "trm.tracking")))
print(json.dumps({{"modules": names, "heavy": loaded, "upper": upper}}))
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                       env={**os.environ, "PYTHONPATH": str(REPO)}, cwd=REPO)
    assert r.returncode == 0, r.stderr[-3000:]
    got = json.loads(r.stdout.strip().splitlines()[-1])
    assert {"trm.train.loop", "trm.evaluate.vote", "trm.data.arc"} <= set(got["modules"])
    assert got["heavy"] == [], got
    assert got["upper"] == [], got
