"""`trm` command line: build data, train, evaluate, count parameters.

    trm data sudoku --out data/sudoku [--num-train 1000 --augmentations 1000 ...]
    trm data arc --src DIR [--src DIR ...] --out DIR --augmentations N
    trm data maze --out DIR ...
    trm train [--config FILE] [--set key=value ...] [--out runs/NAME] [--workers N]
    trm eval --checkpoint DIR [--data DIR]
    trm params
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

log = logging.getLogger("trm")


def _setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")


# ---------------------------------------------------------------- data
def _add_data(sub) -> None:
    data = sub.add_parser("data", help="build a dataset").add_subparsers(dest="kind", required=True)
    helps = {"sudoku": "generate Sudoku or import Sudoku-Extreme CSVs (--subsample 1000: Sudoku-Extreme-1K)"}
    for kind in ("sudoku", "arc", "maze"):  # each module owns its flags (add_args) and its build (run)
        module = __import__(f"trm.data.{kind}", fromlist=["add_args", "run"])
        p = data.add_parser(kind, help=helps.get(kind) or (module.__doc__ or kind).strip().splitlines()[0])
        module.add_args(p)
        p.set_defaults(fn=module.run)


# ---------------------------------------------------------------- train
def _train_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML file with model/train/data sections")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a field: model.n=4 or just n=4 (repeatable)")
    p.add_argument("--out", default="runs/train", help="run folder: checkpoints, metrics.jsonl, config.yaml")
    p.add_argument("--workers", type=int, default=0,
                   help="0: this process; N: Ray Train TorchTrainer with N DDP workers")
    p.add_argument("--gpus-per-worker", type=float, default=0)
    p.add_argument("--storage", help="Ray Train storage (folder or s3://bucket/prefix) with --workers")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or sqlite:///mlflow.db)")
    p.add_argument("--experiment", default="trm-train")
    p.add_argument("--no-tracking", action="store_true", help="do not log to MLflow")


def _train_run(a: argparse.Namespace) -> None:
    from trm.config import load_config, parse_set
    from trm.data.build import ensure_dataset
    from trm.model import count_parameters

    cfg = load_config(a.config, parse_set(a.set))
    ensure_dataset(cfg.data)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    cfg.save(out / "config.yaml")
    if a.workers > 0:
        from trm.sweep.trainer import run_training

        result = run_training(cfg, name=out.name, storage=a.storage or str(out.resolve().parent),
                              num_workers=a.workers, gpus_per_worker=a.gpus_per_worker,
                              tracking_uri=None if a.no_tracking else a.tracking_uri, experiment=a.experiment)
        print(json.dumps(result, indent=2, default=str))
        return

    from trm.tracking import Tracker, run_params
    from trm.train.loop import Trainer
    from trm.train.session import LocalSession

    tracker = None
    if not a.no_tracking:
        run_id_file = out / "mlflow_run_id"
        if run_id_file.is_file():  # a resumed run keeps logging into its MLflow run
            from trm.tracking import resolve_uri

            tracker = Tracker(resolve_uri(a.tracking_uri), run_id_file.read_text().strip())
        else:
            tracker = Tracker.create(a.tracking_uri, a.experiment, run_name=out.name)
            run_id_file.write_text(tracker.run_id)
        tracker.log_params(run_params(cfg.flat(), cfg.effective_depth))
        log.info("MLflow run %s at %s", tracker.run_id, tracker.uri)
    session = LocalSession(out, keep=cfg.train.keep_checkpoints, tracker=tracker)
    trainer = Trainer(cfg, session)
    log.info("model: %s, %.2fM parameters, effective depth %d", cfg.model.arch,
             count_parameters(trainer.model) / 1e6, cfg.effective_depth)
    try:
        metrics = trainer.fit()
    except BaseException as e:
        if tracker is not None:
            tracker.end("KILLED" if isinstance(e, KeyboardInterrupt) else "FAILED")
        raise
    if tracker is not None:
        if session.last_checkpoint is not None:
            tracker.log_artifact(session.last_checkpoint, "checkpoint")
        tracker.end()
    print(json.dumps(metrics, indent=2))


# ---------------------------------------------------------------- eval
def _eval_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, help="checkpoint folder (runs/NAME/checkpoints/step_...)"
                   " or a run folder (its latest checkpoint)")
    p.add_argument("--data", help="dataset folder (default: the one the checkpoint was trained on)")
    p.add_argument("--split", default="test")
    p.add_argument("--no-ema", action="store_true", help="evaluate the raw weights instead of the EMA")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--limit", type=int, default=0, help="evaluate only the first N samples (0 = all)")
    p.add_argument("--device", default="auto")


def _eval_run(a: argparse.Namespace) -> None:
    import torch

    from trm.data.dataset import PuzzleDataset
    from trm.evaluate import evaluate
    from trm.train.checkpoint import latest_local
    from trm.train.loop import load_for_eval, pick_device

    folder = Path(a.checkpoint)
    if not (folder / "state.pt").is_file():
        found = latest_local(folder / "checkpoints") or latest_local(folder)
        if found is None:
            raise SystemExit(f"--checkpoint {folder}: no checkpoint there")
        folder = found
    device = pick_device(a.device)
    model, cfg, state = load_for_eval(folder, str(device), use_ema=not a.no_ema)
    data = a.data or cfg.data.path
    ds = PuzzleDataset(data, a.split)
    kind = ds.meta.get("name")
    with torch.no_grad():
        if kind == "arc":
            from trm.evaluate.vote import evaluate_arc

            scores = evaluate_arc(model, data, a.batch_size, device).metrics
        elif kind == "maze":
            from trm.evaluate.maze import evaluate_maze

            scores = evaluate_maze(model, data, a.batch_size, device, limit=a.limit).metrics
        else:
            scores = evaluate(model, ds, a.batch_size, device, a.limit)
    print(json.dumps({"checkpoint": str(folder), "step": state["step"], "data": str(data), **scores}, indent=2))


# ---------------------------------------------------------------- params
def _params_run(a: argparse.Namespace) -> None:
    from trm.config import ModelConfig
    from trm.model import TRM, count_parameters

    rows = [("Sudoku, attention", ModelConfig(arch="attention"), 11, 81, 1),
            ("Sudoku, MLP-mixer", ModelConfig(arch="mlp"), 11, 81, 1),
            ("Sudoku, MLP-mixer, separate f_L/f_H", ModelConfig(arch="mlp", separate_nets=True), 11, 81, 1),
            ("Maze 30x30, attention", ModelConfig(arch="attention"), 6, 900, 1),
            ("Maze 30x30, MLP-mixer", ModelConfig(arch="mlp"), 6, 900, 1),
            ("ARC, attention (network only)", ModelConfig(arch="attention"), 12, 900, 1)]
    print(f"{'config':40s} {'params':>10s}   paper")
    paper = {"Sudoku, attention": "7M", "Sudoku, MLP-mixer": "5M", "Sudoku, MLP-mixer, separate f_L/f_H": "10M",
             "Maze 30x30, attention": "7M", "Maze 30x30, MLP-mixer": "19M", "ARC, attention (network only)": "7M"}
    for name, m, vocab, seq, ids in rows:
        n = count_parameters(TRM(m, vocab, seq, ids))
        print(f"{name:40s} {n / 1e6:9.2f}M   {paper[name]}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="trm", description="Tiny Recursive Models")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_data(sub)
    p = sub.add_parser("train", help="train one model")
    _train_args(p)
    p.set_defaults(fn=_train_run)
    p = sub.add_parser("eval", help="evaluate a checkpoint")
    _eval_args(p)
    p.set_defaults(fn=_eval_run)
    p = sub.add_parser("params", help="parameter counts of the paper's configurations")
    p.set_defaults(fn=_params_run)
    return parser


def main(argv: list[str] | None = None) -> int:
    _setup_logging()
    args = build_parser().parse_args(argv)
    from trm.config import ConfigError
    from trm.data.dataset import DatasetError
    from trm.train.checkpoint import CheckpointError

    try:
        args.fn(args)
    except (ConfigError, DatasetError, CheckpointError) as e:
        print(f"trm: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
