"""What GPUs cost, and when a run stops by itself: prices, the cost meter, run limits.

``DEFAULT_PRICES`` holds USD per *instance*-hour (us-east-1, order of magnitude only: spot prices
move hourly and differ per zone). Override them with a JSON or YAML file through
``load_price_table(path)``. ``CostMeter`` accumulates wall seconds x GPUs across restarts and
keeps its state as a plain dict so it can ride along in a training checkpoint. ``RunLimits``
(deadline, GPU-hour budget) is what the training loop checks; it is the typed handoff from a
long run's driver to its workers.

Run ``python -m trm.cost [--prices PRICES.json|yaml]`` to print the cost of the paper's ARC run
(4 H100 for 3 days).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trm.errors import TrmError

__all__ = [
    "DEFAULT_INSTANCE_TYPE",
    "DEFAULT_MARKET",
    "DEFAULT_PRICES",
    "MARKETS",
    "CostError",
    "CostMeter",
    "PriceTableError",
    "RunLimits",
    "UnknownPriceError",
    "estimate_cost",
    "gpu_hours",
    "load_price_table",
    "paper_arc_run_cost",
    "usd_per_gpu_hour",
]


MARKETS = ("on_demand", "spot")
# What a cost is estimated on unless a run says otherwise (--instance-type, --market): the cluster's
# GPU worker (cluster/gpu.yaml), one H100 on spot
DEFAULT_INSTANCE_TYPE = "p5.4xlarge"
DEFAULT_MARKET = "spot"

# USD per instance-hour. DEFAULTS, not quotes: published us-east-1 on-demand
# list prices (p5 after the mid-2025 price cut) and spot at roughly a third of
# on-demand. Override with load_price_table("prices.json") for real numbers.
DEFAULT_PRICES: dict[str, dict[str, float]] = {
    "p5.4xlarge": {"gpus": 1, "on_demand": 6.88, "spot": 2.29},  # 1 x H100 80GB
    "p5.48xlarge": {"gpus": 8, "on_demand": 55.04, "spot": 18.35},  # 8 x H100 80GB
    "m6i.2xlarge": {"gpus": 0, "on_demand": 0.384, "spot": 0.15},  # CPU head node
}

_PRICE_FIELDS = ("gpus", *MARKETS)


class CostError(TrmError, ValueError):
    """A price, market or run limit that cannot be used (the message names it)."""


class PriceTableError(CostError):
    """A price override file is missing, unreadable or malformed."""


class UnknownPriceError(CostError, KeyError):
    """No price for an instance type (a KeyError too, as a lookup miss)."""

    __str__ = Exception.__str__  # KeyError would quote the message


def _normalize_market(market: str) -> str:
    m = market.strip().lower().replace("-", "_")
    if m == "ondemand":
        m = "on_demand"
    if m not in MARKETS:
        raise CostError(f"--market {market!r}: expected one of {MARKETS}")
    return m


def load_price_table(path: str | os.PathLike[str] | None = None) -> dict[str, dict[str, float]]:
    """Return DEFAULT_PRICES, updated from a JSON/YAML file if ``path`` is given.

    The file maps instance type -> {"gpus": int, "on_demand": $/h, "spot": $/h}.
    Fields may be partial for a known instance type (e.g. only a fresh spot
    price); a new instance type needs all three.
    """
    table = {k: dict(v) for k, v in DEFAULT_PRICES.items()}
    if path is None:
        return table
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as e:
        raise PriceTableError(f"--prices {p}: cannot read price file: {e}") from e
    try:
        if p.suffix.lower() in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except Exception as e:  # json.JSONDecodeError / yaml.YAMLError
        raise PriceTableError(f"--prices {p}: cannot parse price file: {e}") from e
    if not isinstance(data, dict):
        raise PriceTableError(
            f"--prices {p}: expected a mapping of instance type -> {{gpus, on_demand, spot}}, got {type(data).__name__}"
        )
    for itype, entry in data.items():
        where = f"--prices {p}: {itype!r}"
        if not isinstance(entry, dict):
            raise PriceTableError(
                f"{where}: expected a mapping with keys {list(_PRICE_FIELDS)}, got {type(entry).__name__}"
            )
        merged = dict(table.get(itype, {}))
        for key, value in entry.items():
            if key not in _PRICE_FIELDS:
                raise PriceTableError(
                    f"{where}: unknown key {key!r}; expected one of {list(_PRICE_FIELDS)} "
                    "(prices in USD per instance-hour)"
                )
            if key == "gpus":
                if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                    raise PriceTableError(f"{where}.gpus: expected an integer >= 0, got {value!r}")
            elif (
                isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0
            ):
                raise PriceTableError(f"{where}.{key}: expected a number >= 0 (USD per instance-hour), got {value!r}")
            merged[key] = value
        missing = [k for k in _PRICE_FIELDS if k not in merged]
        if missing:
            raise PriceTableError(
                f"{where}: new instance type is missing {missing}; expected all of {list(_PRICE_FIELDS)}"
            )
        table[itype] = merged
    return table


def gpu_hours(num_gpus: float, seconds: float) -> float:
    """GPU-hours used by ``num_gpus`` GPUs busy for ``seconds`` wall seconds."""
    return num_gpus * seconds / 3600.0


def _instance_rate(
    gpus: int, instance_type: str, market: str, prices: Mapping[str, Mapping[str, float]] | None
) -> float:
    """USD per wall-hour for enough instances of ``instance_type`` to hold ``gpus``."""
    table = prices if prices is not None else DEFAULT_PRICES
    if instance_type not in table:
        raise UnknownPriceError(
            f"--instance-type {instance_type!r}: no price for instance type "
            f"{instance_type!r}; known: {sorted(table)} (add it with --prices)"
        )
    entry = table[instance_type]
    per_instance = int(entry["gpus"])
    # Whole instances are billed: 4 GPUs on p5.48xlarge pay for all 8.
    instances = 1 if per_instance == 0 else max(1, math.ceil(gpus / per_instance))
    return instances * float(entry[_normalize_market(market)])


def estimate_cost(
    gpus: int,
    hours: float,
    instance_type: str = DEFAULT_INSTANCE_TYPE,
    market: str = DEFAULT_MARKET,
    prices: Mapping[str, Mapping[str, float]] | None = None,
) -> float:
    """Dollars for ``gpus`` GPUs held ``hours`` wall hours on ``instance_type``."""
    return _instance_rate(gpus, instance_type, market, prices) * hours


def usd_per_gpu_hour(
    instance_type: str = DEFAULT_INSTANCE_TYPE,
    market: str = DEFAULT_MARKET,
    prices: Mapping[str, Mapping[str, float]] | None = None,
) -> float:
    """One GPU's share of an instance-hour: what a sweep trial pays, since trials share instances
    (a run is billed whole instances: ``estimate_cost``)."""
    rate = _instance_rate(1, instance_type, market, prices)  # one instance; unknown type/market: refused
    return rate / max(int((prices if prices is not None else DEFAULT_PRICES)[instance_type]["gpus"]), 1)


class CostMeter:
    """Accumulates GPU wall time and dollars across restarts.

    Call ``metrics()`` whenever you report; put ``state_dict()`` in the
    checkpoint and pass it back as ``state=`` after a restart. The work a
    restart threw away (wall seconds since the checkpoint it resumed from,
    measured by the run's ledger, `trm.launch.attempts`) is set as
    ``lost_seconds``: it is in ``cost/gpu_hours`` and the dollars, and on its
    own in ``cost/gpu_hours_lost``. Time between a preemption and the restart
    is not seen, so the figures are a lower bound. Dollars accumulate per
    segment, so a run resumed on another instance type or market keeps the
    price of what it already used.
    """

    def __init__(
        self,
        num_gpus: int,
        instance_type: str = DEFAULT_INSTANCE_TYPE,
        market: str = DEFAULT_MARKET,
        prices: Mapping[str, Mapping[str, float]] | None = None,
        state: Mapping[str, Any] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.num_gpus = num_gpus
        self.instance_type = instance_type
        self.market = _normalize_market(market)
        self._usd_per_second = _instance_rate(num_gpus, instance_type, self.market, prices) / 3600.0
        self._clock = clock
        self.gpu_seconds = 0.0
        self.usd = 0.0
        self.restarts = 0
        self.lost_seconds = 0.0  # wall seconds of work restarts threw away (set from the run's ledger)
        if state is not None:
            self.load_state_dict(state)
        self._last = clock()

    def _advance(self) -> None:
        now = self._clock()
        dt = max(0.0, now - self._last)
        self._last = now
        self.gpu_seconds += dt * self.num_gpus
        self.usd += dt * self._usd_per_second

    def metrics(self) -> dict[str, float]:
        """``{"cost/gpu_hours", "cost/usd_estimate", "cost/gpu_hours_lost"}`` up to now, lost work included."""
        self._advance()
        lost = self.lost_seconds * self.num_gpus
        return {
            "cost/gpu_hours": (self.gpu_seconds + lost) / 3600.0,
            "cost/usd_estimate": self.usd + self.lost_seconds * self._usd_per_second,
            "cost/gpu_hours_lost": lost / 3600.0,
        }

    def state_dict(self) -> dict[str, Any]:
        self._advance()
        return {
            "gpu_seconds": self.gpu_seconds,
            "usd": self.usd,
            "restarts": self.restarts,
            "instance_type": self.instance_type,
            "market": self.market,
            "num_gpus": self.num_gpus,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.gpu_seconds = float(state["gpu_seconds"])
        self.usd = float(state["usd"])
        self.restarts = int(state.get("restarts", 0)) + 1
        self._last = self._clock()


STOP_REASONS = ("deadline", "gpu_budget")


@dataclass
class RunLimits:
    """When a long run stops by itself, and what its GPUs cost.

    Rank 0 of the trainer checks these at every log step; the run then writes
    a checkpoint and ends cleanly, so a later ``--resume`` with a later
    deadline or a bigger budget continues it. GPU-hours count the time the
    workers ran, across restarts (the meter rides in the checkpoint), not the
    time a preempted run waited for nodes.
    """

    deadline: float | None = None  # unix seconds
    gpu_hours: float | None = None  # budget, restarts included
    gpus: int = 0  # GPUs the run holds: workers x GPUs per worker
    instance_type: str = DEFAULT_INSTANCE_TYPE
    market: str = DEFAULT_MARKET
    prices: dict[str, dict[str, float]] | None = None

    def __post_init__(self) -> None:
        if self.gpu_hours is not None and self.gpu_hours <= 0:
            raise CostError(f"--budget-gpu-hours {self.gpu_hours:g}: expected a number > 0")
        if self.gpu_hours is not None and self.gpus <= 0:
            raise CostError("--budget-gpu-hours: a GPU-hour budget needs GPUs: set --gpus-per-worker > 0")
        if self.gpus > 0:
            _instance_rate(self.gpus, self.instance_type, self.market, self.prices)  # unknown type/market: fail now

    def meter(self, state: Mapping[str, Any] | None = None) -> CostMeter | None:
        if self.gpus <= 0:
            return None
        return CostMeter(self.gpus, self.instance_type, self.market, self.prices, state)

    def reached(self, meter: CostMeter | None, now: float | None = None) -> str | None:
        """ "deadline", "gpu_budget" or None."""
        if self.deadline is not None and (now if now is not None else time.time()) >= self.deadline:
            return "deadline"
        if self.gpu_hours is not None and meter is not None and meter.metrics()["cost/gpu_hours"] >= self.gpu_hours:
            return "gpu_budget"
        return None


def paper_arc_run_cost(prices: Mapping[str, Mapping[str, float]] | None = None) -> dict[str, float]:
    """Print and return the cost of the paper's ARC run: 4 H100 x 3 days."""
    table = prices if prices is not None else DEFAULT_PRICES
    gpus, hours = 4, 72.0
    rows = {
        f"{itype} {market}": estimate_cost(gpus, hours, itype, market, table)
        for itype in (DEFAULT_INSTANCE_TYPE, "p5.48xlarge")
        for market in MARKETS
    }
    head = estimate_cost(0, hours, "m6i.2xlarge", "on_demand", table)
    print(f"Paper ARC run: {gpus} x H100 for {hours:.0f} h = {gpu_hours(gpus, hours * 3600):.0f} GPU-hours")
    for name, usd in rows.items():
        itype = name.split()[0]
        per = int(table[itype]["gpus"])
        n = math.ceil(gpus / per)
        idle = f", {n * per - gpus} GPUs idle" if n * per > gpus else ""
        print(f"  {n} x {name:<22} ${usd:>9,.2f}{idle}")
    print(f"  + on-demand m6i.2xlarge head ${head:,.2f}")
    spot, od = rows[f"{DEFAULT_INSTANCE_TYPE} spot"], rows[f"{DEFAULT_INSTANCE_TYPE} on_demand"]
    print(
        f"  spot saves ${od - spot:,.2f} ({1 - spot / od:.0%}) on 4 x {DEFAULT_INSTANCE_TYPE}; "
        "add restarts lost to preemption (about one checkpoint interval each)."
    )
    return {**rows, "head m6i.2xlarge on_demand": head}


def main(argv: list[str] | None = None) -> int:
    """`python -m trm.cost [--prices FILE]`: the paper's ARC run at these prices."""
    from trm.cli_common import ArgumentParser, run_main

    p = ArgumentParser(prog="python -m trm.cost", description=main.__doc__)
    p.add_argument("--prices", help="JSON/YAML price table overriding the defaults")
    p.add_argument("prices_file", nargs="?", help=argparse.SUPPRESS)  # the old positional spelling
    return run_main(p, lambda a: paper_arc_run_cost(load_price_table(a.prices or a.prices_file)), argv)


if __name__ == "__main__":
    sys.exit(main())
