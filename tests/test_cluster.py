"""cluster/gpu.yaml: valid for Ray's cluster launcher and for EC2 RunInstances, offline."""

from __future__ import annotations

import copy
import re
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

CLUSTER_YAML = Path(__file__).resolve().parents[1] / "cluster" / "gpu.yaml"
GPU_TYPES = {"h100x1_spot": ("p5.4xlarge", 1), "h100x8_spot": ("p5.48xlarge", 8)}


@pytest.fixture(scope="module")
def raw() -> dict[str, Any]:
    return yaml.safe_load(CLUSTER_YAML.read_text())


@pytest.fixture(scope="module")
def prepared(raw: dict[str, Any]) -> dict[str, Any]:
    from ray.autoscaler._private.util import prepare_config, validate_config

    cfg = prepare_config(copy.deepcopy(raw))
    validate_config(cfg)
    return cfg


def test_ray_prepare_and_validate(prepared: dict[str, Any]) -> None:
    assert prepared["provider"]["type"] == "aws"
    assert prepared["provider"]["cache_stopped_nodes"] is False
    assert prepared["head_node_type"] in prepared["available_node_types"]
    assert prepared["idle_timeout_minutes"] > 0


def test_ray_schema_rejects_a_broken_copy(raw: dict[str, Any]) -> None:
    # Guards against a validator that accepts anything.
    import jsonschema
    from ray.autoscaler._private.util import prepare_config, validate_config

    bad = copy.deepcopy(raw)
    bad["available_node_types"]["h100x1_spot"]["max_wrkers"] = 3
    with pytest.raises(jsonschema.ValidationError):
        validate_config(prepare_config(bad))


def test_node_types_and_resources(prepared: dict[str, Any]) -> None:
    types = prepared["available_node_types"]
    head = types[prepared["head_node_type"]]
    # Trial drivers ask for {"cpu": 0, "TRAIN_DRIVER": 0.01}: only the head has it.
    assert head["resources"].get("TRAIN_DRIVER", 0) >= 1
    assert "InstanceMarketOptions" not in head["node_config"]  # head stays on-demand
    for name, (itype, gpus) in GPU_TYPES.items():
        nt = types[name]
        assert nt["node_config"]["InstanceType"] == itype
        assert nt["resources"]["GPU"] == gpus
        assert nt["min_workers"] == 0 and nt["max_workers"] >= 1
        assert "TRAIN_DRIVER" not in nt["resources"]
    assert prepared["max_workers"] >= sum(t.get("max_workers", 0) for n, t in types.items() if n in GPU_TYPES)


def test_gpu_workers_are_spot(prepared: dict[str, Any]) -> None:
    for name in GPU_TYPES:
        mo = prepared["available_node_types"][name]["node_config"]["InstanceMarketOptions"]
        assert mo["MarketType"] == "spot"
        assert mo["SpotOptions"] == {"SpotInstanceType": "one-time", "InstanceInterruptionBehavior": "terminate"}


def _run_instances_params(node_config: dict[str, Any]) -> dict[str, Any]:
    """Mirror what Ray's AWSNodeProvider._create_node passes to create_instances."""
    conf = copy.deepcopy(node_config)
    subnets = conf.pop("SubnetIds", ["subnet-0123456789abcdef0"])  # Ray resolves SubnetIds -> SubnetId
    conf.setdefault("ImageId", "ami-0123456789abcdef0")
    conf.setdefault("KeyName", "ray-autoscaler_us-east-1")  # Ray fills this in
    conf.update(
        MinCount=1,
        MaxCount=2,
        SubnetId=subnets[0],
        TagSpecifications=[{"ResourceType": "instance", "Tags": [{"Key": "ray-cluster-name", "Value": "trm-gpu"}]}],
    )
    return conf


@pytest.fixture(scope="module")
def run_instances_shape() -> Any:
    import botocore.session

    model = botocore.session.get_session().get_service_model("ec2")
    return model.operation_model("RunInstances").input_shape


def _validate(params: dict[str, Any], shape: Any) -> str:
    from botocore.validate import ParamValidator

    report = ParamValidator().validate(params, shape)
    return report.generate_report() if report.has_errors() else ""


@pytest.mark.parametrize("node_type", ["head", *GPU_TYPES])
def test_node_config_valid_for_run_instances(prepared: dict[str, Any], run_instances_shape: Any, node_type: str) -> None:
    node_config = prepared["available_node_types"][node_type]["node_config"]
    assert _validate(_run_instances_params(node_config), run_instances_shape) == ""
    assert node_config["IamInstanceProfile"]["Arn"].startswith("arn:aws:iam::")
    assert node_config["SecurityGroupIds"]


def test_param_validator_catches_typos(prepared: dict[str, Any], run_instances_shape: Any) -> None:
    nc = copy.deepcopy(prepared["available_node_types"]["h100x1_spot"]["node_config"])
    nc["InstanceMarketOptions"]["SpotOptions"]["InterruptionBehavior"] = "terminate"
    assert "InterruptionBehavior" in _validate(_run_instances_params(nc), run_instances_shape)


def test_no_credentials_in_file() -> None:
    text = CLUSTER_YAML.read_text()
    lowered = text.lower()
    for needle in ("aws_access_key", "aws_secret", "secret_access_key", "aws_session_token"):
        assert needle not in lowered, needle
    assert not re.search(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b", text), "AWS access key id in file"
    # 40-char base64-ish run: the shape of a secret access key.
    assert not re.search(r"(?<![A-Za-z0-9/+=])[A-Za-z0-9/+=]{40}(?![A-Za-z0-9/+=])", text)


# --- mlflow/serve.sh (cheap checks; starting the server takes 10-15 s) -----

REPO = CLUSTER_YAML.parents[1]
SERVE = REPO / "mlflow" / "serve.sh"


def test_mlflow_folder_does_not_shadow_package() -> None:
    import subprocess
    import sys

    assert not (REPO / "mlflow" / "__init__.py").exists()
    out = subprocess.run(
        [sys.executable, "-c", "import mlflow; print(mlflow.__file__)"],
        cwd=REPO, capture_output=True, text=True, check=True,
    ).stdout
    assert "site-packages" in out or "dist-packages" in out, out


def test_serve_sh_parses_flags() -> None:
    import os
    import subprocess

    assert os.access(SERVE, os.X_OK)
    subprocess.run(["bash", "-n", str(SERVE)], check=True)
    helped = subprocess.run([str(SERVE), "--help"], capture_output=True, text=True)
    assert helped.returncode == 0 and "--backend-store-uri" in helped.stdout
    for bad in (["--bogus"], ["--port"]):
        r = subprocess.run([str(SERVE), *bad], capture_output=True, text=True)
        assert r.returncode == 2 and "serve.sh:" in r.stderr
    text = SERVE.read_text()
    for needle in ("--serve-artifacts", "--workers 1", "MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false",
                   "sqlite:///mlflow.db", "./mlartifacts", "127.0.0.1", "5000"):
        assert needle in text, needle


def test_security_group_not_open_to_world() -> None:
    text = CLUSTER_YAML.read_text()
    assert "0.0.0.0/0" not in text and "::/0" not in text
    assert "--dashboard-host=0.0.0.0" not in text


def test_preflight_names_another_ray_instance_on_the_host(tmp_path):
    """A second local Ray on one host left a sweep waiting for workers for minutes without a word: the
    raylets already running are named before a new instance starts."""
    import shutil
    import subprocess

    from trm.launch.cluster import other_ray_instances

    raylet = tmp_path / "raylet"  # a process of that name, as `ray start` leaves one
    shutil.copy("/bin/sleep", raylet)
    proc = subprocess.Popen([str(raylet), "60"])
    try:
        deadline = time.time() + 10
        while f"raylet pid {proc.pid} " not in other_ray_instances() and time.time() < deadline:
            time.sleep(0.1)
        assert f"raylet pid {proc.pid} since " in other_ray_instances()
    finally:
        proc.kill()
        proc.wait()
    assert f"raylet pid {proc.pid} " not in other_ray_instances()
