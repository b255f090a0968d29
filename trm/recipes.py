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
