"""Cost of the training-time ARC evaluation (the augmentation vote over every held-out test input x
all its augmentations), and its share of a training run at the ARC preset's evaluation interval.

    python benchmarks/arc_eval.py                      # the ARC recipe's model (hidden 512, n 4, T 3, N_sup 16)
    python benchmarks/arc_eval.py --model tiny         # a tiny model: what the vote itself costs
    python benchmarks/arc_eval.py --tasks 8 --augmentations 99 --train-batch 8

Builds a small dataset from shared ARC-AGI-1 tasks (`--tasks` evaluation tasks held out, a few
training tasks), then times, on this machine:
  * one evaluation exactly as the training loop runs it (trm.evaluate.task.evaluate_task): model
    time (predict, N_sup steps per row) and vote time (decode, invert, count), per 1000 augmented inputs;
  * training steps of the same model (one supervision step on a batch of `--train-batch`).
The share: the preset's full evaluation (all evaluation tasks of ARC-AGI-1 x 1001 augmentations) against
the training between two evaluations (eval_every_epochs x the epoch's samples, each one supervision step),
both as per-sample costs measured here. Figures only; nothing is asserted.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

from trm.config import load_config
from trm.data import arc
from trm.data.dataset import PuzzleDataset, epoch_size
from trm.evaluate import predict
from trm.evaluate.task import evaluate_task
from trm.evaluate.vote import Vote, VoteSamples
from trm.model import count_parameters
from trm.train.loop import Trainer
from trm.train.session import LocalSession

DEFAULT_SRC = Path(__file__).resolve().parents[2] / "shared" / "data" / "arc-agi-1"
TINY = {"hidden": 16, "heads": 2, "expansion": 2, "layers": 1, "n": 1, "T": 1, "N_sup": 2, "puzzle_emb_ndim": 16,
        "puzzle_emb_len": 1}
RECIPE = {"arch": "attention", "n": 4, "T": 3, "N_sup": 16, "hidden": 512, "heads": 8, "layers": 2,
          "puzzle_emb_ndim": 512, "puzzle_emb_len": 16}
PRESET_AUGMENTATIONS, PRESET_EVAL_EVERY_EPOCHS, PRESET_BATCH = 1000, 10_000, 768


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--src", default=str(DEFAULT_SRC), help="ARC-AGI-1 folder (training/, evaluation/)")
    p.add_argument("--model", choices=("recipe", "tiny"), default="recipe")
    p.add_argument("--tasks", type=int, default=4, help="held-out evaluation tasks in the timed dataset")
    p.add_argument("--augmentations", type=int, default=7)
    p.add_argument("--batch-size", type=int, default=16, help="evaluation batch")
    p.add_argument("--train-batch", type=int, default=4)
    p.add_argument("--train-steps", type=int, default=3)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--no-warmup", dest="warmup", action="store_false", help="skip the untimed first step/batch")
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    corpus = arc.load_tasks([a.src])
    held = [t for t in corpus.tasks if t.held_out]
    chosen = held[:a.tasks] + [t for t in corpus.tasks if not t.held_out][:2]
    model_cfg = TINY if a.model == "tiny" else RECIPE
    with tempfile.TemporaryDirectory() as tmp:
        data = arc.build_dataset(Path(tmp) / "arc", chosen, a.augmentations, seed=0)
        ds = PuzzleDataset(data, "test")
        device = torch.device(a.device)
        cfg = load_config(None, {**model_cfg, "data_path": str(data), "generate": "none", "device": a.device,
                                 "batch_size": a.train_batch, "steps": a.train_steps + 1, "ema": 0.999,
                                 "eval_every": 10 ** 6, "checkpoint_every": 10 ** 6, "log_every": 10 ** 6})
        trainer = Trainer(cfg, LocalSession(Path(tmp) / "run"))
        if a.warmup:
            trainer.train_step()
        t0 = time.perf_counter()
        for _ in range(a.train_steps):
            trainer.train_step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        train_per_sample = (time.perf_counter() - t0) / (a.train_steps * a.train_batch)
        print(f"training: {1000 * train_per_sample:.1f}s per 1000 sample-steps (batch {a.train_batch})", flush=True)

        model = trainer.eval_model
        if a.warmup:
            predict(model, ds, a.batch_size, device, limit=min(len(ds), a.batch_size))
        t0 = time.perf_counter()  # one evaluation as the loop runs it; its predictions kept to time the vote alone
        r = evaluate_task(model, ds, a.batch_size, device, autocast=device.type == "cuda", keep_predictions=True)
        total = time.perf_counter() - t0
        pred = r.vote.predictions
        t0 = time.perf_counter()
        v = Vote(VoteSamples.from_dataset(ds))
        v.add(pred.index, pred.tokens, pred.confidence)
        v.result()
        vote_time = time.perf_counter() - t0
        model_time = total - vote_time
    rows = len(ds)
    per_k = 1000 * total / rows
    # the preset: every evaluation task x 1001 augmentations; an epoch = every group once, all its examples
    full_rows = sum(len(t.test) for t in held) * (PRESET_AUGMENTATIONS + 1)
    epoch = sum(len(t.train) + (0 if t.held_out else len(t.test)) for t in corpus.tasks)
    train_samples = PRESET_EVAL_EVERY_EPOCHS * epoch  # sample-steps between evaluations (one step each)
    eval_s = full_rows * total / rows
    train_s = train_samples * train_per_sample
    share = eval_s / (eval_s + train_s)
    print(f"machine: {a.device}, torch threads {torch.get_num_threads()}; model {a.model} "
          f"({count_parameters(model) / 1e6:.2f}M params, N_sup {model.cfg.N_sup})")
    print(f"timed evaluation: {rows} augmented inputs ({a.tasks} tasks x {a.augmentations + 1} augmentations, "
          f"{int(r.metrics['eval/num_test_inputs'])} test inputs) in {total:.2f}s "
          f"(model ~{model_time:.2f}s, vote {vote_time:.3f}s; shared cores make these noisy)")
    print(f"per 1000 augmented inputs: {per_k:.1f}s (model {1000 * model_time / rows:.1f}s, "
          f"vote {1000 * vote_time / rows:.2f}s)")
    print(f"ARC-AGI-1 preset: one evaluation = {full_rows} augmented inputs ~ {eval_s / 3600:.1f}h here; "
          f"between evaluations {PRESET_EVAL_EVERY_EPOCHS} epochs x {epoch} samples = {train_samples:.3g} "
          f"sample-steps ~ {train_s / 3600:.1f}h here; evaluation share of the run: {100 * share:.2f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
