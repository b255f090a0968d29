"""Published weights on the Hugging Face hub: `trm import --hf` and `trm export`.

    trm import --hf OWNER/NAME[@REVISION] [--file PATH] --out RUN    a reference-layout checkpoint
        (step_N beside its all_config.yaml, as the reference's pretrain.py writes them) fetched through
        huggingface_hub's cache, then imported by `trm.official.import_checkpoint` (this module knows
        the hub; official.py knows the reference's names)
    trm export --checkpoint RUN --out DIR | --hf OWNER/NAME           a hub-ready folder: model.safetensors
        (the weights `trm eval` uses: EMA when the run kept one), config.yaml, meta.json, README.md (a
        model card with the run's best score, last evaluation and data); uploaded with --hf

HF_ENDPOINT (a mirror), HF_HOME / HF_HUB_CACHE and HF_HUB_OFFLINE apply as for `trm data download`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import uuid
from pathlib import Path

from trm.data import download as dl
from trm.errors import TrmError

CHECKPOINT = re.compile(r"step_(\d+)")
WEIGHT_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin", ".safetensors")
CONFIG = "all_config.yaml"
EXPORT_FILES = ("model.safetensors", "config.yaml", "meta.json", "README.md")


class HubError(TrmError):
    """A hub repo or exported folder that is not what a command expects; names the repo/file."""


def parse_repo(spec: str) -> tuple[str, str | None]:
    """'owner/name@rev' -> ('owner/name', 'rev'); the revision is optional."""
    repo, _, rev = spec.partition("@")
    if not re.fullmatch(r"[\w.-]+/[\w.-]+", repo) or (_ and not rev):
        raise HubError(f"--hf {spec!r}: expected OWNER/NAME or OWNER/NAME@REVISION (a hub model repo)")
    return repo, rev or None


# ---------------------------------------------------------------- import --hf
def repo_files(repo: str, revision: str) -> list[str]:
    """The repo's file paths: listed by the hub, or (HF_HUB_OFFLINE) those of its cached snapshot."""
    from huggingface_hub import HfApi, snapshot_download
    from huggingface_hub import errors as hf_errors

    if dl.offline():
        try:
            root = Path(snapshot_download(repo, revision=revision, cache_dir=dl.hf_cache(), local_files_only=True))
        except (hf_errors.LocalEntryNotFoundError, OSError) as e:
            raise HubError(
                f"hub repo {repo}@{revision}: not in the cache {dl.hf_cache()} and HF_HUB_OFFLINE is set "
                f"(import it once online, or pass --file)"
            ) from e
        return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
    url = f"{dl.hf_endpoint()}/api/models/{repo}/tree/{revision}"
    try:
        return sorted(HfApi(endpoint=dl.hf_endpoint()).list_repo_files(repo, revision=revision))
    except hf_errors.RepositoryNotFoundError as e:
        raise HubError(f"hub repo {repo}: not found at {dl.hf_endpoint()} (or private)") from e
    except hf_errors.RevisionNotFoundError as e:
        raise HubError(f"hub repo {repo}: no revision {revision!r}") from e
    except (OSError, hf_errors.HfHubHTTPError) as e:
        raise dl.network_error(url, e) from e
    except Exception as e:  # httpx's transport errors (the hub client's HTTP library)
        if type(e).__module__.split(".")[0].startswith("httpx"):
            raise dl.network_error(url, e) from e
        raise


def pick_checkpoint(files: list[str], where: str) -> str:
    """The reference's layout: `.../step_N` (the highest N), else a single weights file."""
    steps = [(int(m.group(1)), f) for f in files if (m := CHECKPOINT.fullmatch(Path(f).name))]
    if steps:
        return max(steps)[1]
    weights = [f for f in files if f.endswith(WEIGHT_SUFFIXES)]
    if len(weights) == 1:
        return weights[0]
    if not weights:
        raise HubError(
            f"{where}: no checkpoint (expected the reference's layout, a step_N file beside "
            f"{CONFIG}); found {files[:6]}"
        )
    raise HubError(f"{where}: several checkpoints {weights[:6]}; pick one with --file PATH")


def _as_torch_file(path: Path, tmp: Path) -> Path:
    """A .safetensors state_dict saved as the torch file the importer reads (same names, same tensors)."""
    if path.suffix != ".safetensors":
        return path
    import torch
    from safetensors.torch import load_file

    try:
        state = load_file(path)
    except Exception as e:
        raise HubError(f"{path}: not a readable safetensors file: {e}") from e
    out = tmp / path.stem
    torch.save(state, out)
    return out


def import_from_hub(
    spec: str, out: str | Path, file: str | None = None, config: str | None = None, data: str | Path | None = None
) -> dict:
    """Fetch a reference checkpoint and its all_config.yaml from the hub, import them as run `out`."""
    from trm.official import import_checkpoint

    repo, rev = parse_repo(spec)
    revision = rev or "main"
    if Path(out).exists():  # before any download, as the importer would after it
        raise HubError(f"--out {out}: already exists; expected a new folder")
    where = f"hub repo {repo}@{revision}"
    listing: list[str] = repo_files(repo, revision) if file is None or config is None else []
    file = file or pick_checkpoint(listing, where)
    if config is None:
        beside = (Path(file).parent / CONFIG).as_posix().removeprefix("./")
        config = beside if beside in listing else CONFIG if CONFIG in listing else None
        if config is None:
            raise HubError(
                f"{where}: no {CONFIG} beside {file} (the reference writes its hydra config there); "
                f"pass --config PATH_IN_REPO"
            )
    try:
        ckpt = dl.hub_download(repo, file, revision, repo_type="model")
        cfg = dl.hub_download(repo, config, revision, repo_type="model")
    except dl.DownloadError as e:
        raise HubError(str(e)) from e
    commit = dl.snapshot_commit(ckpt)
    with tempfile.TemporaryDirectory() as tmp:
        result = import_checkpoint(_as_torch_file(ckpt, Path(tmp)), out, cfg, data)
    return {**result, "hub": f"{repo}@{commit or revision}", "file": file, "config": config}


# ---------------------------------------------------------------- export
def _last_eval(run: Path) -> dict:
    """The last metrics.jsonl record with evaluation metrics, if the run folder has one."""
    last: dict = {}
    try:
        with open(run / "metrics.jsonl") as f:
            for line in f:
                try:
                    rec = json.loads(line)
                except ValueError:
                    continue
                if any(k.startswith("eval") for k in rec):
                    last = rec
    except OSError:
        pass
    return last


def model_card(cfg, meta: dict, score: dict | None, last_eval: dict, data: dict | None, source: str) -> str:
    """README.md of an export: hub metadata, the architecture, the run's scores, its data."""
    m = cfg.model
    rows = [
        ("arch", m.arch),
        ("layers", m.layers),
        ("n (L_cycles)", m.n),
        ("T (H_cycles)", m.T),
        ("N_sup", m.N_sup),
        ("hidden", m.hidden),
        ("heads", m.heads),
        ("vocab_size", meta["vocab_size"]),
        ("seq_len", meta["seq_len"]),
        ("puzzle ids", meta["num_puzzle_ids"]),
    ]
    weights = "EMA" if meta["ema"] else "raw"
    about = (
        'A Tiny Recursive Model ("Less is More: Recursive Reasoning with Tiny Networks", '
        f"Jolicoeur-Martineau, 2025) trained with `trm`. Exported from `{source}` (step {meta['step']}, "
        f"{weights} weights)."
    )
    lines = [
        "---",
        "library_name: trm",
        "tags: [tiny-recursive-model, trm, reasoning]",
        "---",
        "",
        "# Tiny Recursive Model",
        "",
        about,
        "",
        "| setting | value |",
        "| --- | --- |",
        *(f"| {k} | {v} |" for k, v in rows),
        "",
    ]
    if score:
        best = f"Best checkpoint: `{score['metric']}` = {score['value']:.4f} at step {score['step']}."
        lines += ["## Results", "", best, ""]
    if last_eval:
        lines += [
            "Last evaluation of the run:",
            "",
            "| metric | value |",
            "| --- | --- |",
            *(f"| {k} | {v:.4g} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in sorted(last_eval.items())),
            "",
        ]
    described = ", ".join(
        f"{k} {data[k]}" for k in ("name", "source", "augmentations", "splits", "subsample") if data and k in data
    )
    lines += [
        "## Data",
        "",
        f"`{cfg.data.path}`" + (f": {described}" if described else ""),
        "",
        "## Use",
        "",
        "```python",
        "from trm.hub import load_export",
        "",
        "model, cfg = load_export('THIS_FOLDER')",
        "```",
        "",
    ]
    return "\n".join(lines)


def write_export(checkpoint: str | Path, out: str | Path, latest: bool = False) -> Path:
    """The hub-ready folder `out` for a run's best (or latest) checkpoint, written atomically."""
    from safetensors.torch import save_model

    from trm.train.checkpoint import read_score, resolve
    from trm.train.loop import load_for_eval

    out = Path(out)
    if out.exists():
        raise HubError(f"--out {out}: already exists; expected a new folder")
    folder = resolve(checkpoint, prefer="latest" if latest else "best")
    model, cfg, state = load_for_eval(folder, "cpu", use_ema=True)
    run = folder.parent.parent if folder.parent.name == "checkpoints" else folder.parent
    meta = {
        **state["meta"],
        "step": int(state["step"]),
        "ema": state.get("ema") is not None,
        "format": "trm",
        "weights": "model.safetensors",
    }
    data = None
    try:
        from trm.data.dataset import read_meta

        data = read_meta(cfg.data.path)
    except (TrmError, OSError):
        pass
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        # save_model: the one network is registered twice (net, net_y); safetensors keeps it once
        save_model(model, str(tmp / "model.safetensors"), metadata={"format": "pt", "step": str(meta["step"])})
        cfg.save(tmp / "config.yaml")
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
        (tmp / "README.md").write_text(model_card(cfg, meta, read_score(folder), _last_eval(run), data, str(folder)))
        os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def load_export(folder: str | Path):
    """(model, config) from a folder `write_export` wrote (or its copy on the hub)."""
    from safetensors.torch import load_model

    from trm.config import load_config
    from trm.variants import build_model

    folder = Path(folder)
    missing = [f for f in EXPORT_FILES[:3] if not (folder / f).is_file()]
    if missing:
        raise HubError(
            f"{folder}: no {missing[0]}; expected a folder written by `trm export` ({', '.join(EXPORT_FILES)})"
        )
    cfg = load_config(folder / "config.yaml")
    meta = json.loads((folder / "meta.json").read_text())
    model = build_model(cfg.model, meta["vocab_size"], meta["seq_len"], meta["num_puzzle_ids"])
    load_model(model, str(folder / "model.safetensors"))
    return model.eval(), cfg


def export(
    checkpoint: str | Path,
    out: str | Path | None = None,
    hf: str | None = None,
    latest: bool = False,
    private: bool = False,
) -> dict:
    """--out: the folder; --hf: the folder uploaded to a model repo (created if needed)."""
    if out is None and hf is None:
        raise HubError("--out DIR or --hf OWNER/NAME: expected at least one")
    repo = parse_repo(hf)[0] if hf else None
    if hf and parse_repo(hf)[1]:
        raise HubError(f"--hf {hf}: an upload goes to a branch head; expected OWNER/NAME without @REVISION")
    with tempfile.TemporaryDirectory() as tmp:
        folder = write_export(checkpoint, out or Path(tmp) / "export", latest)
        result = {"folder": str(folder) if out else None, "files": sorted(p.name for p in folder.iterdir())}
        if repo:
            from huggingface_hub import HfApi

            api = HfApi(endpoint=dl.hf_endpoint())
            try:
                api.create_repo(repo, private=private, exist_ok=True)
                info = api.upload_folder(
                    repo_id=repo, folder_path=str(folder), commit_message=f"trm export of {checkpoint}"
                )
            except Exception as e:
                first = (str(e).strip().splitlines() or [type(e).__name__])[0]
                raise HubError(
                    f"--hf {repo}: upload to {dl.hf_endpoint()} failed ({first}); log in with "
                    f"`hf auth login` or set HF_TOKEN"
                ) from e
            result["hub"] = f"{repo}@{getattr(info, 'oid', None) or 'main'}"
            result["url"] = f"{dl.hf_endpoint()}/{repo}"
    return result


__all__ = [
    "HubError",
    "export",
    "import_from_hub",
    "load_export",
    "model_card",
    "parse_repo",
    "pick_checkpoint",
    "repo_files",
    "write_export",
]
