"""One objective per sweep, for every dataset kind: the metric (and direction) the trial's trainer keeps
its best checkpoint by is the one ASHA, the overfitting stopper, Optuna, the MLflow callback and the
reports rank by. Built with the sweep's own builders (trm.sweep.tune) and a real trainer; no Ray runs."""
from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import TINY
from trm.config import Config, ConfigError, DataConfig, apply_overrides, load_config
from trm.evaluate.objective import ARC_METRIC, EXACT_METRIC, MAZE_METRIC, Objective, objective_for
from trm.launch.cluster import WorkerSpec
from trm.sweep.presets import PRESETS
from trm.sweep.tune import SweepOptions, TrialSetup, base_config, make_ranking, make_searcher, sweep_objective
from trm.train import checkpoint as ckpt
from trm.train.loop import Trainer
from trm.train.session import LocalSession


@pytest.fixture(scope="module")
def datasets(tmp_path_factory, sudoku_data) -> dict[str, str]:
    """A tiny dataset of each kind."""
    from tests.test_arc import _arc_cli, _subsets, _write_combined
    from trm.data import maze

    root = tmp_path_factory.mktemp("kinds")
    d = DataConfig(path=str(root / "maze"), generate="maze", num_train=2, num_test=3, augmentations=0)
    maze.build_from_config(d, d.path)
    _write_combined(root / "kaggle", _subsets())
    arc = _arc_cli("--src", str(root / "kaggle"), "--out", str(root / "arc"), "--test-set", "evaluation")
    return {"sudoku": sudoku_data, "maze": d.path, "arc": str(arc)}


S = "select/"  # the objective's twin on the selection split (trm.data.selection): what ranks by default
CASES = [  # (dataset kind, train.objective override, the objective everything must rank by)
    ("sudoku", "", Objective(S + EXACT_METRIC)),
    ("maze", "", Objective(S + MAZE_METRIC)),
    ("arc", "", Objective(S + ARC_METRIC)),
    ("sudoku", "val/cell_accuracy", Objective(S + "val/cell_accuracy")),  # the tiny preset's override
]


@pytest.mark.parametrize("kind,override,want", CASES, ids=[f"{k}{'+' + o if o else ''}" for k, o, _ in CASES])
def test_one_objective_ranks_everything(datasets, tmp_path: Path, kind: str, override: str, want: Objective):
    base = apply_overrides(Config(), {**TINY, "data_path": datasets[kind], "generate": "none", "steps": 2,
                                      "eval_every": 2, "checkpoint_every": 2, "log_every": 1, "device": "cpu",
                                      "objective": override}).validate()
    objective = sweep_objective(base)  # what run_sweep does once preflight has staged the data
    assert objective == want

    preset = PRESETS["tiny"]
    ranking = make_ranking(objective, base, preset, WorkerSpec(), "sqlite:///unused.db", "parent")
    assert ranking.objective == want
    assert (ranking.scheduler._metric, ranking.scheduler._mode) == (want.name, want.mode)  # ASHA
    assert (ranking.stopper.metric, ranking.stopper.objective) == (want.name, want)  # the overfitting stopper
    assert ranking.stopper.train_metric == want.train_metric
    assert (ranking.callback.metric, ranking.callback.objective) == (want.name, want)  # MLflow callback
    searcher = make_searcher(objective, SweepOptions(name="t"), "study", f"sqlite:///{tmp_path / 'optuna.db'}", None)
    assert (searcher.metric, searcher.mode) == (want.name, want.mode)  # Optuna
    multi = make_searcher(objective, SweepOptions(name="t", multi_objective=True), "study2",
                          f"sqlite:///{tmp_path / 'optuna.db'}", None)
    assert (multi.metric[0], multi.mode[0]) == (want.name, want.mode)

    # the trial's trainer: its config is the sweep's base with the proposed values; it keeps its best
    # checkpoint (score.json) by the same objective
    setup = TrialSetup(base, "sqlite:///unused.db", "parent", str(tmp_path / "trials"), WorkerSpec(), objective)
    cfg = setup.config({"n": 1})
    assert cfg.train.objective == want.name
    trainer = Trainer(cfg, LocalSession(tmp_path / "run"))
    assert trainer.objective == want
    trainer.fit()
    best = ckpt.resolve(str(tmp_path / "run"), prefer="best")
    assert ckpt.read_score(Path(best))["metric"] == want.name

    # `trm eval` of that checkpoint reports the same metric (beside the reported one, on the other rows);
    # over the whole split (--whole-split) the metric as reported
    from trm.data.dataset import PuzzleDataset
    from trm.data.selection import Selection
    from trm.evaluate.task import evaluate_task

    ds = PuzzleDataset(cfg.data.path, "test")
    r = evaluate_task(trainer.eval_model, ds, 8, "cpu", objective=cfg.train.objective or None,
                      selection=Selection.of(cfg.train))
    assert r.metric == want.name and want.name in r.metrics and want.reported in r.metrics
    whole = evaluate_task(trainer.eval_model, ds, 8, "cpu", objective=cfg.train.objective or None)
    assert whole.metric == want.reported and want.reported in whole.metrics


def test_reference_selects_on_what_it_reports(datasets):
    """train.select_on=test (the reference's behaviour) ranks everything by the reported metric itself."""
    base = apply_overrides(Config(), {"data_path": datasets["maze"], "generate": "none", "select_on": "test"})
    objective = sweep_objective(base.validate())
    assert objective == Objective(MAZE_METRIC) and base.train.objective == MAZE_METRIC
    assert objective.train_metric == "train/exact_accuracy"
    assert Objective(S + "val/cell_accuracy").train_metric == "train/cell_accuracy"


def test_maze_preset_has_one_best(datasets):
    """The "two bests" bug: the maze-hard preset ranked trials by val/exact_accuracy while its trainers
    kept their best checkpoints by eval/maze_valid_path_accuracy."""
    base, preset = base_config(SweepOptions(name="m", preset="maze-hard", overrides={"data_path": datasets["maze"]}))
    assert not hasattr(preset, "metric") and "objective" not in preset.overrides
    objective = sweep_objective(base)
    assert objective.name == S + MAZE_METRIC and base.train.objective == S + MAZE_METRIC
    assert objective_for({"name": "maze"}, base.train.objective or None) == objective  # what the trainer makes


def test_no_preset_names_a_metric_but_tiny():
    overridden = {name for name, p in PRESETS.items() if p.overrides.get("objective")}
    assert overridden == {"tiny"}


def test_unreadable_data_falls_back_to_the_generators_kind(tmp_path: Path):
    base = apply_overrides(Config(), {"data_path": str(tmp_path / "not-built-yet"), "generate": "maze"})
    assert sweep_objective(base) == Objective(S + MAZE_METRIC)


@pytest.mark.parametrize("bad", ["loss", "train/loss", "val/", "exact_accuracy", "select/", "select/val/", "select/x"])
def test_objective_override_must_name_an_evaluation_metric(bad: str):
    with pytest.raises(ConfigError, match="train.objective"):
        load_config(None, {"objective": bad})
