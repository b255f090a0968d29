"""What every entry point shares: the argument parser, the shared flags, logging, and one error path.

`trm` (trm/cli.py), the sweep scripts (trm/sweep/cli.py) and the long-run script
(trm/launch/long_run.py) all run through `run_main`:

  * a bad flag (argparse) or a user's mistake (any `trm.errors.TrmError`: config, dataset,
    storage, tracking server, Ray address, prices, checkpoint) prints one line,
    ``PROG: error: <message naming the flag or field>``, on stderr and exits 2, before anything
    is half-written; ``--debug`` (or TRM_DEBUG=1) adds the traceback;
  * anything else is a bug and keeps Python's traceback (exit 1).

This module imports neither Ray nor MLflow: `trm params` and `trm data` stay fast.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import traceback
from collections.abc import Callable
from typing import Any

from trm.errors import TrmError

log = logging.getLogger("trm")


class ArgumentParser(argparse.ArgumentParser):
    """argparse with the project's error path: a bad flag is one line and exit 2 (no usage block),
    and every parser (sub-commands included) takes --debug."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        # the innermost (sub-)command's name, for its error line: `trm train: error: ...`
        self.set_defaults(_prog=self.prog)
        # SUPPRESS: a sub-command's default must not overwrite `trm --debug train`
        self.add_argument(
            "--debug",
            action="store_true",
            default=argparse.SUPPRESS,
            help="show the traceback of an error, and debug logging",
        )

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


# ---------------------------------------------------------------- shared flags
WORKER_WAIT_MINUTES = 10.0  # how long a run or trial waits for its workers, over all its starts (-1: no bound)
_FLAGS: dict[str, tuple[str, dict[str, Any]]] = {
    "config": ("--config", {"help": "YAML file with model/train/data sections"}),
    "set": (
        "--set",
        {
            "action": "append",
            "default": [],
            "metavar": "KEY=VALUE",
            "help": "override a config field: model.n=4 or just n=4 (repeatable)",
        },
    ),
    "data": ("--data", {"help": "dataset folder or s3:// URI (sets data_path)"}),
    "storage": ("--storage", {"help": "checkpoint storage: a folder or s3://bucket/prefix"}),
    "tracking_uri": (
        "--tracking-uri",
        {"help": "MLflow tracking URI (default: $MLFLOW_TRACKING_URI or sqlite:///mlflow.db)"},
    ),
    "experiment": ("--experiment", {"help": "MLflow experiment"}),
    "address": ("--address", {"help": "Ray cluster address (default: $RAY_ADDRESS or a new local Ray)"}),
    "gpus_per_worker": ("--gpus-per-worker", {"type": float, "help": "GPUs per Ray Train worker"}),
    "cpus_per_worker": ("--cpus-per-worker", {"type": float, "help": "CPUs per Ray Train worker"}),
    "max_failures": (
        "--max-failures",
        {
            "type": int,
            "metavar": "K",
            "help": "worker errors (a crash, a node lost without notice) to recover from by restarting the "
            "workers from the latest checkpoint; -1: no limit (spot preemptions are always retried)",
        },
    ),
    "worker_wait_minutes": (  # default WORKER_WAIT_MINUTES where an entry point says so
        "--worker-wait-minutes",
        {
            "type": float,
            "metavar": "M",
            "help": "how long the workers may wait for their resources, over all restarts, before the run stops "
            "saying which it lacks; -1: no bound (a cluster that autoscales or regains spot capacity)",
        },
    ),
}


def add_flags(p: argparse.ArgumentParser, *names: str, **defaults: Any) -> None:
    """Add the shared flags `names` (config, set, data, storage, tracking_uri, experiment, address,
    gpus_per_worker, cpus_per_worker, max_failures, worker_wait_minutes), with the same spelling and help
    everywhere; `defaults` sets an entry point's own default (shown in --help)."""
    for name in names:
        flag, kw = _FLAGS[name]
        kw = dict(kw)
        if name in defaults:
            kw["default"] = defaults[name]
            kw["help"] += " (default: %(default)s)"
        p.add_argument(flag, **kw)


def overrides_from(a: argparse.Namespace) -> dict[str, Any]:
    """The config overrides of --set (and --data, where the entry point has it)."""
    from trm.config import parse_set

    overrides: dict[str, Any] = parse_set(a.set)
    if getattr(a, "data", None):
        overrides["data_path"] = a.data
    return overrides


def require_positive(a: argparse.Namespace, *flags: str) -> None:
    """Each of these integer flags, when given, is >= 1."""
    from trm.config import ConfigError

    for flag in flags:
        value = getattr(a, flag.lstrip("-").replace("-", "_"))
        if value is not None and value < 1:
            raise ConfigError(f"{flag} {value}: expected an integer >= 1")


def check_max_failures(value: int | None) -> None:
    """--max-failures: -1 (no limit) or a count >= 0."""
    from trm.config import ConfigError

    if value is not None and value < -1:
        raise ConfigError(f"--max-failures {value}: expected -1 (no limit) or a number of retries >= 0")


def check_worker_wait(value: float | None) -> None:
    """--worker-wait-minutes: -1 (no bound) or minutes > 0."""
    import math

    from trm.config import ConfigError

    if value is not None and value != -1 and not (math.isfinite(value) and value > 0):
        raise ConfigError(f"--worker-wait-minutes {value}: expected -1 (no bound) or a number of minutes > 0")


# ---------------------------------------------------------------- running an entry point
def setup_logging(debug: bool = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    if debug:  # third-party libraries stay at INFO: their DEBUG drowns the project's
        for name in ("urllib3", "botocore", "boto3", "s3transfer", "matplotlib", "filelock", "git", "alembic"):
            logging.getLogger(name).setLevel(logging.INFO)
        return
    # their INFO lines say nothing a user acts on: a new MLflow database's schema, matplotlib's font cache
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)


QUIET_LOGGERS = ("mlflow.store.db.utils", "alembic", "matplotlib")


def one_line(error: BaseException) -> str:
    """An error's message on one line (a multi-line message keeps its lines, joined by '; ')."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    if not lines:
        return type(error).__name__
    head, rest = lines[0], lines[1:]
    return head + (" " if head.endswith(":") else "; ") + "; ".join(rest) if rest else head


def run_main(
    parser: argparse.ArgumentParser, fn: Callable[[argparse.Namespace], Any], argv: list[str] | None = None
) -> int:
    """Parse `argv`, set up logging, run `fn(args)`; a user's error is one line and exit 2."""
    args = parser.parse_args(argv)
    debug = bool(getattr(args, "debug", False) or os.environ.get("TRM_DEBUG"))
    setup_logging(debug)
    prog = getattr(args, "_prog", parser.prog)
    try:
        fn(args)
    except TrmError as e:
        if debug:
            traceback.print_exc()
        sys.stdout.flush()
        print(f"{prog}: error: {one_line(e)}", file=sys.stderr, flush=True)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr, flush=True)
        return 130
    return 0
