"""Ray's lines on the driver's terminal: the ones that look like failures to a user but are not, dropped.

Ray forwards every worker's and raylet's output to the driver (`log_to_driver`), through its log
deduplicator, which skips the lines matching `RAY_DEDUP_LOGS_SKIP_REGEX` (Ray's documented
setting, read when Ray is imported). A real error (a traceback, an OOM kill, a worker that died)
matches none of the patterns below and still reaches the terminal; the worker log files under
/tmp/ray/session_*/logs keep everything.
"""

from __future__ import annotations

import os
import re
import sys

SKIP_ENV = "RAY_DEDUP_LOGS_SKIP_REGEX"

RAY_NOISE = (
    # Ray Train's own preemption watcher, logged at error level by core_worker.cc once per trial: its
    # constructor arguments sit in the object store and it may restart (Ray's warning to itself)
    r"core_worker\.cc.*'PreemptionWatcher'.*constructor arguments in the object store",
    # the raylet, when a trial's driver, controller and workers start at once on a small machine
    r"PYTHON worker processes have been started on node",
    # Ray Train's placement-group cleaner after every TorchTrainer that ended (each trial's)
    r"Detected that the Ray Train controller actor \S+ is dead\. Cleaning up placement group",
)


def noise_pattern() -> str:
    return "|".join(f"(?:{p})" for p in RAY_NOISE)


def drop_ray_noise() -> None:
    """Skip `RAY_NOISE` on this driver's terminal (a user's own RAY_DEDUP_LOGS_SKIP_REGEX is kept beside it).
    Call before `ray.init`; when Ray was imported already (a sweep script imports `ray.tune` for
    its search space), its deduplicators, made at import from the setting, get the pattern too."""
    pattern = noise_pattern()
    given = os.environ.get(SKIP_ENV)
    if given:
        pattern = given if pattern in given else f"{given}|{pattern}"
    os.environ[SKIP_ENV] = pattern
    if "ray" not in sys.modules:
        return
    try:  # private, guarded: a Ray that moved them prints its noise again, nothing breaks
        from ray._private import ray_logging

        for dedup in (ray_logging.stdout_deduplicator, ray_logging.stderr_deduplicator):
            dedup.skip_re = re.compile(pattern)
    except (ImportError, AttributeError):
        pass
