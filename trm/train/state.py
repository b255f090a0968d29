"""The training state of one rank, and the only code that writes or reads a checkpoint's schema.

    state.pt     rank 0: config, dataset meta, step, world size, model, EMA, optimiser, scheduler,
                 torch RNG, best, extra (provenance: tracking run id, cost meter, restarts,
                 init_from, imported_from)
    rank<r>.pt   each rank: its carried slots, stream position, exploration RNG, Python RNG

A state is made fresh (`TrainingState(...)`) and then, for a resume, `restore(folder)`; for
fine-tuning, `init_from(source)`; for evaluation, `load_for_eval(folder)` gives the model alone.
`check_compatible` is the one architecture check and `ema_weights` the one reader of the EMA's
`module.` prefix. File mechanics (atomic writes, digests, score files, latest/best) are in
`trm.train.checkpoint`.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import torch
import torch.distributed as dist
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from trm.config import Config, ConfigError, config_from_dict
from trm.data.dataset import PuzzleDataset, make_stream
from trm.data.puzzle_map import PuzzleMap
from trm.model import Carry, RecursiveModel
from trm.train import checkpoint as ckpt
from trm.train.feed import DeviceFeed
from trm.train.optim import PuzzleEmbeddingSGD, build_optimizer
from trm.variants import build_model

log = logging.getLogger(__name__)

META_KEYS = ("vocab_size", "seq_len", "num_puzzle_ids")  # the dataset's numbers the weights depend on
# fields that change the shape or meaning of the weights; a resume or fine-tuning must agree on them
ARCH_FIELDS = (
    "arch",
    "hidden",
    "heads",
    "expansion",
    "layers",
    "puzzle_emb_ndim",
    "puzzle_emb_len",
    "separate_nets",
    "halting",
)
EMA_PREFIX = "module."  # AveragedModel keeps the averaged copy's weights under this prefix


def pick_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device=cuda: no CUDA device is visible (set device=auto or device=cpu)")
    if name == "cuda" and dist.is_initialized():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device(name)


def check_compatible(
    saved_model: dict, model: dict, where: str, data_meta: dict | None = None, saved_meta: dict | None = None
) -> None:
    """The one architecture check: a checkpoint's model config (`saved_model`) against this run's
    (`model`), on the fields that shape the weights, and, when given, the dataset numbers in both metas
    (fine-tuning passes them without num_puzzle_ids: a new dataset may have other puzzles)."""
    diffs = [
        f"model.{k}: checkpoint {saved_model.get(k)!r} vs config {model.get(k)!r}"
        for k in ARCH_FIELDS
        if saved_model.get(k) != model.get(k)
    ]
    if data_meta and saved_meta:
        diffs += [
            f"data {k}: checkpoint {saved_meta.get(k)!r} vs dataset {data_meta.get(k)!r}"
            for k in data_meta
            if saved_meta.get(k) != data_meta.get(k)
        ]
    if diffs:
        raise ckpt.CheckpointError(f"{where}: incompatible with this run's config:\n  " + "\n  ".join(diffs))


def _check_state(state: dict, cfg: Config, meta: dict, where: str, keys: tuple[str, ...] = META_KEYS) -> None:
    check_compatible(
        state["config"]["model"], cfg.to_dict()["model"], where, {k: meta.get(k) for k in keys}, state["meta"]
    )


def ema_weights(state: dict) -> dict | None:
    """The EMA weights of a checkpoint's state under the model's names (None without an EMA)."""
    if not state.get("ema"):
        return None
    return {k[len(EMA_PREFIX) :]: v for k, v in state["ema"].items() if k.startswith(EMA_PREFIX)}


def build_ema(model: RecursiveModel, decay: float) -> AveragedModel:
    """The EMA registered from the model's current weights (the reference's EMAHelper.register):
    `n_averaged` starts at 1, so every update, the first included, is ema <- lerp(ema, w, 1 - decay).
    The puzzle-embedding table is trained by sign-SGD, not averaged: shared, not deep-copied."""
    emb, model.puzzle_emb = model.puzzle_emb, None
    ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay))
    model.puzzle_emb = cast(RecursiveModel, ema.module).puzzle_emb = emb  # `module`: a deep copy of `model`
    ema.n_averaged.fill_(1)
    return ema


def load_for_eval(folder: str | Path, device: str = "cpu", use_ema: bool = True) -> tuple[RecursiveModel, Config, dict]:
    """A model from a checkpoint folder, EMA weights by default (as the paper evaluates)."""
    state = ckpt.read_file(Path(folder), "state.pt")
    cfg = config_from_dict(state["config"])
    model = build_model(cfg.model, **state["meta"])
    model.load_state_dict(state["model"])
    if use_ema and (weights := ema_weights(state)) is not None:
        model.load_state_dict(weights, strict=False)
    return model.to(device).eval(), cfg, state


@dataclass
class Slots:
    """The carried batch on this rank."""

    carry: Carry
    tokens: torch.Tensor  # [B, L]
    labels: torch.Tensor  # [B, L]
    puzzle_ids: torch.Tensor  # [B]
    steps: torch.Tensor  # [B] supervision steps spent on the current sample
    halted: torch.Tensor  # [B] True: refill before the next step

    @classmethod
    def empty(cls, model: RecursiveModel, B: int, L: int, device: torch.device, bf16: bool) -> Slots:
        carry = model.initial_carry(B, device)
        if bf16:  # the carry's dtype from the first step on: one compiled graph, not two
            carry = Carry(carry.y.bfloat16(), carry.z.bfloat16())
        tokens, labels, puzzle_ids, steps = (
            torch.zeros(*shape, dtype=torch.long, device=device) for shape in ((B, L), (B, L), (B,), (B,))
        )
        return cls(carry, tokens, labels, puzzle_ids, steps, torch.ones(B, dtype=torch.bool, device=device))

    def state_dict(self) -> dict:
        return {
            "y": self.carry.y,
            "z": self.carry.z,
            "tokens": self.tokens,
            "labels": self.labels,
            "puzzle_ids": self.puzzle_ids,
            "steps": self.steps,
            "halted": self.halted,
        }

    @classmethod
    def from_state(cls, s: dict, device: torch.device) -> Slots:
        s = {k: v.to(device) for k, v in s.items()}
        return cls(Carry(s["y"], s["z"]), s["tokens"], s["labels"], s["puzzle_ids"], s["steps"], s["halted"])


class TrainingState:
    """Model, EMA, optimisers, step, best and provenance (rank 0's checkpoint), and, given the
    training split, this rank's carried batch: slots, the stream's feed, the exploration RNG."""

    def __init__(
        self,
        cfg: Config,
        meta: dict,
        device: torch.device,
        *,
        train_ds: PuzzleDataset | None = None,
        local_batch: int = 0,
        rank: int = 0,
        world_size: int = 1,
        bf16: bool = False,
    ):
        t = cfg.train
        self.cfg, self.meta, self.device = cfg, {k: meta[k] for k in META_KEYS}, device
        self.rank, self.world_size = rank, world_size
        torch.manual_seed(t.seed)  # identical initial weights on every rank
        self.model = build_model(cfg.model, **self.meta).to(device)
        self.ema = build_ema(self.model, t.ema) if t.ema > 0 else None
        self.opt, self.sched = build_optimizer(self.model, t)
        self.emb_opt = (
            PuzzleEmbeddingSGD(self.model.puzzle_emb, t.puzzle_emb_lr, t.puzzle_emb_weight_decay)
            if self.model.puzzle_emb is not None
            else None
        )
        self.step = 0
        self.best: dict = {}  # {"metric", "value", "step"} of the best evaluation so far
        self.extra: dict = {}  # carried through checkpoints: tracking run id, cost meter, restarts, provenance
        # which task each puzzle id is, from a dataset's meta.json (checked by eval, submit, --init-from)
        self.puzzle_map = PuzzleMap.of(meta).to_dict() if "splits" in meta else None
        self.feed: DeviceFeed | None = None
        if train_ds is not None:
            # the reference's epochs (every puzzle group once, one augmentation, all its examples
            # together) when the dataset records groups; rows uniformly otherwise; taken on the device
            self.feed = DeviceFeed(train_ds, make_stream(train_ds, t.seed, rank, world_size), device, local_batch)
            self.explore = torch.Generator(device).manual_seed(t.seed * 1000 + rank)
            self.slots = Slots.empty(self.model, local_batch, self.meta["seq_len"], device, bf16)

    def reset_ema(self) -> None:
        """Register the EMA again from the model's weights (after weights were loaded into it)."""
        if self.ema is not None:
            with torch.no_grad():
                for a, b in zip(
                    (*self.ema.module.parameters(), *self.ema.module.buffers()),
                    (*self.model.parameters(), *self.model.buffers()),
                    strict=False,
                ):
                    if a is not b:  # the puzzle table is shared
                        a.copy_(b)

    def finite(self) -> bool:
        """Every weight, EMA weight and puzzle-embedding row is finite (waits for the device)."""
        tensors = [*self.model.parameters(), *self.model.buffers(), *(self.ema.parameters() if self.ema else [])]
        return bool(torch.stack([t.isfinite().all() for t in tensors if t.is_floating_point()]).all())

    # ---------------------------------------------------------------- the checkpoint
    def state_dict(self) -> dict:
        """Rank 0's state.pt."""
        ema = None if self.ema is None else {k: v for k, v in self.ema.state_dict().items() if "puzzle_emb" not in k}
        return {
            "config": self.cfg.to_dict(),
            "meta": self.meta,
            "step": self.step,
            "world_size": self.world_size,
            "model": self.model.state_dict(),
            "ema": ema,
            "optimizer": self.opt.state_dict(),
            "scheduler": self.sched.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "extra": {**self.extra, **({"puzzle_map": self.puzzle_map} if self.puzzle_map else {})},
            "best": self.best,
        }

    def rank_state_dict(self) -> dict:
        """This rank's rank<r>.pt (waits for the device: the stream's exact position)."""
        assert self.feed is not None  # only a state made with the training split has a rank part
        return {
            "slots": self.slots.state_dict(),
            "stream": self.feed.state_dict(),
            "explore": self.explore.get_state(),
            "python_rng": random.getstate(),
        }

    def save(self, folder: Path) -> None:
        if self.rank == 0:
            ckpt.write_file(folder, "state.pt", self.state_dict())
        if self.feed is not None:
            ckpt.write_file(folder, f"rank{self.rank}.pt", self.rank_state_dict())

    def load_state_dict(self, state: dict, where: str) -> None:
        _check_state(state, self.cfg, self.meta, where)
        self.model.load_state_dict(state["model"])
        if self.ema is not None and state["ema"] is not None:
            self.ema.load_state_dict(state["ema"], strict=False)
        elif self.ema is not None:
            log.warning("%s: checkpoint has no EMA; starting the EMA from the restored weights", where)
            self.reset_ema()
        self.opt.load_state_dict(state["optimizer"])
        self.sched.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["torch_rng"])
        self.step, self.extra, self.best = state["step"], state["extra"], state.get("best", {})

    def load_rank_state(self, mine: dict, where: str) -> None:
        assert self.feed is not None  # only a state made with the training split has a rank part
        self.slots = Slots.from_state(mine["slots"], self.device)
        self.feed.load_state_dict(mine["stream"])
        try:
            self.explore.set_state(mine["explore"])
        except RuntimeError:  # a CPU generator's state on CUDA, or the reverse
            log.warning("%s: exploration RNG state from another device type; drawing from this run's seed", where)
        random.setstate(mine["python_rng"])

    def restore(self, folder: Path) -> None:
        """Resume from `folder`: everything, or, when this rank's part is unusable, the weights and
        optimiser with the carried samples restarted."""
        state = ckpt.read_file(folder, "state.pt")
        self.load_state_dict(state, str(folder))
        try:
            if state["world_size"] != self.world_size:
                raise ckpt.CheckpointError(f"saved with {state['world_size']} workers, now {self.world_size}")
            self.load_rank_state(ckpt.read_file(folder, f"rank{self.rank}.pt"), str(folder))
        except ckpt.CheckpointError as e:
            # carried samples restart; the stream moves to the next epoch so no sample is seen twice in a row
            log.warning("%s: %s; carried slots restart from y_init/z_init", folder, e)
            assert self.feed is not None  # a resume is of a state made with the training split
            self.feed.load_state_dict({"epoch": self.step + 1, "pos": 0})
        log.info("resumed from %s at step %d", folder, self.step)

    def init_from(self, source: str, task_ids: list | None) -> Path:
        """Fine-tuning: weights (EMA weights when saved) from another run's checkpoint, as the reference's
        load_checkpoint; the EMA registers from them. The puzzle-embedding table is copied when it has
        this dataset's shape and the same `task_ids`, otherwise every row starts at the mean of the
        checkpoint's trained rows. Returns the checkpoint folder."""
        folder = ckpt.resolve(source, "--init-from (train.init_from)")
        state = ckpt.read_file(folder, "state.pt")
        _check_state(state, self.cfg, self.meta, f"--init-from {source} ({folder})", ("vocab_size", "seq_len"))
        weights = {**state["model"], **(ema_weights(state) or {})}
        table = weights.pop("puzzle_emb.weight", None)
        self.model.load_state_dict(weights, strict=False)
        self.reset_ema()
        emb = self.model.puzzle_emb
        if emb is not None and table is not None:
            same = table.shape == emb.weight.shape and task_ids is not None and _task_ids(state) == task_ids
            with torch.no_grad():
                if same:
                    emb.weight.copy_(table)
                else:  # the reference: mean of the trained rows for every id (row 0 is the blank id)
                    trained = table[1:] if table.shape[0] > 1 else table
                    emb.weight.copy_(trained.float().mean(0, keepdim=True).expand_as(emb.weight))
        self.extra["init_from"] = str(folder)
        log.info(
            "initialised from %s (step %s)%s",
            folder,
            state.get("step"),
            "; training only the puzzle embeddings" if self.cfg.train.freeze_weights else "",
        )
        return folder


def _task_ids(state: dict) -> list | None:
    """The task ids of the dataset a checkpoint was trained on, when that dataset is here."""
    try:
        return PuzzleDataset(config_from_dict(state["config"]).data.path, "test").meta.get("task_ids")
    except Exception:  # noqa: BLE001 - the parent's dataset need not be here
        return None
