"""The run's ledger of attempts under Ray Train (trm.launch.attempts), on a real storage folder: restarts
counted, the work each restart threw away measured, and a run that restarts from one checkpoint again and
again stopped. (End to end, with workers killed under Ray Train: tests/test_faults.py.)"""

from __future__ import annotations

import json
import time

import pytest

from trm.cost import DEFAULT_PRICES, CostMeter
from trm.launch.attempts import ATTEMPTS, Attempts, Stalled


def test_restarts_lost_work_and_the_stalled_limit(tmp_path):
    root = str(tmp_path / "run")
    first = Attempts(root, launch="a", stalled_limit=3)
    assert first.start(None).starts == 1
    first.beat(4, checkpoint=True)  # a checkpoint at step 4: nothing unsaved
    time.sleep(0.3)
    first._last_beat = 0.0  # the next beat is written now, not BEAT_EVERY_S later
    first.beat(6, checkpoint=False)  # 0.3 s of work past the checkpoint, then the attempt dies
    unsaved = json.loads((tmp_path / "run" / ATTEMPTS).read_text())["beat"]["unsaved_s"]
    assert 0.25 < unsaved < 1.0

    second = Attempts(root, launch="a", stalled_limit=3)
    ledger = second.start(4)  # resumes from the checkpoint the first attempt wrote: progress
    assert (ledger.starts, ledger.stalled, ledger.lost_seconds) == (2, 0, unsaved)
    Attempts(root, launch="a", stalled_limit=3).start(4)  # 1st restart in a row from step 4
    Attempts(root, launch="a", stalled_limit=3).start(4)  # 2nd
    with pytest.raises(Stalled, match="3 attempts in a row from the checkpoint at step 4 ended without writing a newer"):
        Attempts(root, launch="a", stalled_limit=3).start(4)

    # a new driver (--resume) counts afresh; an attempt that advances the checkpoint resets the count
    assert Attempts(root, launch="b", stalled_limit=3).start(4).stalled == 0
    assert Attempts(root, launch="b", stalled_limit=3).start(4).stalled == 1
    # an attempt that got past its checkpoint (a beat at step 7) before it died is progress, not a stall
    moving = Attempts(root, launch="b", stalled_limit=3)
    moving.start(4)
    moving.beat(7, checkpoint=False)
    assert Attempts(root, launch="b", stalled_limit=3).start(4).stalled == 0
    ledger = Attempts(root, launch="b", stalled_limit=3).start(8)
    assert (ledger.starts, ledger.stalled) == (10, 0)


def test_the_cost_meter_counts_lost_work_as_paid_and_on_its_own():
    price = DEFAULT_PRICES["p5.4xlarge"]["spot"]  # one H100 an hour
    now = [0.0]
    meter = CostMeter(4, "p5.4xlarge", "spot", clock=lambda: now[0])
    now[0] = 3600.0  # an hour on 4 GPUs since the checkpoint state
    meter.lost_seconds = 1800.0  # half an hour thrown away by restarts, on the same 4 GPUs
    m = meter.metrics()
    assert m["cost/gpu_hours"] == pytest.approx(4.0 + 2.0) and m["cost/gpu_hours_lost"] == pytest.approx(2.0)
    assert m["cost/usd_estimate"] == pytest.approx(6.0 * price)
