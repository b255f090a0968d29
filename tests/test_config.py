from pathlib import Path

import pytest

from trm.config import Config, ConfigError, apply_overrides, config_from_dict, load_config, parse_set


def test_defaults_are_the_papers():
    c = Config().validate()
    m, t = c.model, c.train
    assert (m.hidden, m.heads, m.expansion, m.layers, m.n, m.T, m.N_sup) == (512, 8, 4.0, 2, 6, 3, 16)
    assert (t.lr, t.weight_decay, t.ema, t.batch_size, t.beta1, t.beta2, t.puzzle_emb_lr) == \
        (1e-4, 1.0, 0.999, 768, 0.9, 0.95, 1e-2)
    assert c.effective_depth == 2 * 7 * 3 == 42


@pytest.mark.parametrize("key,value,needle", [
    ("n", "0", "model.n=0: expected 1 <= n"),
    ("T", "-1", "model.T=-1"),
    ("ema", "1.0", "train.ema=1.0: expected 0 <= ema < 1"),
    ("arch", "rnn", "model.arch='rnn': expected one of ['attention', 'mlp']"),
    ("hidden", "abc", "model.hidden='abc': expected an integer"),
    ("bf16", "maybe", "train.bf16='maybe': expected true or false"),
    ("heads", "7", "model.hidden=512: expected a multiple of model.heads=7"),
    ("nope", "1", "nope: unknown field"),
    ("model.nope", "1", "model.nope: unknown field"),
    ("optim.lr", "1", "unknown section 'optim'"),
])
def test_bad_values_name_the_field(key, value, needle):
    with pytest.raises(ConfigError) as e:
        load_config(None, {key: value})
    assert needle in str(e.value)


def test_yaml_and_overrides(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("model:\n  n: 4\n  arch: mlp\ntrain:\n  lr: 3.0e-4\n")
    c = load_config(f, parse_set(["T=2", "train.ema=0"]))
    assert (c.model.n, c.model.arch, c.model.T, c.train.lr, c.train.ema) == (4, "mlp", 2, 3e-4, 0.0)
    f.write_text("modle:\n  n: 4\n")
    with pytest.raises(ConfigError, match="unknown section 'modle'"):
        load_config(f)
    with pytest.raises(ConfigError, match="expected key=value"):
        parse_set(["n4"])


def test_flat_names_round_trip():
    c = apply_overrides(Config(), {"n": 3, "lr": 2e-4, "data_path": "x"}).validate()
    flat = c.flat()
    assert flat["n"] == 3 and flat["lr"] == 2e-4 and flat["data_path"] == "x"
    assert config_from_dict(c.to_dict()) == c


def test_config_error_is_a_user_facing_value_error():
    from trm.errors import TrmError

    assert issubclass(ConfigError, TrmError) and issubclass(ConfigError, ValueError)


@pytest.mark.parametrize("section,name,value,needle", [
    ("model", "arch", "rnn", "model.arch='rnn': expected one of ['attention', 'mlp']"),
    ("train", "optimizer", "sgd", "train.optimizer='sgd': expected one of ['adam_atan2', 'adamw']"),
    ("train", "device", "tpu", "train.device='tpu': expected one of ['auto', 'cpu', 'cuda']"),
    ("data", "generate", "arc", "data.generate='arc': expected one of ['none', 'sudoku', 'maze']"),
    ("train", "epochs", 1.5, "train.epochs=1.5: expected an integer"),
])
def test_validate_checks_choices_from_the_types(section, name, value, needle):
    """A value set in Python (not through overrides) is checked by the same type hints."""
    c = Config()
    setattr(getattr(c, section), name, value)
    with pytest.raises(ConfigError) as e:
        c.validate()
    assert needle in str(e.value)


# ---------------------------------------------------------------- the reference's recipes
REPO = Path(__file__).resolve().parents[1]
# the reference README's commands, with config/cfg_pretrain.yaml and config/arch/trm.yaml for what they leave out
REFERENCE = {
    "sudoku-extreme-mlp": dict(arch="mlp", n=6, epochs=50_000, eval_every_epochs=5_000, weight_decay=1.0,
                               puzzle_emb_lr=1e-4, puzzle_emb_weight_decay=1.0),
    "sudoku-extreme-att": dict(arch="attention", n=6, epochs=50_000, eval_every_epochs=5_000, weight_decay=1.0,
                               puzzle_emb_lr=1e-4, puzzle_emb_weight_decay=1.0),
    "maze-hard": dict(arch="attention", n=4, epochs=50_000, eval_every_epochs=5_000, weight_decay=1.0,
                      puzzle_emb_lr=1e-4, puzzle_emb_weight_decay=1.0),
    "arc-agi-1": dict(arch="attention", n=4, epochs=100_000, eval_every_epochs=10_000, weight_decay=0.1,
                      puzzle_emb_lr=1e-2, puzzle_emb_weight_decay=0.1),
    "arc-agi-2": dict(arch="attention", n=4, epochs=100_000, eval_every_epochs=10_000, weight_decay=0.1,
                      puzzle_emb_lr=1e-2, puzzle_emb_weight_decay=0.1),
}
COMMON = dict(T=3, layers=2, hidden=512, heads=8, expansion=4.0, N_sup=16, halt_exploration=0.1,
              puzzle_emb_ndim=512, puzzle_emb_len=16, batch_size=768, lr=1e-4, lr_warmup_steps=2000,
              lr_schedule="constant", beta1=0.9, beta2=0.95, ema=0.999, optimizer="adam_atan2")
# presets and recipes may differ only in where the data is and how often a run evaluates / checkpoints
SCHEDULE = {"data_path", "generate", "num_train", "num_test", "augmentations", "steps", "epochs",
            "eval_every", "eval_every_epochs", "eval_samples", "checkpoint_every"}


@pytest.mark.parametrize("recipe", sorted(REFERENCE))
def test_recipes_are_the_reference_commands(recipe):
    c = load_config(REPO / "configs" / f"{recipe}.yaml")
    flat = {**c.flat(), **c.to_dict()["train"]}
    for k, v in {**COMMON, **REFERENCE[recipe]}.items():
        assert flat[k] == v, (recipe, k, flat[k], v)
    if recipe != "arc-agi-1" and recipe != "arc-agi-2":  # 1000 puzzle groups of one example each
        t = c.resolve_epochs(1000.0).train
        assert (t.steps, t.eval_every) == (65_104, 6_511)


@pytest.mark.parametrize("preset,recipe", [
    ("sudoku", "sudoku-extreme-mlp"), ("sudoku-extreme", "sudoku-extreme-mlp"),
    ("sudoku-extreme-att", "sudoku-extreme-att"), ("maze-hard", "maze-hard"), ("arc-agi-1", "arc-agi-1"),
    ("arc-agi-2", "arc-agi-2")])
def test_presets_match_their_recipes(preset, recipe):
    from trm.sweep.presets import PRESETS

    c = load_config(REPO / "configs" / f"{recipe}.yaml")
    p = load_config(None, PRESETS[preset].overrides)
    want, got = c.flat(), {**p.flat(), **p.to_dict()["train"]}
    assert {k: v for k, v in want.items() if k not in SCHEDULE} == \
        {k: got[k] for k in want if k not in SCHEDULE}
    if c.train.epochs and not p.train.epochs:  # a puzzle preset: the recipe's length, counted in steps
        assert p.train.steps == c.resolve_epochs(1000.0).train.steps


def test_recipe_parameter_counts_are_the_references(capsys):
    """`trm params` (each recipe's network built from configs/ and counted): the network's nn.Parameters,
    the reference's count (its puzzle-embedding table is a buffer)."""
    from trm.cli import main

    reference = {"sudoku-extreme-mlp": 5_028_866, "sudoku-extreme-att": 6_828_034, "maze-hard": 6_822_914,
                 "arc-agi-1": 6_829_058, "arc-agi-2": 6_829_058}
    assert main(["params"]) in (0, None)
    rows = {line.split()[0]: int(line.split()[-1].replace(",", "")) for line in capsys.readouterr().out.splitlines()
            if line.split() and line.split()[0] in reference}
    assert rows == reference
