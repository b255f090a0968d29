"""The throughput benchmarks share one reference-style loop (benchmarks/reference_loop.py); each
script still prints its figures. (benchmarks/gpu_throughput.py is smoked in test_step.py.)"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_throughput_benchmark_smokes_on_cpu():
    r = subprocess.run([sys.executable, str(REPO / "benchmarks" / "throughput.py"), "--device", "cpu", "--arch", "both",
                        "--hidden", "32", "--layers", "1", "--n", "2", "--T", "2", "--puzzles", "4",
                        "--steps", "1", "--warmup", "1", "--threads", "1"],
                       capture_output=True, text=True, timeout=300, cwd=REPO, check=False)
    assert r.returncode == 0, r.stderr[-3000:]
    for arch in ("mlp", "attention"):
        assert f"== arch {arch} | parameters: ours" in r.stdout
    rows = [line.split() for line in r.stdout.splitlines() if line.strip().startswith(("ours ", "reference "))]
    assert len(rows) == 4 and all(len(row) == 5 for row in rows), r.stdout
    ratios = [line for line in r.stdout.splitlines() if line.strip().startswith("ratio ours/reference:")]
    assert len(ratios) == 2, r.stdout
    for line in ratios:  # same initial weights, same first batch: the same first loss
        ours, ref = line.split("first loss: ours ")[1].split(", reference ")
        assert ours == ref, line


def test_fault_matrix_prints_a_row_per_fault_tried():
    r = subprocess.run([sys.executable, str(REPO / "benchmarks" / "fault_matrix.py"), "YAML", "lr=nan", "diverges"],
                       capture_output=True, text=True, timeout=600, cwd=REPO, check=False)  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    rows = {line.split(" | ")[0].strip("| "): line.split(" | ")[1:] for line in r.stdout.splitlines()
            if line.startswith("| ") and "---" not in line and not line.startswith("| fault")}  # fmt: skip
    assert set(rows) == {"YAML syntax error", "--set lr=nan", "loss diverges (lr=1e6)"}, r.stdout
    assert rows["YAML syntax error"][:2] == ["refused", "2"]
    assert rows["loss diverges (lr=1e6)"][0] == "stopped" and "diverged at step" in rows["loss diverges (lr=1e6)"][2]
    assert "3 of 3 faults end well" in r.stdout
