"""Where the paper's datasets come from, by name: the registry behind `trm data download NAME`.

Each entry names its source files (a Hugging Face dataset repo, or files on GitHub fetched over
HTTPS), the revision they are pinned to, each file's sha256 and size where known, and the
`trm data sudoku|maze|arc` flags of the reference's build command. `{file}` in a flag is the
fetched file's local path, `{dir}` the folder holding the fetched files.

Values nobody here could check against the real hosts are None (this project was written on a
machine that reaches neither the hub nor GitHub): an unknown sha256 is recorded on the first fetch
in `<cache>/checksums.json` and every later fetch is verified against that record; an unknown
revision means the branch head (`main`), whose resolved commit is recorded the same way. Fill in a
real value here to pin it for everybody.

`TRM_SOURCES=FILE.json` adds or replaces entries ({name: {...fields of Source...}}); tests point it
at a registry of small served files.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from trm.data.dataset import DatasetError

HUB, GITHUB = "hub", "github"


@dataclass(frozen=True)
class SourceFile:
    path: str  # inside the repo
    sha256: str | None = None  # None: not pinned yet (recorded on first fetch)
    size: int | None = None


@dataclass(frozen=True)
class Source:
    name: str
    host: str  # HUB (a dataset repo on the Hugging Face hub) or GITHUB (raw files over HTTPS)
    repo: str
    files: tuple[SourceFile, ...]
    builder: str  # sudoku | maze | arc: the `trm data` subcommand that builds it
    build_args: tuple[str, ...]  # its flags (besides --out), as the reference's command
    revision: str | None = None  # a commit; None: the branch head, recorded on first fetch
    about: str = ""
    reference_command: str = ""

    @property
    def ref(self) -> str:
        return self.revision or "main"

    def describe(self) -> str:
        pinned = sum(f.sha256 is not None for f in self.files)
        return (
            f"{self.name:18s} {self.host}:{self.repo}@{self.revision or 'main (unpinned)'} "
            f"{len(self.files)} file(s), {pinned} with a recorded sha256 -> trm data {self.builder} "
            f"{' '.join(self.build_args)}"
        )


# The reference (SamsungSAILMontreal/TinyRecursiveModels) README's build commands:
#   python dataset/build_sudoku_dataset.py --output-dir data/sudoku-extreme-1k-aug-1000
#       --subsample-size 1000 --num-aug 1000
#   python dataset/build_maze_dataset.py                       (maze-30x30-hard-1k, no augmentation)
#   python -m dataset.build_arc_dataset --input-file-prefix kaggle/combined/arc-agi
#       --output-dir data/arc1concept-aug-1000
#       --subsets training evaluation concept --test-set-name evaluation
#   python -m dataset.build_arc_dataset ... --subsets training2 evaluation2 concept --test-set-name evaluation2
# HRM's full Sudoku-Extreme build is the same script without --subsample-size and --num-aug (0 augmentations).
# Our builders draw the 1K subsample and the shuffles with numpy's default_rng(--seed), not the
# reference's np.random.seed(42): the same recipe, not the same 1000 puzzles.
_TRM_REPO = "SamsungSAILMontreal/TinyRecursiveModels"


def _kaggle(subsets: tuple[str, ...]) -> tuple[SourceFile, ...]:
    return tuple(
        SourceFile(f"kaggle/combined/arc-agi_{s}_{part}.json") for s in subsets for part in ("challenges", "solutions")
    )


BUILTIN: dict[str, Source] = {
    s.name: s
    for s in (
        Source(
            "sudoku-extreme",
            HUB,
            "sapientinc/sudoku-extreme",
            (SourceFile("train.csv"), SourceFile("test.csv")),
            "sudoku",
            ("--csv-train", "{train.csv}", "--csv-test", "{test.csv}", "--augmentations", "0"),
            about="Sudoku-Extreme, all 3.8M training puzzles, no shuffles (HRM's full build)",
            reference_command="python dataset/build_sudoku_dataset.py --output-dir data/sudoku-extreme-full",
        ),
        Source(
            "sudoku-extreme-1k",
            HUB,
            "sapientinc/sudoku-extreme",
            (SourceFile("train.csv"), SourceFile("test.csv")),
            "sudoku",
            (
                "--csv-train",
                "{train.csv}",
                "--csv-test",
                "{test.csv}",
                "--subsample",
                "1000",
                "--augmentations",
                "1000",
                "--seed",
                "0",
            ),
            about="Sudoku-Extreme-1K: 1000 training puzzles x 1000 shuffles, the paper's Sudoku runs",
            reference_command="python dataset/build_sudoku_dataset.py --output-dir data/sudoku-extreme-1k-aug-1000 "
            "--subsample-size 1000 --num-aug 1000",
        ),
        Source(
            "maze-hard",
            HUB,
            "sapientinc/maze-30x30-hard-1k",
            (SourceFile("train.csv"), SourceFile("test.csv")),
            "maze",
            ("--csv", "{dir}", "--augmentations", "0"),
            about="Maze-Hard 30x30: 1000 training, 1000 test mazes, no augmentation (the paper's maze runs)",
            reference_command="python dataset/build_maze_dataset.py",
        ),
        Source(
            "arc-agi-1",
            GITHUB,
            _TRM_REPO,
            _kaggle(("training", "evaluation", "concept")),
            "arc",
            (
                "--src",
                "{dir}",
                "--subsets",
                "training",
                "evaluation",
                "concept",
                "--test-set",
                "evaluation",
                "--augmentations",
                "1000",
            ),
            about="ARC-AGI-1 + ConceptARC (Kaggle combined files), evaluation held out, 1000 augmentations",
            reference_command="python -m dataset.build_arc_dataset --input-file-prefix kaggle/combined/arc-agi "
            "--output-dir data/arc1concept-aug-1000 --subsets training evaluation concept "
            "--test-set-name evaluation",
        ),
        Source(
            "arc-agi-2",
            GITHUB,
            _TRM_REPO,
            _kaggle(("training2", "evaluation2", "concept")),
            "arc",
            (
                "--src",
                "{dir}",
                "--subsets",
                "training2",
                "evaluation2",
                "concept",
                "--test-set",
                "evaluation2",
                "--augmentations",
                "1000",
            ),
            about="ARC-AGI-2 + ConceptARC (Kaggle combined files), evaluation2 held out, 1000 augmentations",
            reference_command="python -m dataset.build_arc_dataset --input-file-prefix kaggle/combined/arc-agi "
            "--output-dir data/arc2concept-aug-1000 --subsets training2 evaluation2 concept "
            "--test-set-name evaluation2",
        ),
    )
}


def _from_json(name: str, d: dict, where: str) -> Source:
    try:
        files = tuple(SourceFile(**f) for f in d["files"])
        return Source(
            name=name,
            host=d["host"],
            repo=d["repo"],
            files=files,
            builder=d["builder"],
            build_args=tuple(d["build_args"]),
            revision=d.get("revision"),
            about=d.get("about", ""),
            reference_command=d.get("reference_command", ""),
        )
    except (KeyError, TypeError) as e:
        raise DatasetError(
            f"{where}: entry {name!r}: expected host, repo, files [{{path, sha256, size}}], "
            f"builder, build_args ({type(e).__name__}: {e})"
        ) from e


def registry(extra: str | Path | None = None) -> dict[str, Source]:
    """The built-in entries, plus/replaced by those of `extra` or of the file $TRM_SOURCES names."""
    out = dict(BUILTIN)
    path = extra or os.environ.get("TRM_SOURCES")
    if path:
        where = f"TRM_SOURCES={path}" if not extra else str(path)
        try:
            raw = json.loads(Path(path).read_text())
        except (OSError, ValueError) as e:
            raise DatasetError(f"{where}: cannot read a JSON registry: {e}") from e
        if not isinstance(raw, dict):
            raise DatasetError(f"{where}: expected a JSON object {{name: entry}}")
        for name, d in raw.items():
            s = _from_json(name, d, where)
            if s.host not in (HUB, GITHUB) or s.builder not in ("sudoku", "maze", "arc"):
                raise DatasetError(
                    f"{where}: entry {name!r}: host must be {HUB!r} or {GITHUB!r}, builder sudoku, maze or arc"
                )
            out[name] = s
    return out


def lookup(name: str, sources: dict[str, Source] | None = None) -> Source:
    sources = sources if sources is not None else registry()
    if name not in sources:
        raise DatasetError(
            f"dataset {name!r}: unknown; expected one of {', '.join(sorted(sources))} (`trm data download --list`)"
        )
    return sources[name]


__all__ = ["BUILTIN", "GITHUB", "HUB", "Source", "SourceFile", "lookup", "registry"]
