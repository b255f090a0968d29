"""`trm data download`: the real fetch, verify, cache and build code against a hub and a GitHub host
on 127.0.0.1 (tests/hub_stub.py), with a test registry (TRM_SOURCES) of small generated files in
the real formats: HRM's Sudoku and maze CSVs, Kaggle-combined ARC JSON."""
from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from tests.hub_stub import StubHub
from trm.cli import main
from trm.data import arc, maze, sudoku
from trm.data.download import build_argv
from trm.data.sources import BUILTIN

SHA = {}


def _sudoku_csv(n: int, seed: int) -> bytes:
    p, s, r = sudoku.generate(n, seed, 26, 34)
    rows = ["source,question,answer,rating"]
    for q, a, rating in zip(p, s, r):
        rows.append("gen," + "".join("." if v == 0 else str(v) for v in q.ravel()) + ","
                    + "".join(map(str, a.ravel())) + f",{int(rating)}")
    return ("\n".join(rows) + "\n").encode()


def _maze_csv(n: int, seed: int) -> bytes:
    q, a, _ = maze.generate(n, seed)
    rows = ["source,question,answer,rating"] + [f"gen,{maze.to_text(x)},{maze.to_text(y)},0" for x, y in zip(q, a)]
    return ("\n".join(rows) + "\n").encode()


def _arc_files(rng: np.random.Generator) -> dict[str, bytes]:
    out = {}
    for subset, n in (("training", 3), ("evaluation", 2), ("concept", 2)):
        challenges, solutions = {}, {}
        for t in range(n):
            def pair():
                g = rng.integers(0, 10, size=(int(rng.integers(2, 5)), int(rng.integers(2, 5)))).tolist()
                return {"input": g, "output": [row[::-1] for row in g]}
            test = pair()
            challenges[f"{subset[:2]}{t:06x}"] = {"train": [pair(), pair()], "test": [{"input": test["input"]}]}
            solutions[f"{subset[:2]}{t:06x}"] = [test["output"]]
        out[f"kaggle/combined/arc-agi_{subset}_challenges.json"] = json.dumps(challenges).encode()
        out[f"kaggle/combined/arc-agi_{subset}_solutions.json"] = json.dumps(solutions).encode()
    return out


@pytest.fixture(scope="module")
def files() -> dict[str, dict[str, bytes]]:
    return {"sudoku": {"train.csv": _sudoku_csv(30, 1), "test.csv": _sudoku_csv(8, 2)},
            "maze": {"train.csv": _maze_csv(4, 3), "test.csv": _maze_csv(2, 4)},
            "arc": _arc_files(np.random.default_rng(5))}


def _entry(host: str, repo: str, served: dict[str, bytes], builder: str, args: list[str], pinned: bool = True):
    return {"host": host, "repo": repo, "builder": builder, "build_args": args,
            "files": [{"path": p, "sha256": hashlib.sha256(b).hexdigest() if pinned else None,
                       "size": len(b) if pinned else None} for p, b in served.items()]}


@pytest.fixture
def hub(tmp_path, monkeypatch, files):
    """The stub hosts serving the test files, the environment pointing at them, a test registry."""
    with StubHub() as h:
        h.add_repo("datasets", "test/sudoku", files["sudoku"])
        h.add_repo("datasets", "test/maze", files["maze"])
        h.github.update({f"owner/arc/main/{p}": b for p, b in files["arc"].items()})
        sudoku_args = ["--csv-train", "{train.csv}", "--csv-test", "{test.csv}", "--subsample", "20",
                       "--augmentations", "3"]
        reg = {"t-sudoku": _entry("hub", "test/sudoku", files["sudoku"], "sudoku", sudoku_args),
               "t-sudoku-unpinned": _entry("hub", "test/sudoku", files["sudoku"], "sudoku", sudoku_args, False),
               "t-maze": _entry("hub", "test/maze", files["maze"], "maze", ["--csv", "{dir}", "--augmentations", "0"]),
               "t-arc": _entry("github", "owner/arc", files["arc"], "arc",
                               ["--src", "{dir}", "--subsets", "training", "evaluation", "concept", "--test-set",
                                "evaluation", "--augmentations", "2"]),
               "t-missing": _entry("hub", "test/maze", {"valid.csv": b"x"}, "maze", ["--csv", "{dir}"])}
        (tmp_path / "sources.json").write_text(json.dumps(reg))
        for k, v in {"TRM_SOURCES": tmp_path / "sources.json", "HF_ENDPOINT": h.url, "HF_HOME": tmp_path / "hf",
                     "TRM_GITHUB_BASE": f"{h.url}/gh", "TRM_CACHE": tmp_path / "cache",
                     "HF_HUB_DISABLE_PROGRESS_BARS": "1"}.items():
            monkeypatch.setenv(k, str(v))
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        monkeypatch.delenv("HF_HUB_CACHE", raising=False)
        yield h


def _arrays(folder: Path) -> dict[str, np.ndarray]:
    return {str(p.relative_to(folder)): np.load(p) for p in sorted(folder.rglob("*.npy"))}


def _error(capsys) -> str:
    lines = [ln for ln in capsys.readouterr().err.splitlines() if "error:" in ln]
    assert len(lines) == 1, lines
    return lines[0]


def _cache_files(tmp_path: Path) -> list[str]:
    """Complete-looking files in both caches (no .part/.incomplete/.lock, no records)."""
    return sorted(str(p) for root in (tmp_path / "cache", tmp_path / "hf") if root.exists() for p in root.rglob("*")
                  if p.is_file() and not p.name.endswith((".part", ".incomplete", ".lock", "checksums.json"))
                  and "/refs/" not in str(p))


# ---------------------------------------------------------------- builds
def test_sudoku_download_is_what_trm_data_sudoku_builds(hub, tmp_path):
    assert main(["data", "download", "t-sudoku", "--out", str(tmp_path / "dl")]) == 0
    snap = next((tmp_path / "hf").rglob("snapshots/*/train.csv"))
    assert main(["data", "sudoku", "--out", str(tmp_path / "by-hand"), "--csv-train", str(snap), "--csv-test",
                 str(snap.parent / "test.csv"), "--subsample", "20", "--augmentations", "3"]) == 0
    got, want = _arrays(tmp_path / "dl"), _arrays(tmp_path / "by-hand")
    assert got.keys() == want.keys() and len(got) >= 8
    for k in got:
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)
    meta = json.loads((tmp_path / "dl" / "meta.json").read_text())
    assert meta == json.loads((tmp_path / "by-hand" / "meta.json").read_text())
    assert meta["splits"] == {"train": 20 * 4, "test": 8} and meta["subsample"] == 20


def test_maze_and_arc_downloads_build(hub, tmp_path):
    assert main(["data", "download", "t-maze", "--out", str(tmp_path / "maze")]) == 0
    assert json.loads((tmp_path / "maze" / "meta.json").read_text())["splits"] == {"train": 4, "test": 2}
    assert main(["data", "download", "t-arc", "--out", str(tmp_path / "arc")]) == 0
    src = tmp_path / "cache" / "github" / "owner" / "arc" / "main" / "kaggle" / "combined"
    assert main(["data", "arc", "--src", str(src), "--subsets", "training", "evaluation", "concept", "--test-set",
                 "evaluation", "--augmentations", "2", "--out", str(tmp_path / "arc-by-hand")]) == 0
    got, want = _arrays(tmp_path / "arc"), _arrays(tmp_path / "arc-by-hand")
    assert got.keys() == want.keys()
    for k in got:
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)
    meta = json.loads((tmp_path / "arc" / "meta.json").read_text())
    assert meta == json.loads((tmp_path / "arc-by-hand" / "meta.json").read_text())
    assert meta["test_sets"] == ["evaluation"] and meta["subsets"] == ["concept", "evaluation", "training"]


def test_builtin_entries_are_valid_trm_data_commands():
    """Every built-in entry's flags parse with its builder's own parser (what `build` runs)."""
    for src in BUILTIN.values():
        files = {f.path: Path("/cache/snap") / Path(f.path).name for f in src.files}
        parser = argparse.ArgumentParser()
        {"sudoku": sudoku, "maze": maze, "arc": arc}[src.builder].add_args(parser)
        a = parser.parse_args(build_argv(src, files, "/data/x"))
        assert a.out == "/data/x"
    assert "--subsample" in BUILTIN["sudoku-extreme-1k"].build_args
    assert "--subsample" not in BUILTIN["sudoku-extreme"].build_args


# ---------------------------------------------------------------- interrupted downloads
def test_hub_download_dropped_mid_file_is_resumed(hub, tmp_path, files):
    hub.drop_once.add("/datasets/test/sudoku/resolve/main/train.csv")
    assert main(["data", "download", "t-sudoku", "--out", str(tmp_path / "dl")]) == 0
    # huggingface_hub retried (it resumes with a Range from its last whole 10 MB chunk: here from 0)
    assert [m for m, p, _ in hub.requests if p.endswith("/train.csv")] == ["HEAD", "GET", "GET"]
    assert next((tmp_path / "hf").rglob("snapshots/*/train.csv")).read_bytes() == files["sudoku"]["train.csv"]


def test_github_download_dropped_mid_file_is_resumed(hub, tmp_path, files):
    name = "kaggle/combined/arc-agi_training_challenges.json"
    hub.drop_once.add(name)
    assert main(["data", "download", "t-arc", "--out", str(tmp_path / "arc")]) == 0
    ranges = [r for m, p, r in hub.requests if m == "GET" and p.endswith(name) and r]
    assert len(ranges) == 1 and ranges[0] == f"bytes={len(files['arc'][name]) // 2}-"
    assert (tmp_path / "cache" / "github" / "owner" / "arc" / "main" / name).read_bytes() == files["arc"][name]


def test_truncated_download_leaves_only_a_part_file_and_resumes_next_run(hub, tmp_path, files, capsys):
    name = "kaggle/combined/arc-agi_evaluation_challenges.json"
    hub.drop_always.add(name)
    assert main(["data", "download", "t-arc", "--out", str(tmp_path / "arc")]) == 2
    line = _error(capsys)
    assert "download interrupted" in line and "run the command again to resume" in line
    dest = tmp_path / "cache" / "github" / "owner" / "arc" / "main" / name
    assert not dest.exists() and dest.with_name(dest.name + ".part").is_file()
    assert not (tmp_path / "arc").exists()
    hub.drop_always.clear()
    hub.requests.clear()
    assert main(["data", "download", "t-arc", "--out", str(tmp_path / "arc")]) == 0
    ranges = [r for m, p, r in hub.requests if m == "GET" and p.endswith(name)]
    assert ranges[0] is not None and ranges[0] != "bytes=0-"  # from the .part, not from the start
    assert dest.read_bytes() == files["arc"][name]


# ---------------------------------------------------------------- verification
def test_hub_checksum_mismatch_is_refused_and_nothing_kept(hub, tmp_path, capsys):
    served = hub.repos[("datasets", "test/sudoku")]["files"]
    served["test.csv"] = bytes([served["test.csv"][0] ^ 1]) + served["test.csv"][1:]  # one byte flipped
    assert main(["data", "download", "t-sudoku", "--out", str(tmp_path / "dl")]) == 2
    line = _error(capsys)
    assert "checksum mismatch" in line and "test.csv" in line and "registry" in line
    assert not (tmp_path / "dl").exists()
    assert not list((tmp_path / "hf").rglob("snapshots/*/test.csv"))
    blobs = [Path(p).read_bytes() for p in _cache_files(tmp_path) if "/blobs/" in p]
    assert served["test.csv"] not in blobs  # the bad copy is gone from the cache


def test_github_checksum_mismatch_is_refused_and_nothing_kept(hub, tmp_path, capsys):
    key = "owner/arc/main/kaggle/combined/arc-agi_concept_solutions.json"
    hub.github[key] = hub.github[key].replace(b"[", b" ", 1)  # same size, one byte different
    assert main(["data", "download", "t-arc", "--out", str(tmp_path / "arc")]) == 2
    assert "checksum mismatch" in _error(capsys)
    assert not (tmp_path / "arc").exists()
    assert not any("concept_solutions" in p for p in _cache_files(tmp_path))
    assert not list((tmp_path / "cache").rglob("*.part"))


def test_unpinned_files_are_recorded_on_first_fetch_then_verified(hub, tmp_path, capsys, files):
    assert main(["data", "download", "t-sudoku-unpinned", "--out", str(tmp_path / "a")]) == 0
    rec = json.loads((tmp_path / "cache" / "checksums.json").read_text())
    key = "hub:test/sudoku@main/train.csv"
    assert rec[key]["sha256"] == hashlib.sha256(files["sudoku"]["train.csv"]).hexdigest()
    assert rec[key]["commit"] == hub.repos[("datasets", "test/sudoku")]["commit"]
    # the branch moves to different bytes: the recorded value refuses them
    served = dict(files["sudoku"], **{"train.csv": files["sudoku"]["train.csv"] + b"gen," + b"1" * 3 + b"\n"})
    hub.add_repo("datasets", "test/sudoku", served)
    assert main(["data", "download", "t-sudoku-unpinned", "--out", str(tmp_path / "b")]) == 2
    line = _error(capsys)
    assert "size mismatch" in line and "recorded at the first fetch" in line
    assert not (tmp_path / "b").exists()


# ---------------------------------------------------------------- offline, errors
def test_offline_after_first_fetch_uses_the_cache(hub, tmp_path, monkeypatch):
    assert main(["data", "download", "t-sudoku", "--out", str(tmp_path / "a")]) == 0
    assert main(["data", "download", "t-arc", "--out", str(tmp_path / "arc-a")]) == 0
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hub.requests.clear()
    assert main(["data", "download", "t-sudoku", "--out", str(tmp_path / "b")]) == 0
    assert main(["data", "download", "t-arc", "--out", str(tmp_path / "arc-b")]) == 0
    assert hub.requests == []
    for k, v in _arrays(tmp_path / "a").items():
        np.testing.assert_array_equal(v, _arrays(tmp_path / "b")[k])


def test_offline_without_a_cached_copy_says_so(hub, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for name in ("t-maze", "t-arc"):
        assert main(["data", "download", name, "--out", str(tmp_path / name)]) == 2
        line = _error(capsys)
        assert "HF_HUB_OFFLINE" in line and "not in the cache" in line
    assert hub.requests == []


def test_no_network_names_the_url(hub, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TRM_GITHUB_BASE", "http://127.0.0.1:9/gh")  # nothing listens on port 9
    assert main(["data", "download", "t-arc", "--out", str(tmp_path / "arc")]) == 2
    line = _error(capsys)
    assert "http://127.0.0.1:9/gh/owner/arc/main/kaggle/combined/" in line and "HF_HUB_OFFLINE=1" in line
    assert _cache_files(tmp_path) == [] and not (tmp_path / "arc").exists()


def test_unknown_name_lists_the_known_ones(hub, tmp_path, capsys):
    assert main(["data", "download", "sudoku-extremely", "--out", str(tmp_path / "x")]) == 2
    line = _error(capsys)
    for name in ("sudoku-extreme", "sudoku-extreme-1k", "maze-hard", "arc-agi-1", "arc-agi-2", "t-arc"):
        assert name in line
    assert main(["data", "download", "--list"]) == 0
    assert "sapientinc/sudoku-extreme" in capsys.readouterr().out


def test_repo_without_the_expected_file(hub, tmp_path, capsys):
    assert main(["data", "download", "t-missing", "--out", str(tmp_path / "x")]) == 2
    line = _error(capsys)
    assert "has no file 'valid.csv'" in line and "test/maze" in line
    assert not (tmp_path / "x").exists()


def test_existing_out_is_refused_before_fetching(hub, tmp_path, capsys):
    (tmp_path / "x").mkdir()
    assert main(["data", "download", "t-maze", "--out", str(tmp_path / "x")]) == 2
    assert "already exists" in _error(capsys) and hub.requests == []
