"""Build the dataset a config names, once, when it is not on disk yet (embedded defaults)."""

from __future__ import annotations

import logging
from pathlib import Path

from trm.config import DataConfig
from trm.data.dataset import DatasetError, read_meta

log = logging.getLogger(__name__)


def ensure_dataset(d: DataConfig) -> Path:
    """Return the local folder of d.path, generating it first if it holds no dataset and d.generate
    says how; an s3:// path is downloaded once per node into the cache (see `trm.storage.download_dir`).

    A file lock makes concurrent trials on one node build it once."""
    if d.path.startswith("s3://"):
        from trm.storage import download_dir

        path = download_dir(d.path)
        read_meta(path)
        return path
    path = Path(d.path)
    if (path / "meta.json").is_file():
        return path
    if d.generate == "none":
        raise DatasetError(
            f"data.path={d.path}: no dataset there (build one with `trm data ...`, or set data.generate=sudoku|maze)"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    from filelock import FileLock

    with FileLock(path.parent / f".{path.name}.lock"):
        if (path / "meta.json").is_file():  # built by another process while we waited
            return path
        log.info(
            "building %s dataset at %s (%d train puzzles x %d augmentations, %d test)",
            d.generate,
            path,
            d.num_train,
            d.augmentations,
            d.num_test,
        )
        if d.generate == "sudoku":
            from trm.data import sudoku

            train = sudoku.generate(d.num_train, d.gen_seed, d.min_givens, d.max_givens, d.min_rating)
            test = sudoku.generate(d.num_test, d.gen_seed + 1_000_003, d.min_givens, d.max_givens, d.min_rating)
            sudoku.build_dataset(path, train[:2], test[:2], d.augmentations, d.gen_seed)
        else:
            from trm.data import maze

            maze.build_from_config(d, path)
    read_meta(path)
    return path


def stage_dataset(d: DataConfig, storage: str) -> str:
    """Where the workers should read the dataset from: with s3:// storage, a local dataset is
    uploaded once under storage/datasets/ (keyed by its meta.json, skipped when already there);
    otherwise the absolute local path."""
    if d.path.startswith("s3://"):
        return d.path
    if not storage.startswith("s3://"):
        return str(ensure_dataset(d).resolve())  # built or checked here, before any worker starts
    import hashlib

    from trm.storage import upload_dir

    local = ensure_dataset(d)
    key = hashlib.sha256((local / "meta.json").read_bytes()).hexdigest()[:12]
    uri = f"{storage.rstrip('/')}/datasets/{local.resolve().name}-{key}"
    if upload_dir(local, uri):
        log.info("uploaded dataset %s to %s", local, uri)
    return uri
