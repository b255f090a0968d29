"""trm.cloud: cost math, price overrides, CostMeter, and storage against a real S3 endpoint."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import pytest

from tests.s3_server import S3Server, enforce_auth, free_port, s3_server  # noqa: F401
from trm import cloud
from trm.cloud import (
    CostMeter,
    PriceTableError,
    StorageError,
    check_storage,
    download_dir,
    estimate_cost,
    gpu_hours,
    load_price_table,
    upload_dir,
)

# --- cost model -------------------------------------------------------------


def test_gpu_hours() -> None:
    assert gpu_hours(4, 72 * 3600) == 288.0
    assert gpu_hours(1, 1800) == 0.5


def test_paper_arc_run_on_p5_4xlarge_spot() -> None:
    price = cloud.DEFAULT_PRICES["p5.4xlarge"]["spot"]
    # 4 single-GPU instances for 72 h = 288 instance-hours = 288 GPU-hours.
    assert estimate_cost(4, 72, "p5.4xlarge", "spot") == pytest.approx(288 * price)
    assert estimate_cost(4, 72, "p5.4xlarge", "on-demand") == pytest.approx(
        288 * cloud.DEFAULT_PRICES["p5.4xlarge"]["on_demand"]
    )


def test_partial_big_instance_bills_whole_instance() -> None:
    p = cloud.DEFAULT_PRICES["p5.48xlarge"]["spot"]
    assert estimate_cost(4, 10, "p5.48xlarge", "spot") == pytest.approx(10 * p)  # 4 of 8 GPUs
    assert estimate_cost(9, 10, "p5.48xlarge", "spot") == pytest.approx(20 * p)  # two nodes


def test_unknown_instance_and_market() -> None:
    with pytest.raises(KeyError, match="p4d.24xlarge"):
        estimate_cost(1, 1, "p4d.24xlarge", "spot")
    with pytest.raises(ValueError, match="market"):
        estimate_cost(1, 1, "p5.4xlarge", "reserved")


def test_paper_arc_run_cost_prints(capsys: pytest.CaptureFixture[str]) -> None:
    rows = cloud.paper_arc_run_cost()
    out = capsys.readouterr().out
    assert "288 GPU-hours" in out
    assert rows["p5.4xlarge spot"] < rows["p5.4xlarge on_demand"]


def test_price_override_json_and_yaml(tmp_path: Path) -> None:
    j = tmp_path / "prices.json"
    j.write_text(json.dumps({"p5.4xlarge": {"spot": 3.0}, "g6e.xlarge": {"gpus": 1, "on_demand": 1.86, "spot": 0.7}}))
    table = load_price_table(j)
    assert table["p5.4xlarge"] == {"gpus": 1, "on_demand": 6.88, "spot": 3.0}
    assert estimate_cost(2, 1, "g6e.xlarge", "spot", table) == pytest.approx(1.4)
    assert cloud.DEFAULT_PRICES["p5.4xlarge"]["spot"] != 3.0  # defaults untouched
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
    price = cloud.DEFAULT_PRICES["p5.4xlarge"]["spot"]
    m = CostMeter(4, "p5.4xlarge", "spot", clock=clock)
    clock.t += 1800  # 30 min on 4 GPUs
    assert m.metrics() == pytest.approx({"cost/gpu_hours": 2.0, "cost/usd_estimate": 4 * 0.5 * price})
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


# --- storage: local ---------------------------------------------------------


def test_check_storage_local(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b"
    check_storage(str(target))
    assert target.is_dir() and list(target.iterdir()) == []
    check_storage(f"file://{target}")


def test_check_storage_local_not_writable(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(StorageError, match="not writable"):
        check_storage(str(blocker / "sub"))


def test_check_storage_bad_scheme() -> None:
    with pytest.raises(StorageError, match="unsupported scheme"):
        check_storage("gs://bucket/x")


# --- storage: S3 through a real moto server ---------------------------------


def test_check_storage_s3_ok(s3_server: S3Server) -> None:
    check_storage(f"s3://{s3_server.bucket}/trm/runs")
    check_storage(f"s3://{s3_server.bucket}")
    # The probe object is removed again.
    assert s3_server.client().list_objects_v2(Bucket=s3_server.bucket, Prefix="trm/").get("KeyCount") == 0


def test_check_storage_s3_missing_bucket(s3_server: S3Server) -> None:
    with pytest.raises(StorageError, match="bucket 'no-such-bucket' does not exist"):
        check_storage("s3://no-such-bucket/trm")


def test_check_storage_s3_wrong_credentials(s3_server: S3Server) -> None:
    # moto accepts any key unless told to enforce auth; then unknown keys are
    # rejected exactly like AWS does (InvalidAccessKeyId, HTTP 403).
    with enforce_auth(s3_server), pytest.raises(StorageError, match="credentials were rejected"):
        check_storage(f"s3://{s3_server.bucket}/trm")
    check_storage(f"s3://{s3_server.bucket}/trm")  # auth back off


def test_check_storage_s3_dead_endpoint(monkeypatch: pytest.MonkeyPatch) -> None:
    port = free_port()  # nothing listens here
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    t0 = time.monotonic()
    with pytest.raises(StorageError, match="does not answer"):
        check_storage("s3://bucket/trm", timeout_s=1.0)
    assert time.monotonic() - t0 < 10


def test_check_storage_s3_hanging_endpoint(monkeypatch: pytest.MonkeyPatch) -> None:
    # Accepts TCP connections (kernel backlog) but never answers a request.
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen(16)
        monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{srv.getsockname()[1]}")
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
        t0 = time.monotonic()
        with pytest.raises(StorageError, match="does not answer"):
            check_storage("s3://bucket/trm", timeout_s=1.0)
        assert time.monotonic() - t0 < 10


def _make_dataset(root: Path, version: str) -> Path:
    (root / "train").mkdir(parents=True)
    (root / "train" / "inputs.bin").write_bytes(b"\x01\x02" * 1000)
    (root / "test.bin").write_bytes(b"\x03" * 10)
    (root / "meta.json").write_text(json.dumps({"version": version}))
    return root


def test_upload_download_round_trip(s3_server: S3Server, tmp_path: Path) -> None:
    src = _make_dataset(tmp_path / "src", "v1")
    uri = f"s3://{s3_server.bucket}/trm/data/sudoku"
    assert upload_dir(src, uri) is True
    assert upload_dir(src, uri) is False  # same meta.json: uploaded once

    cache = tmp_path / "cache"
    dest = download_dir(uri, cache_dir=cache)
    assert dest == (cache / s3_server.bucket / "trm/data/sudoku").resolve()
    for f in ("train/inputs.bin", "test.bin", "meta.json"):
        assert (dest / f).read_bytes() == (src / f).read_bytes()

    # Cached: a second call does not download (a local marker survives).
    (dest / "local-marker").write_text("x")
    assert download_dir(uri, cache_dir=cache) == dest
    assert (dest / "local-marker").exists()

    # New meta.json upstream: the cache is replaced as a whole.
    (src / "meta.json").write_text(json.dumps({"version": "v2"}))
    (src / "test.bin").write_bytes(b"\x04" * 10)
    assert upload_dir(src, uri) is True
    dest2 = download_dir(uri, cache_dir=cache)
    assert dest2 == dest and not (dest / "local-marker").exists()
    assert (dest / "test.bin").read_bytes() == b"\x04" * 10
    assert [p.name for p in dest.parent.iterdir() if p.name.startswith(".sudoku.tmp")] == []

    # Explicit local_dir, and a local "uri" is returned as is.
    other = download_dir(uri, local_dir=tmp_path / "explicit")
    assert json.loads((other / "meta.json").read_text()) == {"version": "v2"}
    assert download_dir(str(src)) == src.resolve()


def test_download_missing_prefix(s3_server: S3Server, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        download_dir(f"s3://{s3_server.bucket}/nothing/here", cache_dir=tmp_path)
