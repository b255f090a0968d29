"""The paper's recipes: configs/*.yaml, one per command of the reference README. The one place they are
written; the sweep presets (`trm.sweep.presets`) and `trm params` read them from here."""

from __future__ import annotations

from pathlib import Path

import yaml

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
KINDS = ("sudoku", "maze", "arc")  # a recipe's file name starts with the kind of its data


def recipe_names() -> list[str]:
    return sorted(p.stem for p in CONFIGS.glob("*.yaml"))


def recipe_path(name: str) -> Path:
    return CONFIGS / f"{name}.yaml"


def recipe(name: str) -> dict:
    """The values configs/NAME.yaml sets, as --set keys (`data.path` as `data_path`)."""
    raw = yaml.safe_load(recipe_path(name).read_text())
    return {
        ("data_path" if (section, k) == ("data", "path") else k): v
        for section, values in raw.items()
        for k, v in values.items()
    }


def recipe_kind(name: str) -> str | None:
    """sudoku, maze or arc, from the file name (None when it starts with none of them)."""
    return next((k for k in KINDS if name.startswith(k)), None)


def recipe_parameters(name: str, overrides: dict | None = None) -> int:
    """The parameter count of configs/NAME.yaml's network with `overrides` (`--set` keys; a variant brings
    its own values), built on the meta device (no memory, no init) for its kind's vocabulary and length."""
    import torch

    from trm.config import ConfigError, load_config
    from trm.data import arc, maze, sudoku
    from trm.model import count_parameters
    from trm.variants import build_model

    kind = recipe_kind(name)
    if kind is None:
        raise ConfigError(f"{recipe_path(name)}: expected a file name starting with one of {list(KINDS)}")
    shape = {"sudoku": sudoku, "maze": maze, "arc": arc}[kind]
    m = load_config(recipe_path(name), overrides or {}).model
    with torch.device("meta"):
        return count_parameters(build_model(m, shape.VOCAB_SIZE, shape.SEQ_LEN, 1))
