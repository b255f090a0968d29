"""`trm` command line: build data, train, evaluate, count parameters.

trm data sudoku --out data/sudoku [--num-train 1000 --augmentations 1000 ...]
trm data arc --src DIR [--src DIR ...] --out DIR --augmentations N
trm data maze --out DIR ...
trm data download NAME --out DIR | --list
trm train [--config FILE] [--set key=value ...] [--out runs/NAME] [--workers N]
trm eval --checkpoint DIR [--data DIR] [--N-sup K] [--halt] [--curve] [--latest]
trm submit --checkpoint RUN --challenges arc-agi_test_challenges.json --out submission.json
trm import --checkpoint FILE [--config all_config.yaml] --out RUN_DIR [--data DIR]
trm import --hf OWNER/NAME[@REVISION] [--file PATH] --out RUN_DIR
trm export --checkpoint RUN (--out DIR | --hf OWNER/NAME)
trm params
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
from pathlib import Path

from trm.cli_common import WORKER_WAIT_MINUTES, ArgumentParser, add_flags, overrides_from, run_main

log = logging.getLogger("trm")


# ---------------------------------------------------------------- data
def _add_data(sub) -> None:
    data = sub.add_parser("data", help="build a dataset").add_subparsers(dest="kind", required=True)
    helps = {
        "sudoku": "generate Sudoku or import Sudoku-Extreme CSVs (--subsample 1000: Sudoku-Extreme-1K)",
        "download": "fetch a published dataset by name (pinned, checksummed, cached) and build it",
    }
    # a broken import is an error here, never a missing subcommand
    from trm.data import arc, download, maze, sudoku

    for kind, module in (
        ("sudoku", sudoku),
        ("arc", arc),
        ("maze", maze),
        ("download", download),
    ):  # each owns add_args and run
        p = data.add_parser(kind, help=helps.get(kind) or (module.__doc__ or kind).strip().splitlines()[0])
        module.add_args(p)
        p.set_defaults(fn=module.run)


# ---------------------------------------------------------------- train
def _train_args(p: argparse.ArgumentParser) -> None:
    add_flags(p, "config", "set")
    p.add_argument("--out", default="runs/train", help="run folder: checkpoints, metrics.jsonl, config.yaml")
    p.add_argument(
        "--workers", type=int, default=0, help="0: this process; N: Ray Train TorchTrainer with N DDP workers"
    )
    add_flags(p, "gpus_per_worker", "cpus_per_worker", gpus_per_worker=0.0, cpus_per_worker=1.0)
    add_flags(p, "storage", "address")  # with --workers
    add_flags(p, "max_failures", max_failures=3)  # with --workers
    add_flags(p, "worker_wait_minutes", worker_wait_minutes=WORKER_WAIT_MINUTES)
    p.add_argument(
        "--restart",
        action="store_true",
        help="start the run in --out over from step 0 on purpose: its checkpoints, metrics.jsonl and MLflow "
        "run id are moved aside to --out/checkpoints.old-<UTC time> (without it, a run folder resumes)",
    )
    add_flags(p, "tracking_uri", "experiment", experiment="trm-train")
    p.add_argument("--no-tracking", action="store_true", help="do not log to MLflow")
    p.add_argument(
        "--init-from",
        metavar="RUN_OR_CHECKPOINT",
        help="fine-tune: start from this run's best checkpoint (or this checkpoint folder); puzzle ids "
        "it lacks start at the mean of its puzzle embeddings (--set freeze_weights=true: train only those)",
    )


def _train_run(a: argparse.Namespace) -> None:
    from trm.config import ConfigError, load_config

    overrides = overrides_from(a)
    if a.init_from:
        from trm.train.checkpoint import resolve

        overrides["init_from"] = str(resolve(a.init_from, "--init-from").resolve())  # checked before anything runs
    cfg = load_config(a.config, overrides)
    if a.workers < 0:
        raise ConfigError(f"--workers {a.workers}: expected 0 (this process) or more workers")
    from trm.cli_common import check_max_failures, check_worker_wait
    from trm.run_lock import HOLDER_FILE, LOCK_FILE, RunLock, S3Lease
    from trm.storage import check_local_folder, is_s3, join
    from trm.storage import resolve as resolve_storage

    check_max_failures(a.max_failures)
    check_worker_wait(a.worker_wait_minutes)
    out = Path(a.out)
    check_local_folder(out, "--out")
    if a.workers > 0:
        from trm.launch.cluster import WorkerSpec
        from trm.launch.single import run_training

        storage = resolve_storage(a.storage or str(out.resolve().parent))
        root = join(storage, out.name)  # where Ray keeps the run's checkpoints
        if a.restart and "://" in root:
            raise ConfigError(f"--restart: only for local --storage (the run's checkpoints are at {root})")
        with contextlib.ExitStack() as held:

            def save_config(cfg) -> None:  # once every check has passed; the folder is ours till the end
                if not a.restart:
                    _check_rerun(out, cfg, root)
                out.mkdir(parents=True, exist_ok=True)
                held.enter_context(RunLock(out))
                if is_s3(root):  # the checkpoints' folder, which other machines' drivers may also reach
                    held.enter_context(S3Lease(root, "--storage"))
                if a.restart:
                    _restart(Path(root), a, keep=(LOCK_FILE, HOLDER_FILE), run_path=root)
                cfg.save(out / "config.yaml")

            result = run_training(
                cfg,
                name=out.name,
                storage=storage,
                spec=WorkerSpec(a.workers, a.gpus_per_worker, a.cpus_per_worker),
                tracking_uri=a.tracking_uri,
                experiment=a.experiment,
                max_failures=a.max_failures,
                worker_wait_minutes=a.worker_wait_minutes,
                address=a.address,
                tracking=not a.no_tracking,
                on_ready=save_config,
                resume_command=_resume_command(),
            )
        print(json.dumps(result, indent=2, default=str))
        return

    with _train_folder(a, cfg, out) as uri:
        _train_local(a, cfg, out, uri)


def _check_rerun(out: Path, cfg, root: str) -> None:
    """`trm train --workers` on a run folder of another architecture: refused before its config.yaml
    is replaced (the checkpoints live in --storage; the folder's config.yaml is the run's); with
    local storage, its checkpoints (`root`) as a resume checks them."""
    from trm.config import config_from_dict
    from trm.train.state import check_compatible

    old = out / "config.yaml"
    if old.is_file():
        import yaml

        saved = config_from_dict(yaml.safe_load(old.read_text()))
        check_compatible(saved.to_dict()["model"], cfg.to_dict()["model"], f"--out {out} ({old})")
    if "://" not in root:
        _check_checkpoints(Path(root), cfg, f"--out {out}")


def _check_checkpoints(root: Path, cfg, where: str) -> None:
    """A resume needs a checkpoint that verifies (all corrupt: refused, naming them, never a silent
    restart from step 0) and the batch size it was trained with: the carried batch (each slot's
    sample, its y and z, its supervision steps) is saved per slot, and another number of slots
    cannot continue it. (Another worker count with the same batch size restarts the carried
    samples from y_init/z_init, with a warning: trm.train.state.)"""
    from trm.run_checks import checkpoint_header
    from trm.train import checkpoint as ckpt

    ckpt.check_resumable(root, where)
    latest = ckpt.latest_local(root)
    if latest is None:
        return
    trained = checkpoint_header(latest)["config"]["train"].get("batch_size")
    if trained is not None and trained != cfg.train.batch_size:
        raise ckpt.CheckpointError(
            f"{where}: resuming from {latest.name}, trained with batch_size={trained}, but this config has "
            f"batch_size={cfg.train.batch_size}: the carried batch holds {trained} samples; keep "
            f"--set batch_size={trained}, or pass --restart to start over"
        )


def _restart(folder: Path, a: argparse.Namespace, keep: tuple[str, ...], run_path: str | None = None) -> None:
    """--restart: the folder's previous files moved aside (`trm.train.session.set_aside`); a
    --workers run's MLflow run, found by its storage location, is retagged so that the new start
    gets its own."""
    from trm.train.session import set_aside

    aside = set_aside(folder, keep) if folder.is_dir() else None
    if aside is None:
        return
    log.warning("--restart: starting %s over from step 0; its previous files are in %s", folder, aside)
    if run_path is not None and not a.no_tracking:
        from trm.tracking import resolve_uri, runs

        runs.set_aside(resolve_uri(a.tracking_uri), a.experiment, run_path, str(aside))


def _resume_command() -> str:
    """The command that continues this run from its last checkpoint: the same one."""
    import shlex

    return shlex.join(["trm", *sys.argv[1:]])


@contextlib.contextmanager
def _train_folder(a: argparse.Namespace, cfg, out: Path):
    """Validate, then write: the tracking URI, the dataset, the checkpoint to resume or fine-tune
    from are checked first; then the run folder is created and held (one writer) while training.
    Yields the resolved tracking URI (None without tracking)."""
    from trm.data.build import ensure_dataset
    from trm.data.check import check_dataset
    from trm.data.selection import check_selection
    from trm.run_checks import check_init_from, check_resume
    from trm.run_lock import RunLock
    from trm.tracking import check_reachable, resolve_uri

    uri = None if a.no_tracking else resolve_uri(a.tracking_uri)
    if uri is not None:
        check_reachable(uri)
    meta = check_dataset(data := ensure_dataset(cfg.data))
    check_selection(cfg.train, data)  # a selection fraction that leaves a side empty: refused before any write
    if not a.restart:  # --restart: the old checkpoints are set aside, not resumed
        _check_checkpoints(out / "checkpoints", cfg, f"--out {out}")
        check_resume(out, cfg, meta)
    if cfg.train.init_from:
        from trm.train.checkpoint import resolve

        check_init_from(resolve(cfg.train.init_from, "--init-from"), cfg, meta)
    out.mkdir(parents=True, exist_ok=True)
    with RunLock(out, "--out"):
        if a.restart:
            from trm.run_lock import HOLDER_FILE, LOCK_FILE

            _restart(out, a, keep=(LOCK_FILE, HOLDER_FILE))
        yield uri


def _train_local(a: argparse.Namespace, cfg, out: Path, uri: str | None) -> None:
    from trm.model import count_parameters
    from trm.tracking import runs
    from trm.train.checkpoint import latest_local
    from trm.train.loop import Trainer
    from trm.train.session import LocalSession

    cfg.save(out / "config.yaml")
    tracker = runs.local_run(uri, a.experiment, out, cfg) if uri is not None else None
    if tracker is not None:
        log.info("MLflow run %s at %s", tracker.run_id, tracker.uri)
    session = LocalSession(out, keep=cfg.train.keep_checkpoints, tracker=tracker)
    trainer = Trainer(cfg, session)
    log.info(
        "model: %s, %.2fM parameters, effective depth %d",
        cfg.model.arch,
        count_parameters(trainer.model) / 1e6,
        cfg.effective_depth,
    )
    # a divergence, a full disk, a tracking server gone for good: the MLflow run ends FAILED with the
    # reason as its end-reason tag, and the user reads one line (trm.cli_common.run_main)
    with runs.guard(tracker, checkpoint=lambda: session.last_checkpoint or latest_local(out / "checkpoints")):
        metrics = trainer.fit()
        if tracker is not None:  # inside: a server gone at the very end is said in one line too
            runs.finish_run(tracker, artifact=session.last_checkpoint)
    print(json.dumps(metrics, indent=2))


# ---------------------------------------------------------------- eval
def _positive(flag: str):
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            v = 0
        if v < 1:
            raise argparse.ArgumentTypeError(f"{text!r}: expected a number of supervision steps >= 1")
        return v

    parse.__name__ = flag
    return parse


def _compute_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--N-sup",
        dest="n_sup",
        type=_positive("--N-sup"),
        metavar="K",
        help="supervision steps at inference (default: as trained; more or fewer is allowed)",
    )
    p.add_argument(
        "--halt", action="store_true", help="stop each sample at the first step its halting head says 'done'"
    )
    # noisy multi-trajectory inference (PTRM, 2026; trm.evaluate.Trajectories)
    p.add_argument(
        "--trajectories",
        type=_at_least("--trajectories", 1, int, "a number of trajectories >= 1"),
        default=1,
        metavar="K",
        help="run the recursion K times per sample, noise on z, and keep the answer the halting head is the "
        "most confident of (on ARC every run's answer enters the vote with its confidence; default 1)",
    )
    p.add_argument(
        "--noise",
        type=_at_least("--noise", 0.0, float, "a noise scale sigma >= 0"),
        default=0.0,
        metavar="SIGMA",
        help="scale of the Gaussian noise added to z after each latent update (default 0: none)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of that noise (the same seed, the same answers)")


def _at_least(flag: str, low: float, kind: type, expected: str):
    """An argparse type: `kind(text)` >= low (and finite), else one error line naming `flag`."""

    def parse(text: str):
        try:
            v = kind(text)
        except ValueError:
            v = None
        if v is None or not low <= v < float("inf"):  # NaN and inf fail this too
            raise argparse.ArgumentTypeError(f"{text!r}: expected {expected}")
        return v

    parse.__name__ = flag
    return parse


def _checkpoint_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--checkpoint",
        required=True,
        help="checkpoint folder (runs/NAME/checkpoints/step_...)"
        " or a run folder (its best checkpoint by the dataset's metric; its latest with --latest)",
    )
    p.add_argument("--latest", action="store_true", help="a run folder's latest checkpoint instead of its best")


def _eval_args(p: argparse.ArgumentParser) -> None:
    _checkpoint_flag(p)
    p.add_argument("--data", help="dataset folder (default: the one the checkpoint was trained on)")
    p.add_argument("--split", default="test")
    p.add_argument(
        "--whole-split",
        action="store_true",
        help="report the whole test split (default: less the run's selection split, which is reported as select/*)",
    )
    p.add_argument("--no-ema", action="store_true", help="evaluate the raw weights instead of the EMA")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--limit", type=int, default=0, help="evaluate only the first N samples (0 = all)")
    p.add_argument("--device", default="auto")
    _compute_args(p)
    p.add_argument(
        "--curve",
        action="store_true",
        help="also the metric after each supervision step 1..K (logged to MLflow with --tracking-uri)",
    )
    p.add_argument("--tracking-uri", help="log this evaluation as an MLflow run (the curve as a metric by step)")
    p.add_argument("--experiment", default="trm-eval")


def _eval_run(a: argparse.Namespace) -> None:
    """The same evaluation as training's (trm.evaluate.task): the number `trm train` logged for a
    checkpoint is the number printed here (same batch size: float sums depend on batch shapes)."""
    import torch

    from trm.data.dataset import PuzzleDataset
    from trm.data.selection import Selection
    from trm.evaluate import Trajectories
    from trm.evaluate.task import evaluate_task
    from trm.train.checkpoint import resolve
    from trm.train.loop import load_for_eval, pick_device

    _check_flags(a)
    folder = resolve(a.checkpoint, prefer="latest" if a.latest else "best")
    if a.tracking_uri:
        from trm.tracking import check_reachable

        check_reachable(a.tracking_uri)  # before the evaluation, not after it
    device = pick_device(a.device)
    model, cfg, state = load_for_eval(folder, str(device), use_ema=not a.no_ema)
    data = a.data or cfg.data.path
    _check_data(state, data, a.split, "--data" if a.data else "--checkpoint's dataset")
    ds = PuzzleDataset(data, a.split)
    with torch.no_grad():
        r = evaluate_task(
            model,
            ds,
            a.batch_size,
            device,
            limit=a.limit,
            n_sup=a.n_sup,
            halt=a.halt,
            curve=a.curve,
            objective=cfg.train.objective or None,
            trajectories=Trajectories(a.trajectories, a.noise, a.seed),
            selection=None if a.whole_split else Selection.of(cfg.train),  # the run's (trm.data.selection)
        )  # the run's objective
    out = {"checkpoint": str(folder), "step": state["step"], "data": str(data), "metric": r.metric, "split": r.split}
    out.update(r.metrics)
    if a.curve:
        out["curve"] = {str(k): v for k, v in r.curve.items()}
    if a.tracking_uri:
        from trm.tracking.arc import log_eval_run

        out["mlflow_run_id"] = log_eval_run(a.tracking_uri, a.experiment, folder, state["step"], r, data)
    print(json.dumps(out, indent=2))


def _check_flags(a: argparse.Namespace) -> None:
    """eval/submit flags in range: --batch-size >= 1 (0 divided by zero, -1 evaluated nothing), --limit >= 0."""
    from trm.cli_common import require_positive
    from trm.config import ConfigError

    require_positive(a, "--batch-size")
    if getattr(a, "limit", 0) < 0:
        raise ConfigError(f"--limit {a.limit}: expected 0 (every sample) or a number of samples")


def _check_data(state: dict, data: str, split: str, flag: str) -> None:
    """The dataset is sound (`check_dataset`) and fits the checkpoint: its vocabulary, sequence length
    and task-to-puzzle-id map (`trm.run_checks.check_eval_data`)."""
    from trm.data.check import check_dataset
    from trm.run_checks import check_eval_data

    check_eval_data(state, check_dataset(data, (split,)), str(data), flag)


# ---------------------------------------------------------------- submit
def _submit_args(p: argparse.ArgumentParser) -> None:
    _checkpoint_flag(p)
    p.add_argument("--challenges", required=True, help="Kaggle challenges file (arc-agi_test_challenges.json)")
    p.add_argument("--out", default="submission.json", help="submission file, written atomically when complete")
    p.add_argument(
        "--data",
        help="the dataset whose task ids the challenges' tasks are (default: the "
        "checkpoint's; a fine-tuned run's is built from the challenges)",
    )
    p.add_argument("--no-ema", action="store_true", help="the raw weights instead of the EMA")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--device", default="auto")
    _compute_args(p)


def _submit_run(a: argparse.Namespace) -> None:
    from trm.evaluate import Trajectories
    from trm.evaluate.submit import read_challenges, submit
    from trm.train.checkpoint import resolve
    from trm.train.loop import load_for_eval, pick_device

    _check_flags(a)
    read_challenges(a.challenges)  # a bad file is refused before a model is loaded
    folder = resolve(a.checkpoint, prefer="latest" if a.latest else "best")
    device = pick_device(a.device)
    model, cfg, state = load_for_eval(folder, str(device), use_ema=not a.no_ema)
    _check_data(state, a.data or cfg.data.path, "test", "--data" if a.data else "--checkpoint's dataset")
    summary = submit(
        model,
        a.data or cfg.data.path,
        a.challenges,
        a.out,
        a.batch_size,
        device,
        a.n_sup,
        a.halt,
        trajectories=Trajectories(a.trajectories, a.noise, a.seed),
    )
    print(json.dumps({"checkpoint": str(folder), "step": state["step"], **summary}, indent=2))


# ---------------------------------------------------------------- import
def _import_args(p: argparse.ArgumentParser) -> None:
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument(
        "--checkpoint",
        help="a checkpoint file of the reference implementation "
        "(SamsungSAILMontreal/TinyRecursiveModels: checkpoints/PROJECT/RUN/step_N)",
    )
    src.add_argument(
        "--hf",
        metavar="OWNER/NAME[@REVISION]",
        help="a hub model repo in the reference's layout "
        "(step_N beside all_config.yaml), fetched into the Hugging Face cache",
    )
    p.add_argument(
        "--file",
        metavar="PATH",
        help="with --hf: the checkpoint's path in the repo (default: its highest step_N, or its one weights file)",
    )
    p.add_argument(
        "--config",
        help="its hydra config (default: all_config.yaml beside the checkpoint; with --hf a path in the repo)",
    )
    p.add_argument("--out", required=True, help="run folder to create (what `trm eval --checkpoint` reads)")
    p.add_argument(
        "--data",
        help="dataset folder built by `trm data` (default: the config's data_paths[0]); "
        "needed for an attention model's sequence length when data_paths[0] is not here",
    )


def _import_run(a: argparse.Namespace) -> None:
    if a.hf:
        from trm.hub import import_from_hub

        print(json.dumps(import_from_hub(a.hf, a.out, a.file, a.config, a.data), indent=2))
        return
    if a.file:
        from trm.hub import HubError

        raise HubError("--file: only with --hf (a path inside the hub repo); use --checkpoint FILE for a local one")
    from trm.official import import_checkpoint

    print(json.dumps(import_checkpoint(a.checkpoint, a.out, a.config, a.data), indent=2))


# ---------------------------------------------------------------- export
def _export_args(p: argparse.ArgumentParser) -> None:
    _checkpoint_flag(p)
    p.add_argument(
        "--out",
        metavar="DIR",
        help="hub-ready folder to create: model.safetensors, config.yaml, meta.json, README.md (model card)",
    )
    p.add_argument(
        "--hf",
        metavar="OWNER/NAME",
        help="upload that folder to this hub model repo (created if needed; needs `hf auth login` or HF_TOKEN)",
    )
    p.add_argument("--private", action="store_true", help="with --hf: create the repo private")


def _export_run(a: argparse.Namespace) -> None:
    from trm.hub import export

    print(json.dumps(export(a.checkpoint, a.out, a.hf, a.latest, a.private), indent=2))


# ---------------------------------------------------------------- params
def _params_run(a: argparse.Namespace) -> None:
    """Each recipe of configs/ (the reference README's commands), each `model.variant` at the paper's width,
    and each row of the paper's Tables 1 and 2 (`trm.sweep.paper`): its network built on the meta device
    (no memory, no init cost) for its dataset kind's vocabulary and sequence length, and counted, beside
    the paper's count where the paper gives one."""
    from trm.config import ConfigError, load_config
    from trm.recipes import CONFIGS, recipe_names, recipe_parameters, recipe_path
    from trm.sweep.paper import PAPER_VARIANT_PARAMS, TABLE_BASE_RECIPE, TABLES

    names = recipe_names()
    if not names:
        raise ConfigError(f"{CONFIGS}: no recipes (configs/*.yaml) there; run from a checkout of the project")
    print(f"{'recipe (configs/)':21s} {'arch':9s} {'layers':>6s} {'n':>3s} {'T':>3s} {'hidden':>6s} {'params':>11s}")
    for name in names:
        m = load_config(recipe_path(name)).model
        print(f"{name:21s} {m.arch:9s} {m.layers:6d} {m.n:3d} {m.T:3d} {m.hidden:6d} {recipe_parameters(name):11,d}")
    print(
        f"\n{'model.variant':13s} {'on recipe':21s} {'arch':9s} {'layers':>6s} {'n':>3s} {'T':>3s} "
        f"{'params':>11s}  paper"
    )
    for variant, recipe, paper in PAPER_VARIANT_PARAMS:
        m = load_config(recipe_path(recipe), {"variant": variant}).model
        n = recipe_parameters(recipe, {"variant": variant})
        print(f"{variant:13s} {recipe:21s} {m.arch:9s} {m.layers:6d} {m.n:3d} {m.T:3d} {n:11,d}  {paper}")
    print(f"\n{'table':5s} {'row':14s} {'the paper names it':22s} {'params':>11s}  paper   (on {TABLE_BASE_RECIPE})")
    base = load_config(recipe_path(TABLE_BASE_RECIPE)).model
    for table, rows in TABLES.items():
        for row in rows:
            n = recipe_parameters(TABLE_BASE_RECIPE, row.values(base))
            print(f"{table:5s} {row.key:14s} {row.label:22s} {n:11,d}  {row.params}")
    print(
        "params: the network's nn.Parameters, counted as the reference does. The puzzle-embedding table\n"
        "(puzzle ids x 512, a buffer trained by sign-SGD) is not in them: one row on Sudoku and Maze,\n"
        "one per task and augmentation on ARC. paper: its Tables 1, 4 and 5 (— where it gives none)."
    )


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="trm", description="Tiny Recursive Models")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_data(sub)
    p = sub.add_parser("train", help="train one model")
    _train_args(p)
    p.set_defaults(fn=_train_run)
    p = sub.add_parser("eval", help="evaluate a checkpoint")
    _eval_args(p)
    p.set_defaults(fn=_eval_run)
    p = sub.add_parser("submit", help="an ARC Prize submission.json from a challenges file")
    _submit_args(p)
    p.set_defaults(fn=_submit_run)
    p = sub.add_parser("import", help="a reference-implementation checkpoint as a run folder (--hf: from the hub)")
    _import_args(p)
    p.set_defaults(fn=_import_run)
    p = sub.add_parser("export", help="a run's best checkpoint as a hub-ready folder (--out) or hub repo (--hf)")
    _export_args(p)
    p.set_defaults(fn=_export_run)
    p = sub.add_parser("params", help="parameter counts of the paper's configurations")
    p.set_defaults(fn=_params_run)
    return parser


def main(argv: list[str] | None = None) -> int:
    """`trm ...`: a user's error is one line `trm SUBCOMMAND: error: ...` and exit 2 (trm.cli_common)."""
    return run_main(build_parser(), lambda a: a.fn(a), argv)


if __name__ == "__main__":
    sys.exit(main())
