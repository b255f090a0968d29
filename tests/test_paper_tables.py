"""The paper's tables: `trm params` per variant and per table row beside the paper's counts, and
`sweeps/paper_tables.py` (one row per table row, mean +- std, the MLflow parent's description)."""

import math
import os
import subprocess
import sys

import pytest
import torch

from tests.mlflow_server import REPO
from trm.config import load_config
from trm.data import maze, sudoku
from trm.model import count_parameters
from trm.recipes import recipe_path
from trm.sweep import paper
from trm.variants import build_model

SHAPES = {"sudoku": sudoku, "maze": maze}


def counted(recipe: str, overrides: dict) -> int:
    """The network of configs/RECIPE.yaml with `overrides`, built (on the meta device) and counted here."""
    m = load_config(recipe_path(recipe), overrides).model
    shape = SHAPES[recipe.split("-")[0]]
    with torch.device("meta"):
        return count_parameters(build_model(m, shape.VOCAB_SIZE, shape.SEQ_LEN, 1))


def params_output(capsys) -> list[list[str]]:
    from trm.cli import main

    assert main(["params"]) in (0, None)
    return [line.split() for line in capsys.readouterr().out.splitlines() if line.split()]


def test_params_prints_every_variant_beside_the_papers_count(capsys):
    lines = params_output(capsys)
    variants = [x for x in lines if x[0] in ("trm", "singlez", "multiz", "hrm", "transformer")]
    assert {x[0] for x in variants} == {"trm", "singlez", "multiz", "hrm", "transformer"}
    assert len(variants) == len(paper.PAPER_VARIANT_PARAMS)
    for (variant, recipe, claimed), x in zip(paper.PAPER_VARIANT_PARAMS, variants, strict=True):
        assert (x[0], x[1]) == (variant, recipe)
        n = int(x[6].replace(",", ""))
        assert n == counted(recipe, {"variant": variant})
        assert " ".join(x[7:]) == claimed
        if claimed != "—":  # the paper's count, rounded to millions as it prints it
            assert round(n / 1e6) == int(claimed.split("M")[0]), (variant, n, claimed)
    assert dict((x[0], int(x[6].replace(",", ""))) for x in variants if x[1] == "sudoku-extreme-att")["hrm"] > 27e6


def test_params_prints_every_table_row_beside_the_papers_count(capsys):
    lines = params_output(capsys)
    rows = {(x[0], x[1]): x for x in lines if x[0] in paper.TABLES}
    want = [(t, r) for t, rs in paper.TABLES.items() for r in rs]
    assert set(rows) == {(t, r.key) for t, r in want}
    base = load_config(recipe_path(paper.TABLE_BASE_RECIPE)).model  # the paper's TRM: T=3, n=6, 2 layers
    assert (base.T, base.n, base.layers, base.arch) == (3, 6, 2, "mlp")
    for table, row in want:
        x = rows[(table, row.key)]
        n = int(x[-2].replace(",", ""))
        assert n == counted(paper.TABLE_BASE_RECIPE, row.values(base))
        assert x[-1] == row.params
        if row.params != "—":  # Table 1's "# Params" column, at the paper's width
            assert round(n / 1e6) == int(row.params.rstrip("M")), (row.label, n)


def test_rows_expand_to_valid_configs_and_differ_from_the_trm():
    from trm.sweep.presets import PRESETS

    base = load_config(None, {**PRESETS["smoke"].overrides, **paper.SMALL_DEPTH})
    seen = {}
    for row in paper.rows_of("all"):
        values = paper.expand({"row": row.key, "seed": 1}, base.model)
        cfg = load_config(None, {**PRESETS["smoke"].overrides, **paper.SMALL_DEPTH, **values})
        assert cfg.train.seed == 1
        seen[row.key] = (cfg.flat(), cfg.train.ema)
    trm = seen.pop("trm")
    assert all(v != trm for v in seen.values())  # every row changes something
    assert seen["hrm"][0]["variant"] == "hrm" and base.model.variant == "trm"
    # the depth rows keep the paper's proportions at the small depth (L1-n2-T2)
    assert (seen["layers4_n3"][0]["layers"], seen["layers4_n3"][0]["n"]) == (2, 1)
    assert (seen["T2_n2"][0]["T"], seen["T2_n2"][0]["n"]) == (1, 1)
    assert (seen["hrm"][0]["layers"], seen["hrm"][0]["n"], seen["hrm"][0]["T"]) == (2, 2, 2)
    assert [r.key for r in paper.rows_of("1")][0] == "hrm" and len(paper.rows_of("1")) == 9
    assert len(paper.rows_of("2")) == 3 and len(paper.rows_of("all")) == 11


def test_bad_table_is_one_line_and_exit_2(tmp_path):
    r = subprocess.run([sys.executable, str(REPO / "sweeps" / "paper_tables.py"), "--table", "3"], cwd=tmp_path,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "--table: invalid choice: '3'" in r.stderr, r.stderr
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_table_2_smallest_run(tmp_path):
    """Table 2 at the tiny preset, two seeds, few steps: one printed row per table row with the paper's number,
    a mean (and, with 2 seeds, a std) per row, and the same table as the MLflow parent's description."""
    from mlflow.tracking import MlflowClient

    db = f"sqlite:///{tmp_path / 'mlflow.db'}"
    args = ["--table", "2", "--seeds", "2", "--preset", "tiny", "--set", "steps=8", "--set", "eval_every=4",
            "--set", "checkpoint_every=8", "--set", "N_sup=1", "--max-concurrent", "2",
            "--storage", str(tmp_path / "runs"), "--tracking-uri", db]
    r = subprocess.run([sys.executable, str(REPO / "sweeps" / "paper_tables.py"), *args], cwd=tmp_path,
                       capture_output=True, text=True, timeout=900,
                       env={**os.environ, "RAY_AUTH_MODE": "disabled", "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    printed = [line for line in r.stdout.splitlines() if line.startswith("| TRM ")]
    assert [line.split("|")[1].strip() for line in printed] == [row.label for row in paper.TABLE_2]
    for line, row in zip(printed, paper.TABLE_2, strict=True):
        cells = [c.strip() for c in line.split("|")[1:-1]]
        mean, _, std = cells[3].partition(" ± ")
        assert math.isfinite(float(mean)) and math.isfinite(float(std)), line
        assert len(cells[4].split()) == 2  # one final value per seed
        assert float(cells[5]) == row.accuracy

    client = MlflowClient(db)
    runs = client.search_runs([client.get_experiment_by_name("paper_table_2").experiment_id])
    parent = next(x for x in runs if "mlflow.parentRunId" not in x.data.tags)
    children = [x for x in runs if x.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(children) == 6
    assert {x.data.tags["trial_end_reason"] for x in children} == {"completed"}  # no early stop in a table
    assert {x.data.params["variant"] for x in children} == {"trm", "multiz", "singlez"}
    note = parent.data.tags["mlflow.note.content"]
    for line in printed:
        assert line in note
    assert {a.path for a in client.list_artifacts(parent.info.run_id)} >= {paper.ART_PAPER_TABLE,
                                                                          paper.ART_PAPER_FIGURE}
