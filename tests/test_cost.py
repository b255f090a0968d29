"""trm.cost: cost math, price overrides, CostMeter (run limits: tests/test_long_run.py)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from trm import cost
from trm.cost import CostMeter, PriceTableError, estimate_cost, gpu_hours, load_price_table
from trm.errors import TrmError


# --- cost model -------------------------------------------------------------


def test_gpu_hours() -> None:
    assert gpu_hours(4, 72 * 3600) == 288.0
    assert gpu_hours(1, 1800) == 0.5


def test_paper_arc_run_on_p5_4xlarge_spot() -> None:
    price = cost.DEFAULT_PRICES["p5.4xlarge"]["spot"]
    # 4 single-GPU instances for 72 h = 288 instance-hours = 288 GPU-hours.
    assert estimate_cost(4, 72, "p5.4xlarge", "spot") == pytest.approx(288 * price)
    assert estimate_cost(4, 72, "p5.4xlarge", "on-demand") == pytest.approx(
        288 * cost.DEFAULT_PRICES["p5.4xlarge"]["on_demand"]
    )


def test_partial_big_instance_bills_whole_instance() -> None:
    p = cost.DEFAULT_PRICES["p5.48xlarge"]["spot"]
    assert estimate_cost(4, 10, "p5.48xlarge", "spot") == pytest.approx(10 * p)  # 4 of 8 GPUs
    assert estimate_cost(9, 10, "p5.48xlarge", "spot") == pytest.approx(20 * p)  # two nodes


def test_unknown_instance_and_market() -> None:
    with pytest.raises(KeyError, match="p4d.24xlarge"):
        estimate_cost(1, 1, "p4d.24xlarge", "spot")
    with pytest.raises(ValueError, match="market"):
        estimate_cost(1, 1, "p5.4xlarge", "reserved")


def test_paper_arc_run_cost_prints(capsys: pytest.CaptureFixture[str]) -> None:
    rows = cost.paper_arc_run_cost()
    out = capsys.readouterr().out
    assert "288 GPU-hours" in out
    assert rows["p5.4xlarge spot"] < rows["p5.4xlarge on_demand"]


def test_price_override_json_and_yaml(tmp_path: Path) -> None:
    j = tmp_path / "prices.json"
    j.write_text(json.dumps({"p5.4xlarge": {"spot": 3.0}, "g6e.xlarge": {"gpus": 1, "on_demand": 1.86, "spot": 0.7}}))
    table = load_price_table(j)
    assert table["p5.4xlarge"] == {"gpus": 1, "on_demand": 6.88, "spot": 3.0}
    assert estimate_cost(2, 1, "g6e.xlarge", "spot", table) == pytest.approx(1.4)
    assert cost.DEFAULT_PRICES["p5.4xlarge"]["spot"] != 3.0  # defaults untouched
    y = tmp_path / "prices.yaml"
    y.write_text("p5.48xlarge:\n  on_demand: 60\n")
    assert load_price_table(y)["p5.48xlarge"]["on_demand"] == 60


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ({"p5.4xlarge": {"spot_price": 2.0}}, r"'p5\.4xlarge': unknown key 'spot_price'; expected one of \['gpus', 'on_demand', 'spot'\]"),
        ({"p5.4xlarge": {"spot": "cheap"}}, r"'p5\.4xlarge'\.spot: expected a number >= 0"),
        ({"p5.4xlarge": {"gpus": 1.5}}, r"gpus: expected an integer >= 0"),
        ({"x1.big": {"spot": 1.0}}, r"'x1\.big': new instance type is missing \['gpus', 'on_demand'\]"),
        ({"p5.4xlarge": 3}, r"'p5\.4xlarge': expected a mapping"),
        ([1, 2], r"expected a mapping of instance type"),
    ],
)
def test_price_override_errors_name_the_key(tmp_path: Path, content: object, match: str) -> None:
    f = tmp_path / "prices.json"
    f.write_text(json.dumps(content))
    with pytest.raises(PriceTableError, match=match):
        load_price_table(f)


def test_price_override_unreadable(tmp_path: Path) -> None:
    with pytest.raises(PriceTableError, match="cannot read"):
        load_price_table(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(PriceTableError, match="cannot parse"):
        load_price_table(bad)


class FakeClock:
    """Stands in for time.monotonic (the clock, not the meter, is faked)."""

    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_cost_meter_accumulates_across_restart() -> None:
    clock = FakeClock()
    price = cost.DEFAULT_PRICES["p5.4xlarge"]["spot"]
    m = CostMeter(4, "p5.4xlarge", "spot", clock=clock)
    clock.t += 1800  # 30 min on 4 GPUs
    assert m.metrics() == pytest.approx(
        {"cost/gpu_hours": 2.0, "cost/usd_estimate": 4 * 0.5 * price, "cost/gpu_hours_lost": 0.0}
    )
    state = m.state_dict()
    state = json.loads(json.dumps(state))  # plain data: survives a checkpoint as JSON

    clock.t += 5000  # preempted: the down time is not counted
    m2 = CostMeter(4, "p5.4xlarge", "spot", state=state, clock=clock)
    clock.t += 1800
    got = m2.metrics()
    assert got["cost/gpu_hours"] == pytest.approx(4.0)
    assert got["cost/usd_estimate"] == pytest.approx(4 * 1.0 * price)
    assert m2.state_dict()["restarts"] == 1


def test_cost_meter_real_clock() -> None:
    m = CostMeter(8, "p5.48xlarge", "on_demand")
    time.sleep(0.05)
    got = m.metrics()
    assert 0 < got["cost/gpu_hours"] < 8 * 1.0 / 3600
    assert got["cost/usd_estimate"] > 0


def test_cost_errors_are_user_facing_and_name_the_flag(tmp_path: Path) -> None:
    with pytest.raises(TrmError, match="--instance-type 'p4d.24xlarge'"):
        estimate_cost(1, 1, "p4d.24xlarge", "spot")
    with pytest.raises(TrmError, match="--prices .*missing.json: cannot read"):
        load_price_table(tmp_path / "missing.json")
    with pytest.raises(TrmError, match="--budget-gpu-hours: a GPU-hour budget needs GPUs"):
        cost.RunLimits(gpu_hours=5, gpus=0)
