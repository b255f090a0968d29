"""A run's attempts under Ray Train: each start of its worker group, recorded by rank 0 in the run's
storage beside Ray's checkpoints (`trm_attempts.json`, local or S3).

Ray Train restarts a failed worker group from the latest checkpoint (worker errors up to
--max-failures, spot preemptions without limit), and the checkpoint alone cannot tell what happened
in between. The ledger can:
  restarts     every start after the first is a restart, counted even when the attempt died before
               writing a checkpoint (the count in a checkpoint would lose it)
  lost work    each attempt beats at its reports (the wall time since its newest checkpoint, or since
               it started); a restart adds the previous attempt's last beat to the time lost: work
               computed and thrown away (GPU-hours with the run's cost meter)
  no progress  an attempt that started from a checkpoint and ended without a newer one or a beat past
               it failed before it advanced; after `stalled_limit` such attempts in a row the run
               stops with that reason instead of looping: restarts of spot preemptions have no limit,
               nor, with --max-failures -1, of errors (a new driver, `--resume`, counts afresh; an
               attempt that advanced, say up to a preemption without notice, resets the count)
The ledger is bookkeeping: a failed read or write of it is a warning, never the attempt's failure.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field, fields

from trm.errors import TrmError

ATTEMPTS = "trm_attempts.json"
log = logging.getLogger(__name__)

STALLED_RESTARTS = 3  # attempts in a row that end where they started before a run stops
BEAT_EVERY_S = 30.0  # at most one beat per this many seconds (a PUT on S3), and at every checkpoint


class Stalled(TrmError):
    """The run restarted `stalled_limit` times without advancing a checkpoint: it stopped."""

    end_reason = "stalled"


@dataclass
class Ledger:
    starts: int = 0  # worker-group starts, this one included
    launch: str = ""  # the driver launch the current count of stalled starts belongs to
    resume_step: int = -1  # the checkpoint step the latest start resumed from (-1: none)
    stalled: int = 0  # attempts in a row that started from resume_step and ended without advancing
    lost_seconds: float = 0.0  # work thrown away by restarts, wall seconds
    beat: dict = field(default_factory=dict)  # the latest attempt's last beat: step, seconds of unsaved work


class Attempts:
    """Rank 0's view of the ledger at `root` (a storage location), for one driver launch."""

    def __init__(self, root: str, launch: str, stalled_limit: int = STALLED_RESTARTS):
        from trm.storage import join

        self.uri, self.launch, self.stalled_limit = join(root, ATTEMPTS), launch, stalled_limit
        self.ledger = Ledger()
        self._since = time.monotonic()  # the newest checkpoint of this attempt, or its start
        self._last_beat = 0.0

    def start(self, step: int | None) -> Ledger:
        """Record this attempt's start from checkpoint `step` (None: from scratch); raise `Stalled` when
        the `stalled_limit` attempts before it, in a row in this launch, started from that step and ended
        without advancing (no newer checkpoint, no beat past it)."""
        from trm.storage import read_json

        try:
            found = read_json(self.uri) or {}
        except Exception as e:  # noqa: BLE001 - unreadable: this start is counted afresh
            log.warning("could not read the run's ledger %s (%s): counting restarts afresh", self.uri, e)
            found = {}
        known = {f.name for f in fields(Ledger)}
        ledger = Ledger(**{k: v for k, v in found.items() if k in known})
        at = -1 if step is None else step
        restart = ledger.starts > 0
        if restart:
            ledger.lost_seconds += float(ledger.beat.get("unsaved_s", 0.0))
        advanced = int(ledger.beat.get("step", -1)) > ledger.resume_step
        same = restart and ledger.launch == self.launch and at == ledger.resume_step and not advanced
        ledger.stalled = ledger.stalled + 1 if same else 0
        ledger.starts += 1
        ledger.launch, ledger.resume_step, ledger.beat = self.launch, at, {}
        self.ledger = ledger
        self._write()
        if ledger.stalled >= self.stalled_limit:
            where = f"the checkpoint at step {step}" if step is not None else "the start (no checkpoint yet)"
            raise Stalled(
                f"stopped: {ledger.stalled} attempts in a row from {where} ended without writing a newer "
                f"checkpoint; the run fails before it advances: see the workers' errors above"
            )
        self._since = time.monotonic()
        return ledger

    def beat(self, step: int, checkpoint: bool) -> None:
        """At a report: the work since the newest checkpoint (none after a checkpoint), written at most
        every BEAT_EVERY_S and at every checkpoint."""
        now = time.monotonic()
        if checkpoint:
            self._since = now
        elif now - self._last_beat < BEAT_EVERY_S:
            return
        self._last_beat = now
        self.ledger.beat = {"step": step, "unsaved_s": round(now - self._since, 3), "at": time.time()}
        self._write()

    def _write(self) -> None:
        from trm.storage import write_json

        try:
            write_json(self.uri, asdict(self.ledger))
        except Exception as e:  # noqa: BLE001 - a passing S3 error or a full disk must not fail the attempt
            log.warning("could not write the run's ledger %s: %s", self.uri, e)
