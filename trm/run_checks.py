"""What `trm train`, `trm eval` and `trm submit` check against a checkpoint before writing anything.

A resume refused inside the trainer used to come after the launcher had rewritten the run's
config.yaml (and reopened its MLflow run); an evaluation on another build of a dataset attached
puzzle embeddings to the wrong tasks without a word. These checks read a checkpoint's config,
dataset numbers and puzzle map (memory-mapped: the ARC puzzle table is GBs and is not touched)
and compare them with the run's config and dataset:

  resume       architecture, vocab_size / seq_len / num_puzzle_ids, the same task-to-puzzle-id map
  --init-from  architecture, vocab_size / seq_len; tasks in both keep their puzzle ids (new ones are fine)
  eval/submit  vocab_size / seq_len; every task of the dataset at the checkpoint's puzzle ids
"""

from __future__ import annotations

from pathlib import Path

import torch

from trm.config import Config
from trm.data.puzzle_map import (
    check_extends,
    check_same_ids,
    checkpoint_map,
    dataset_map,
)
from trm.train import checkpoint as ckpt
from trm.train.state import check_compatible

SHAPE_KEYS = ("vocab_size", "seq_len")  # the dataset's numbers every use of the weights must share


def checkpoint_header(folder: Path) -> dict:
    """A checkpoint's state.pt, memory-mapped (config, meta, extra are read; tensors stay on disk)."""
    try:
        return torch.load(folder / "state.pt", map_location="cpu", mmap=True, weights_only=False)
    except Exception:  # noqa: BLE001 - a legacy (non-zip) file or a corrupt one: the full read says which
        return ckpt.read_file(folder, "state.pt")


def check_resume(out: Path, cfg: Config, meta: dict) -> None:
    """A run folder's latest checkpoint fits this config and dataset (nothing to check without one)."""
    latest = ckpt.latest_local(out / "checkpoints")
    if latest is None:
        return
    state = checkpoint_header(latest)
    where = f"--out {out}: resuming from {latest.name}"
    _compatible(state, cfg, meta, where, (*SHAPE_KEYS, "num_puzzle_ids"))
    check_same_ids(checkpoint_map(state, str(latest)), dataset_map(meta, cfg.data.path), where)


def check_init_from(folder: Path, cfg: Config, meta: dict) -> None:
    """Fine-tuning from `folder`: same architecture and vocabulary; the dataset may add tasks."""
    state = checkpoint_header(folder)
    where = f"--init-from {folder}"
    _compatible(state, cfg, meta, where, SHAPE_KEYS)
    check_extends(checkpoint_map(state, str(folder)), dataset_map(meta, cfg.data.path), where)


def check_eval_data(state: dict, meta: dict, data: str, flag: str) -> None:
    """Evaluating or submitting the checkpoint `state` on the dataset `data` (its `meta`)."""
    where = f"{flag} {data}"
    diffs = [
        f"{k}: checkpoint {state['meta'].get(k)!r} vs dataset {meta.get(k)!r}"
        for k in SHAPE_KEYS
        if state["meta"].get(k) != meta.get(k)
    ]
    if diffs:
        raise ckpt.CheckpointError(
            f"{where}: another vocabulary or sequence length than the checkpoint's: " + "; ".join(diffs)
        )
    check_same_ids(checkpoint_map(state, where), dataset_map(meta, data), where)


def _compatible(state: dict, cfg: Config, meta: dict, where: str, keys: tuple[str, ...]) -> None:
    # the trainer's own rule (trm.train.state), checked here before anything is written
    check_compatible(
        state["config"]["model"],
        cfg.to_dict()["model"],
        where,
        {k: meta.get(k) for k in keys},
        {k: state["meta"].get(k) for k in keys},
    )
