"""`trm import --hf` and `trm export`: a reference-layout checkpoint served by a stub hub on 127.0.0.1
(tests/hub_stub.py) goes through huggingface_hub and the real importer; an export loads back equal."""
from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import torch
import yaml

from tests.hub_stub import StubHub
from tests.test_official import all_config, reference_state_dict
from trm.cli import main
from trm.hub import load_export
from trm.train.loop import load_for_eval

REPO = "someone/trm-sudoku"


def _reference_files(data_path: str, **arch_kw) -> dict[str, bytes]:
    """A hub repo in the reference's layout: checkpoints/PROJECT/RUN/{step_N, all_config.yaml}."""
    a = all_config(data_path, puzzle_emb_ndim=32, puzzle_emb_len=1, **arch_kw)
    buf = io.BytesIO()
    torch.save(reference_state_dict(a["arch"], num_ids=1), buf)
    return {"checkpoints/sudoku/run/step_1234": buf.getvalue(),
            "checkpoints/sudoku/run/all_config.yaml": yaml.dump(a).encode(), "README.md": b"# a TRM\n"}


@pytest.fixture
def hub(tmp_path, monkeypatch):
    with StubHub() as h:
        for k, v in {"HF_ENDPOINT": h.url, "HF_HOME": tmp_path / "hf", "HF_HUB_DISABLE_PROGRESS_BARS": "1"}.items():
            monkeypatch.setenv(k, str(v))
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        monkeypatch.delenv("HF_HUB_CACHE", raising=False)
        yield h


def _error(capsys) -> str:
    lines = [ln for ln in capsys.readouterr().err.splitlines() if "error:" in ln]
    assert len(lines) == 1, lines
    return lines[0]


def test_import_hf_reference_layout(hub, tmp_path, sudoku_data, capsys, monkeypatch):
    commit = hub.add_repo("models", REPO, _reference_files(sudoku_data))
    out = tmp_path / "runs" / "from-hub"
    assert main(["import", "--hf", REPO, "--out", str(out)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["hub"] == f"{REPO}@{commit}" and summary["file"] == "checkpoints/sudoku/run/step_1234"
    assert (summary["step"], summary["seq_len"]) == (1234, 81)
    model, _, _ = load_for_eval(out / "checkpoints" / "step_000001234")
    w = reference_state_dict(all_config(sudoku_data, puzzle_emb_ndim=32, puzzle_emb_len=1)["arch"], num_ids=1)
    assert torch.equal(model.lm_head.weight, w["_orig_mod.model.inner.lm_head.weight"])

    # a pinned revision and an explicit file; then offline, from the cache alone
    assert main(["import", "--hf", f"{REPO}@{commit}", "--file", "checkpoints/sudoku/run/step_1234",
                 "--out", str(tmp_path / "runs" / "pinned")]) == 0
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hub.requests.clear()
    assert main(["import", "--hf", REPO, "--out", str(tmp_path / "runs" / "offline")]) == 0
    assert hub.requests == []
    m2, _, _ = load_for_eval(tmp_path / "runs" / "offline" / "checkpoints" / "step_000001234")
    assert torch.equal(m2.lm_head.weight, model.lm_head.weight)


@pytest.mark.parametrize("files, message", [
    ({"README.md": b"# nothing here\n"}, "no checkpoint (expected the reference's layout"),
    ({"run/step_10": b"x"}, "no all_config.yaml beside run/step_10"),
    ({"a.pt": b"x", "b.pt": b"y", "all_config.yaml": b"{}"}, "several checkpoints"),
])
def test_repo_without_the_expected_files(hub, tmp_path, capsys, files, message):
    hub.add_repo("models", REPO, files)
    assert main(["import", "--hf", REPO, "--out", str(tmp_path / "x")]) == 2
    assert message in _error(capsys)
    assert not (tmp_path / "x").exists()


def test_architecture_we_cannot_map_is_refused(hub, tmp_path, sudoku_data, capsys):
    files = _reference_files(sudoku_data)
    a = yaml.safe_load(files["checkpoints/sudoku/run/all_config.yaml"])
    a["arch"]["name"] = "hrm.hrm_act_v1@HierarchicalReasoningModel_ACTV1"
    files["checkpoints/sudoku/run/all_config.yaml"] = yaml.dump(a).encode()
    hub.add_repo("models", REPO, files)
    assert main(["import", "--hf", REPO, "--out", str(tmp_path / "x")]) == 2
    line = _error(capsys)
    assert "arch.name" in line and "HierarchicalReasoningModel_ACTV1" in line
    assert not (tmp_path / "x").exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".x")]


def test_unknown_repo_and_bad_spec(hub, tmp_path, capsys):
    assert main(["import", "--hf", "nobody/nothing", "--out", str(tmp_path / "x")]) == 2
    assert "nobody/nothing: not found" in _error(capsys)
    assert main(["import", "--hf", "not-a-repo", "--out", str(tmp_path / "x")]) == 2
    assert "expected OWNER/NAME" in _error(capsys)
    assert not (tmp_path / "x").exists()


def test_export_out_loads_back_equal(tmp_path, sudoku_data, capsys):
    ref = tmp_path / "ref"
    ref.mkdir()
    files = _reference_files(sudoku_data, mlp_t=True)
    for name in ("step_1234", "all_config.yaml"):
        (ref / name).write_bytes(files[f"checkpoints/sudoku/run/{name}"])
    run = tmp_path / "runs" / "r"
    assert main(["import", "--checkpoint", str(ref / "step_1234"), "--out", str(run)]) == 0
    capsys.readouterr()
    out = tmp_path / "export"
    assert main(["export", "--checkpoint", str(run), "--out", str(out)]) == 0
    assert sorted(json.loads(capsys.readouterr().out)["files"]) == ["README.md", "config.yaml", "meta.json",
                                                                     "model.safetensors"]
    want, cfg, _ = load_for_eval(run / "checkpoints" / "step_000001234")
    got, got_cfg = load_export(out)
    assert got_cfg.to_dict() == cfg.to_dict()
    a, b = want.state_dict(), got.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    card = (out / "README.md").read_text()
    assert "library_name: trm" in card and "| n (L_cycles) | 3 |" in card and "step 1234" in card
    assert sudoku_data in card and "name sudoku" in card

    assert main(["export", "--checkpoint", str(run), "--out", str(out)]) == 2  # never over an existing folder
    assert "already exists" in _error(capsys)
    assert main(["export", "--checkpoint", str(run)]) == 2
    assert "--out DIR or --hf" in _error(capsys)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".export")]
    with pytest.raises(Exception, match="no model.safetensors"):
        load_export(Path(run))
