"""Evaluation: run all N_sup supervision steps and score the final answer.

`predict` is the one place that runs a model for evaluation; the ARC
augmentation vote (`trm.evaluate.vote`) builds on its per-sample outputs.
The one number that picks the best checkpoint and ranks trials is the objective
(`trm.evaluate.objective`), made from the dataset kind.

Inference-time compute: `predict(n_sup=K)` runs K supervision steps (more or fewer than
trained); `halt=True` freezes each sample's answer at the first step its halting head says
"done"; `curve=True` keeps every step's answer (accuracy against supervision steps);
`trajectories=Trajectories(k, noise)` runs the recursion k times with noise on z and keeps the
answer the halting head is the most confident of (PTRM, 2026).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from trm.data.dataset import IGNORE, PuzzleDataset, SampleRows, iterate_batches
from trm.evaluate.objective import ARC_METRIC, EXACT_METRIC, MAZE_METRIC, Objective, objective_for
from trm.model import LatentNoise, RecursiveModel
from trm.progress import Progress

CHUNK = 8192  # rows predicted between two gathers: bounded memory at 1000 augmentations per test input


@dataclass
class Predictions:
    index: np.ndarray  # [N] sample index in the split
    tokens: np.ndarray  # [N, L] argmax prediction after the last step
    halt_steps: np.ndarray  # [N] first step whose halting logit says "done" (N_sup if never)
    confidence: np.ndarray  # [N] sigmoid of the final halting logit
    step_tokens: np.ndarray | None = None  # [K, N, L] uint8 answer after each step (predict(curve=True))
    # every trajectory's answer and halting confidence (predict(keep_trajectories=True)): [R, N, L], [R, N]
    run_tokens: np.ndarray | None = None
    run_confidence: np.ndarray | None = None

    def step_answer(self, k: int) -> np.ndarray:
        """[N, L] the answer after supervision step k + 1 (predictions made with curve=True)."""
        if self.step_tokens is None:
            raise ValueError("no per-step answers: predict with curve=True")
        return self.step_tokens[k]


def check_n_sup(n_sup: int | None, flag: str = "--N-sup") -> None:
    from trm.errors import TrmError

    if n_sup is not None and (not isinstance(n_sup, int) or n_sup < 1):
        raise TrmError(f"{flag} {n_sup}: expected a number of supervision steps >= 1")


def check_trajectories(k: int, noise: float, flags: tuple[str, str] = ("--trajectories", "--noise")) -> None:
    from trm.errors import TrmError

    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise TrmError(f"{flags[0]} {k}: expected a number of trajectories >= 1")
    if not isinstance(noise, int | float) or not math.isfinite(noise) or noise < 0:
        raise TrmError(f"{flags[1]} {noise}: expected a noise scale sigma >= 0 (0: no noise)")


@dataclass(frozen=True)
class Trajectories:
    """Noisy multi-trajectory inference (PTRM, 2026): `k` runs of the recursion per sample, each with
    Gaussian noise of scale `noise` added to z after every latent update (`trm.model.LatentNoise`),
    and the answer of the run whose halting head is the most confident (sigmoid of q_halt at the last
    supervision step, or at the halting step with halt=True). k=1 with noise 0 is plain inference: no
    noise is set on the model, so the forward is the plain one. The noise of run j on a batch is drawn
    from a generator seeded by (seed, j, the batch's first row of the split): the same seed and batch
    size give the same answers, whatever the chunking."""

    k: int = 1
    noise: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        check_trajectories(self.k, self.noise)

    @property
    def plain(self) -> bool:
        return self.k == 1 and self.noise == 0

    def params(self) -> dict[str, float | int]:
        """What a tracked evaluation logs as its params."""
        return {"trajectories": self.k, "noise": self.noise, "noise_seed": self.seed}

    def latent_noise(self, run: int, first_row: int, device: torch.device) -> LatentNoise | None:
        """The noise of run `run` on the batch starting at split row `first_row` (None without noise)."""
        if self.noise == 0:
            return None
        (state,) = np.random.SeedSequence([self.seed, run, first_row]).generate_state(1, np.uint64)
        return LatentNoise(self.noise, torch.Generator(device=device).manual_seed(int(state)))


PLAIN = Trajectories()


@contextmanager
def latent_noise(model: RecursiveModel, noise: LatentNoise | None) -> Iterator[None]:
    """`model` with `noise` on its latent updates for the block's duration (None: untouched)."""
    if noise is None:
        yield
        return
    model.noise = noise
    try:
        yield
    finally:
        model.noise = None


@dataclass
class _Run:
    """One trajectory's outcome on a batch (tensors on the device)."""

    answer: torch.Tensor  # [B, L]
    confidence: torch.Tensor  # [B]
    halt_at: torch.Tensor  # [B]
    steps: torch.Tensor | None  # [N_sup, B, L] uint8 with curve


def _supervise(
    model: RecursiveModel, tokens: torch.Tensor, pids: torch.Tensor, N_sup: int, halt: bool, curve: bool
) -> _Run:
    """N_sup supervision steps from the initial carry (under the caller's autocast)."""
    carry = model.initial_carry(len(tokens), tokens.device)
    halt_at = torch.full((len(tokens),), N_sup, device=tokens.device)
    answer: torch.Tensor | None = None
    conf: torch.Tensor | None = None
    steps = []
    for step in range(1, N_sup + 1):
        carry, o = model(carry, tokens, pids)
        now, c = o.logits.argmax(-1), torch.sigmoid(o.q_halt.float())
        live = halt_at == N_sup  # not halted before this step
        if answer is None or conf is None or not halt:  # the first step (both are set together)
            answer, conf = now, c
        else:
            answer = torch.where(live[:, None], now, answer)
            conf = torch.where(live, c, conf)
        halt_at = torch.where(live & (o.q_halt > 0) & (step < N_sup), step, halt_at)
        if curve:
            steps.append(answer.to(torch.uint8))
    assert answer is not None and conf is not None  # N_sup >= 1 steps ran (check_n_sup, ModelConfig)
    return _Run(answer, conf, halt_at, torch.stack(steps) if curve else None)


def _most_confident(runs: list[_Run]) -> _Run:
    """Per sample, the run whose halting head is the most confident (the first of equals)."""
    if len(runs) == 1:
        return runs[0]
    best = torch.stack([r.confidence for r in runs]).argmax(0)  # [B]
    b = torch.arange(len(best), device=best.device)

    def pick(ts: list[torch.Tensor]) -> torch.Tensor:
        return torch.stack(ts)[best, b]

    steps = None
    if runs[0].steps is not None:
        steps = torch.stack([r.steps for r in runs if r.steps is not None])[best, :, b].transpose(0, 1)
    return _Run(
        pick([r.answer for r in runs]), pick([r.confidence for r in runs]), pick([r.halt_at for r in runs]), steps
    )


@torch.no_grad()
def predict(
    model: RecursiveModel,
    ds: SampleRows,
    batch_size: int,
    device: torch.device,
    limit: int = 0,
    rank: int = 0,
    world_size: int = 1,
    autocast: bool = False,
    n_sup: int | None = None,
    halt: bool = False,
    curve: bool = False,
    progress: Progress | None = None,
    trajectories: Trajectories = PLAIN,
    keep_trajectories: bool = False,
) -> Predictions:
    """Run `n_sup` supervision steps (default: the model's N_sup) on this rank's shard of the
    first `limit` rows. halt: a sample's answer (and confidence) is that of the first step whose
    halting logit says "done"; curve: keep every step's answer too; progress: counts the rows of
    every rank as this one's batches finish; trajectories: K noisy runs, the most confident answer
    kept (`Trajectories`), and with keep_trajectories every run's answer and confidence too."""
    check_n_sup(n_sup)
    if trajectories.noise > 0 and model.z_init is None:
        from trm.errors import TrmError

        raise TrmError(f"--noise {trajectories.noise}: model.variant={model.cfg.variant} has no latent z to perturb")
    model.eval()
    keys = ("index", "tokens", "halt_steps", "confidence", "steps", "runs", "run_confidence")
    out: dict[str, list[np.ndarray]] = {k: [] for k in keys}
    N_sup = model.cfg.N_sup if n_sup is None else n_sup
    for idx, batch in iterate_batches(ds, batch_size, limit, rank, world_size):
        tokens = torch.as_tensor(batch["inputs"], device=device).long()
        pids = torch.as_tensor(batch["puzzle_ids"], device=device).long()
        first_row = int(ds.rows[idx[0]]) if isinstance(ds, Rows) else int(idx[0])  # of the split: seeds the noise
        runs = []
        for j in range(trajectories.k):
            noise = trajectories.latent_noise(j, first_row, device)
            with latent_noise(model, noise), torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
                runs.append(_supervise(model, tokens, pids, N_sup, halt, curve))
        chosen = _most_confident(runs)
        out["index"].append(idx)
        out["tokens"].append(chosen.answer.cpu().numpy())
        out["halt_steps"].append(chosen.halt_at.cpu().numpy())
        out["confidence"].append(chosen.confidence.cpu().numpy())
        if chosen.steps is not None:
            out["steps"].append(chosen.steps.cpu().numpy())
        if keep_trajectories:
            out["runs"].append(torch.stack([r.answer for r in runs]).cpu().numpy())
            out["run_confidence"].append(torch.stack([r.confidence for r in runs]).cpu().numpy())
        if progress is not None:
            progress.update(len(idx) * world_size)
    model.train()
    if not out["index"]:
        L = ds.meta["seq_len"]
        K = trajectories.k
        return Predictions(
            np.empty(0, int),
            np.empty((0, L), int),
            np.empty(0, int),
            np.empty(0, float),
            np.empty((N_sup, 0, L), np.uint8) if curve else None,
            np.empty((K, 0, L), int) if keep_trajectories else None,
            np.empty((K, 0), float) if keep_trajectories else None,
        )
    return Predictions(
        np.concatenate(out["index"]),
        np.concatenate(out["tokens"]),
        np.concatenate(out["halt_steps"]),
        np.concatenate(out["confidence"]),
        np.concatenate(out["steps"], axis=1) if curve else None,
        np.concatenate(out["runs"], axis=1) if keep_trajectories else None,
        np.concatenate(out["run_confidence"], axis=1) if keep_trajectories else None,
    )


def gather_predictions(pred: Predictions, world_size: int) -> Predictions:
    """Every rank's predictions on every rank, in row order (torch.distributed.all_gather_object);
    `pred` itself without a process group."""
    if world_size <= 1 or not dist.is_initialized():
        return pred
    parts: list = [None] * world_size
    dist.all_gather_object(parts, pred)
    return concat_predictions(parts, pred.tokens.shape[-1])


def concat_predictions(parts: list[Predictions], seq_len: int) -> Predictions:
    """The one way predictions are put together (ranks' shards, chunks): one Predictions in row order."""
    if not parts:
        return Predictions(
            np.empty(0, int), np.empty((0, seq_len), np.uint8), np.empty(0, int), np.empty(0, float), None
        )
    order = np.argsort(np.concatenate([p.index for p in parts]), kind="stable")

    def along_rows(f: str) -> np.ndarray | None:  # [K, N, ...] arrays, put together along N
        if getattr(parts[0], f) is None:
            return None
        return np.concatenate([getattr(p, f) for p in parts], axis=1)[:, order]

    index, tokens, halt_steps, confidence = (
        np.concatenate([getattr(p, f) for p in parts])[order] for f in ("index", "tokens", "halt_steps", "confidence")
    )
    return Predictions(
        index,
        tokens,
        halt_steps,
        confidence,
        along_rows("step_tokens"),
        along_rows("run_tokens"),
        along_rows("run_confidence"),
    )


class Rows:
    """Some rows of a split (ascending indices), shaped like a PuzzleDataset for `predict`: a chunk of
    the split (memory stays bounded at a thousand augmentations per test input), or the rows of some
    tasks (the ARC budget during training, a submission's tasks), without copying."""

    def __init__(self, ds: PuzzleDataset, rows: np.ndarray):
        self.ds, self.rows, self.meta = ds, np.asarray(rows, dtype=np.int64), ds.meta

    def __len__(self) -> int:
        return len(self.rows)

    def batch(self, idx: np.ndarray) -> dict[str, np.ndarray]:
        return self.ds.batch(self.rows[idx])


def row_chunks(rows: np.ndarray, chunk: int = CHUNK) -> Iterator[np.ndarray]:
    """The one chunk loop: `rows` CHUNK at a time."""
    for a in range(0, len(rows), chunk):
        yield rows[a : a + chunk]


def predict_chunks(
    model: RecursiveModel,
    ds: PuzzleDataset,
    rows: np.ndarray,
    batch_size: int,
    device: torch.device,
    *,
    rank: int = 0,
    world_size: int = 1,
    autocast: bool = False,
    n_sup: int | None = None,
    halt: bool = False,
    curve: bool = False,
    label: str = "eval",
    trajectories: Trajectories = PLAIN,
    keep_trajectories: bool = False,
) -> Iterator[Predictions]:
    """Predictions on `rows` of `ds`, a chunk at a time, each gathered from every rank (the rows of a chunk
    are spread over the ranks); `index` holds rows of the split, tokens are uint8 (vocabularies <= 12).
    Rank 0 logs progress (rows, rate, ETA) every few seconds of a long run."""
    with Progress(f"{label}: predict", len(rows), "rows", every=10.0 if rank == 0 else math.inf) as progress:
        for part in row_chunks(np.asarray(rows, dtype=np.int64)):
            p = predict(
                model,
                Rows(ds, part),
                batch_size,
                device,
                0,
                rank,
                world_size,
                autocast,
                n_sup,
                halt,
                curve,
                progress,
                trajectories,
                keep_trajectories,
            )
            p = Predictions(
                part[p.index],
                p.tokens.astype(np.uint8),
                p.halt_steps,
                p.confidence,
                p.step_tokens,
                None if p.run_tokens is None else p.run_tokens.astype(np.uint8),
                p.run_confidence,
            )
            yield gather_predictions(p, world_size)


VAL_KEYS = ("val/cell_accuracy", "val/exact_accuracy", "val/mean_halt_steps")  # every evaluation reports these


def score(pred: Predictions, ds: PuzzleDataset) -> dict[str, float]:
    """Sums (not means) so that ranks can be added: cells, correct cells, exact, halt steps. Rows
    with no scored cell (labels all IGNORE: an ARC test input whose output is unknown) are left out."""
    labels = np.asarray(ds.arrays["labels"][pred.index])
    mask = labels != IGNORE
    scored = mask.any(-1)
    correct = (pred.tokens == labels) & mask
    return {
        "samples": float(scored.sum()),
        "cells": float(mask.sum()),
        "correct_cells": float(correct.sum()),
        "exact": float(((correct.sum(-1) == mask.sum(-1)) & scored).sum()),
        "halt_steps": float(pred.halt_steps[scored].sum()),
    }


def means(sums: dict[str, float]) -> dict[str, float]:
    """VAL_KEYS from the sums of `score`."""
    n = max(sums["samples"], 1.0)
    return dict(
        zip(
            VAL_KEYS,
            (sums["correct_cells"] / max(sums["cells"], 1.0), sums["exact"] / n, sums["halt_steps"] / n),
            strict=True,
        )
    )


__all__ = [
    "ARC_METRIC",
    "CHUNK",
    "EXACT_METRIC",
    "MAZE_METRIC",
    "VAL_KEYS",
    "PLAIN",
    "Objective",
    "Predictions",
    "Rows",
    "Trajectories",
    "check_n_sup",
    "check_trajectories",
    "concat_predictions",
    "gather_predictions",
    "latent_noise",
    "means",
    "objective_for",
    "predict",
    "predict_chunks",
    "row_chunks",
    "score",
]
