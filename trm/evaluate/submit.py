"""ARC Prize submission: `submission.json` from a challenges file and a trained model.

The Kaggle format (arc-prize `sample_submission.json`): one entry per task id of the
challenges file, a list with one dict per test input in order, each
`{"attempt_1": grid, "attempt_2": grid}` (grids: lists of rows of ints 0..9). The attempts are
the top-2 candidates of the augmentation vote; where the model produced fewer valid grids, the
test input itself (a valid grid) fills in, so the file is always complete.

Challenge task ids map to puzzle ids through the dataset the model was trained on (its meta's
task_ids, task_first_puzzle_id): the tasks must be held-out tasks there (their test inputs form
the test split). Torch and numpy only: runs offline on a Kaggle machine.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from trm.data.dataset import PuzzleDataset
from trm.errors import TrmError

if TYPE_CHECKING:
    from trm.evaluate import Trajectories


class SubmitError(TrmError, ValueError):
    """A challenges file, task or submission that cannot be used; the message names the flag."""


def _grid_ok(g) -> bool:
    return (
        isinstance(g, list)
        and 1 <= len(g) <= 30
        and all(isinstance(r, list) for r in g)
        and 1 <= len(g[0]) <= 30
        and all(len(r) == len(g[0]) for r in g)
        and all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 9 for r in g for v in r)
    )


def read_challenges(path: str | Path, flag: str = "--challenges") -> dict[str, list[np.ndarray]]:
    """{task_id: [test input grid, ...]} from a Kaggle challenges file
    ({task_id: {"train": [{"input", "output"}...], "test": [{"input"}...]}})."""
    path = Path(path)
    if not path.is_file():
        raise SubmitError(f"{flag} {path}: no such file")
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise SubmitError(f"{flag} {path}: not valid JSON ({e})") from e
    if not isinstance(raw, dict) or not raw:
        raise SubmitError(
            f"{flag} {path}: expected the Kaggle challenges format, a JSON object "
            f'{{task_id: {{"train": [...], "test": [{{"input": grid}}, ...]}}}}'
        )
    out = {}
    for tid, task in raw.items():
        where = f"{flag} {path}: task {tid!r}"
        if (
            not isinstance(task, dict)
            or not isinstance(task.get("test"), list)
            or not task["test"]
            or not isinstance(task.get("train"), list)
        ):
            raise SubmitError(
                f'{where}: expected {{"train": [...], "test": [{{"input": grid}}, ...]}} (the Kaggle challenges format)'
            )
        tests = []
        for i, t in enumerate(task["test"]):
            if not isinstance(t, dict) or not _grid_ok(t.get("input")):
                raise SubmitError(f"{where}: test input {i} is not a grid (rows of 1..30 ints 0..9)")
            tests.append(np.asarray(t["input"], dtype=np.uint8))
        out[str(tid)] = tests
    return out


def map_tasks(
    challenges: dict[str, list[np.ndarray]], samples, data_path, flag: str = "--challenges"
) -> dict[str, int]:
    """challenge task id -> task index of the dataset (a held-out task with the same test inputs)."""
    ids = samples.task_ids
    held = {k[0] for k in samples.inputs}
    by_id = {tid: i for i, tid in enumerate(ids)}
    by_stem: dict[str, list[int]] = {}
    for index, tid in enumerate(ids):
        by_stem.setdefault(tid.rsplit("/", 1)[-1], []).append(index)
    out, missing = {}, []
    for tid, inputs in challenges.items():
        i = by_id.get(tid)
        if i is None and len(by_stem.get(tid, [])) == 1:
            i = by_stem[tid][0]
        if i is None or i not in held:
            missing.append(tid)
            continue
        mine = sorted(k[1] for k in samples.inputs if k[0] == i)
        if len(mine) != len(inputs) or any(not np.array_equal(samples.inputs[(i, q)], inputs[q]) for q in mine):
            raise SubmitError(
                f"{flag}: task {tid}'s test inputs differ from those of task {ids[i]} in the "
                f"checkpoint's dataset {data_path}"
            )
        out[tid] = i
    if missing:
        raise SubmitError(
            f"{flag}: {len(missing)} task(s) are not held-out tasks of the checkpoint's dataset {data_path} "
            f"({len(held)} held out), e.g. {', '.join(missing[:5])}; build a dataset from the challenges "
            f"(trm data arc --src CHALLENGES_FOLDER --test-set SUBSET) and fine-tune on it "
            f"(trm train --init-from CHECKPOINT --set data_path=...), then submit with that run"
        )
    return out


def build_submission(challenges: dict[str, list[np.ndarray]], result, task_map: dict[str, int]) -> dict:
    """{task_id: [{"attempt_1": grid, "attempt_2": grid}, ...]} in the challenges' order."""
    votes = {(t.task_index, t.test_index): t for t in result.tests}
    sub = {}
    for tid, inputs in challenges.items():
        entries = []
        for q, inp in enumerate(inputs):
            t = votes.get((task_map[tid], q))
            grids = [c.grid for c in t.candidates[:2]] if t is not None else []
            while len(grids) < 2:  # no valid answer: the input itself, a valid grid
                grids.append(inp)
            entries.append({"attempt_1": np.asarray(grids[0]).tolist(), "attempt_2": np.asarray(grids[1]).tolist()})
        sub[tid] = entries
    return sub


def check_submission(sub: dict, challenges: dict[str, list[np.ndarray]]) -> None:
    missing = [t for t in challenges if t not in sub or len(sub[t]) != len(challenges[t])]
    bad = [
        t
        for t, es in sub.items()
        for e in es
        if set(e) != {"attempt_1", "attempt_2"} or not (_grid_ok(e["attempt_1"]) and _grid_ok(e["attempt_2"]))
    ]
    if missing or bad:
        raise SubmitError(f"submission incomplete (tasks {missing[:5]}) or malformed (tasks {bad[:5]}): not written")


def write_submission(out: str | Path, sub: dict, challenges: dict[str, list[np.ndarray]]) -> Path:
    """Checked complete, then written atomically (a temporary file renamed into place)."""
    check_submission(sub, challenges)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", dir=out.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(sub, f)
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return out


def submit(
    model,
    data_path: str | Path,
    challenges_path: str | Path,
    out: str | Path,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
    n_sup: int | None = None,
    halt: bool = False,
    autocast: bool = False,
    trajectories: Trajectories | None = None,
) -> dict:
    """Vote on every test input of the challenges' tasks and write `out`; returns a summary (scores
    too when the dataset knows the test outputs). trajectories: noisy multi-trajectory inference,
    every run's answer entering the vote with its halting confidence (`Vote.add_predictions`)."""
    from trm.evaluate import PLAIN, predict_chunks
    from trm.evaluate.vote import Vote, VoteSamples, check_model

    runs = trajectories or PLAIN

    challenges = read_challenges(challenges_path)
    ds = PuzzleDataset(data_path, "test")
    if ds.meta.get("name") != "arc":
        raise SubmitError(f"--data {data_path}: not an ARC dataset (meta name {ds.meta.get('name')!r})")
    check_model(model, ds)
    samples = VoteSamples.from_dataset(ds)
    task_map = map_tasks(challenges, samples, data_path)
    rows = np.flatnonzero(np.isin(samples.task_index, list(task_map.values())))
    vote = Vote(samples)
    for p in predict_chunks(
        model,
        ds,
        rows,
        batch_size,
        torch.device(device),
        autocast=autocast,
        n_sup=n_sup,
        halt=halt,
        label="submit",
        trajectories=runs,
        keep_trajectories=runs.k > 1,
    ):
        vote.add_predictions(p)
    result = vote.result()
    path = write_submission(out, build_submission(challenges, result, task_map), challenges)
    return {
        "submission": str(path),
        "tasks": len(challenges),
        "test_inputs": sum(map(len, challenges.values())),
        "augmented_inputs": len(rows),
        **runs.params(),
        **result.metrics,
    }
