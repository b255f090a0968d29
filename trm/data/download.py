"""`trm data download NAME --out DIR`: fetch a registered dataset's source files, verify them, build it.

    fetch  -> hub files through huggingface_hub (its cache, resume and atomic rename; HF_ENDPOINT,
              HF_HOME, HF_HUB_OFFLINE), GitHub files over HTTPS into <cache>/github/ (TRM_GITHUB_BASE
              for a mirror), each written to `.part`, resumed with an HTTP Range, renamed when verified
    verify -> sha256 and size against the registry (trm.data.sources), or against the record made at
              the first fetch in <cache>/checksums.json when the registry has no value yet
    build  -> the `trm data sudoku|maze|arc` subcommand itself (its parser and its run), with the
              registry's flags: the dataset is byte for byte what that command builds

Nothing that looks complete is left by an interrupted fetch (a `.part` file) or build (the dataset
writer builds into a hidden temporary folder and renames it). The cache is $TRM_CACHE, else
~/.cache/trm.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import logging
import os
import time
import urllib.error
import urllib.request
from pathlib import Path

from trm.data.dataset import DatasetError
from trm.data.sources import HUB, Source, SourceFile, lookup, registry
from trm.progress import Progress

log = logging.getLogger(__name__)

GITHUB_BASE = "https://raw.githubusercontent.com"
RETRIES = 5  # resumed attempts per file after a dropped connection
CHUNK = 1 << 20


class DownloadError(DatasetError):
    """A fetch that failed or a file that does not match its checksum; one line naming the URL/file."""


def cache_dir() -> Path:
    return Path(os.environ.get("TRM_CACHE") or Path.home() / ".cache" / "trm")


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            h.update(block)
    return h.hexdigest()


# ---------------------------------------------------------------- checksums recorded at first fetch
class Checksums:
    """<cache>/checksums.json: {"host:repo@ref/path": {"sha256", "size", "commit"}} for files the
    registry does not pin; written atomically under a file lock (several fetches may share a cache)."""

    def __init__(self, root: Path):
        self.path = root / "checksums.json"

    def read(self) -> dict:
        try:
            return json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except ValueError as e:
            raise DownloadError(f"{self.path}: not valid JSON ({e}); delete it to record checksums afresh") from e

    def record(self, key: str, entry: dict) -> None:
        from filelock import FileLock

        self.path.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(self.path) + ".lock"):
            data = self.read()
            data[key] = entry
            tmp = self.path.with_suffix(".json.part")
            tmp.write_text(json.dumps(data, indent=2, sort_keys=True))
            os.replace(tmp, self.path)


def _key(src: Source, f: SourceFile) -> str:
    return f"{src.host}:{src.repo}@{src.ref}/{f.path}"


def expected(src: Source, f: SourceFile, sums: Checksums) -> tuple[str | None, int | None, str]:
    """(sha256, size, where that value comes from) for file f: the registry's, else the first fetch's."""
    if f.sha256 is not None:
        return f.sha256, f.size, "the registry (trm/data/sources.py)"
    rec = sums.read().get(_key(src, f))
    if rec:
        return rec["sha256"], rec.get("size"), f"recorded at the first fetch in {sums.path}"
    return None, f.size, ""


def verify(src: Source, f: SourceFile, local: Path, sums: Checksums, what: str, commit: str | None = None) -> None:
    """Check local against the expected size and sha256; when nothing is pinned yet, record them."""
    sha, size, origin = expected(src, f, sums)
    actual_size = local.stat().st_size
    if size is not None and actual_size != size:
        raise DownloadError(
            f"size mismatch: {what}: {actual_size} bytes, expected {size} ({origin or 'the registry'}): "
            f"a truncated or different file; it was removed, nothing was built"
        )
    digest = sha256_of(local)
    if sha is None:
        sums.record(
            _key(src, f),
            {
                "sha256": digest,
                "size": actual_size,
                "commit": commit,
                "fetched": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            },
        )
        log.info("%s: not pinned: recorded sha256 %s on first fetch in %s", what, digest[:16], sums.path)
    elif digest != sha:
        raise DownloadError(
            f"checksum mismatch: {what}: sha256 {digest[:16]}..., expected {sha[:16]}... "
            f"({origin}); the file was removed, nothing was built"
        )


# ---------------------------------------------------------------- hub files
def hf_cache() -> str:
    """The hub cache as the environment says now (huggingface_hub reads it once, at import)."""
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "huggingface"
    )
    return os.path.join(home, "hub")


def hf_endpoint() -> str:
    return (os.environ.get("HF_ENDPOINT") or "https://huggingface.co").rstrip("/")


def network_error(url: str, cause: BaseException | str) -> DownloadError:
    first = (str(cause).strip().splitlines() or [type(cause).__name__])[0]
    return DownloadError(
        f"cannot fetch {url} ({first}); with HF_HUB_OFFLINE=1 the local cache is used, "
        f"and it has no copy of this file yet"
    )


def hub_download(repo: str, path: str, revision: str, repo_type: str = "dataset") -> Path:
    """One file of a hub repo through huggingface_hub's cache (resumable, atomic); errors as one line."""
    from huggingface_hub import errors as hf_errors
    from huggingface_hub import hf_hub_download

    prefix = "datasets/" if repo_type == "dataset" else ""
    url = f"{hf_endpoint()}/{prefix}{repo}/resolve/{revision}/{path}"
    try:
        return Path(
            hf_hub_download(
                repo,
                path,
                repo_type=repo_type,
                revision=revision,
                cache_dir=hf_cache(),
                endpoint=hf_endpoint(),
                local_files_only=offline(),
            )
        )
    except hf_errors.RepositoryNotFoundError as e:
        raise DownloadError(f"hub repo {prefix}{repo}: not found at {hf_endpoint()} (or private)") from e
    except hf_errors.RevisionNotFoundError as e:
        raise DownloadError(f"hub repo {prefix}{repo}: no revision {revision!r}") from e
    except hf_errors.LocalEntryNotFoundError as e:  # offline and not cached, or the hub unreachable
        if offline():
            raise DownloadError(
                f"{url}: not in the cache {hf_cache()} and HF_HUB_OFFLINE is set (fetch it once online)"
            ) from e
        raise network_error(url, e.__cause__ or e.__context__ or e) from e
    except hf_errors.EntryNotFoundError as e:
        raise DownloadError(f"hub repo {prefix}{repo}@{revision}: has no file {path!r}") from e
    except (OSError, hf_errors.HfHubHTTPError) as e:
        raise network_error(url, e) from e
    except Exception as e:
        if type(e).__module__.split(".")[0].startswith("httpx"):
            raise network_error(url, e) from e
        raise


def snapshot_commit(local: Path) -> str | None:
    """The commit of a file in the hub cache (`.../snapshots/<commit>/<path in the repo>`)."""
    parts = local.parts
    return parts[parts.index("snapshots") + 1] if "snapshots" in parts[:-1] else None


def _drop_hub_copy(local: Path) -> None:
    """Remove a verified-bad hub file: the snapshot link and the blob it points to."""
    blob = local.resolve()
    local.unlink(missing_ok=True)
    if blob != local:
        blob.unlink(missing_ok=True)


def fetch_hub(src: Source, f: SourceFile, sums: Checksums) -> Path:
    local = hub_download(src.repo, f.path, src.ref)
    commit = snapshot_commit(local)
    try:
        verify(src, f, local, sums, f"hub {src.repo}@{src.ref}/{f.path}", commit)
    except DownloadError:
        _drop_hub_copy(local)
        raise
    return local


# ---------------------------------------------------------------- GitHub (plain HTTPS) files
def github_url(src: Source, f: SourceFile) -> str:
    base = (os.environ.get("TRM_GITHUB_BASE") or GITHUB_BASE).rstrip("/")
    return f"{base}/{src.repo}/{src.ref}/{f.path}"


def http_download(url: str, dest: Path, size_hint: int | None = None) -> None:
    """url -> dest.part, resumed from where it stopped with an HTTP Range (here after a dropped
    connection, up to RETRIES times; or in a later run), renamed to dest by the caller once verified."""
    part = dest.with_name(dest.name + ".part")
    part.parent.mkdir(parents=True, exist_ok=True)
    attempts = 0
    while True:
        have = part.stat().st_size if part.exists() else 0
        req = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                if have and r.status != 206:  # the server ignored the Range: start over
                    have = 0
                length = r.headers.get("Content-Length")
                total = have + int(length) if length is not None else size_hint
                with (
                    open(part, "ab" if have else "wb") as out,
                    Progress(f"download {dest.name}", total or 0, unit="bytes") as p,
                ):
                    p.update(have)
                    while block := r.read(CHUNK):
                        out.write(block)
                        p.update(len(block))
            done = part.stat().st_size
            if total is not None and done < total:
                raise http.client.IncompleteRead(b"", total - done)
            return
        except urllib.error.HTTPError as e:
            if e.code == 416 and have:  # the .part already holds the whole file
                return
            raise DownloadError(f"{url}: HTTP {e.code} {e.reason}") from e
        except (http.client.IncompleteRead, ConnectionError, TimeoutError) as e:
            attempts += 1
            got = part.stat().st_size if part.exists() else 0
            if attempts > RETRIES:
                raise DownloadError(
                    f"{url}: download interrupted at {got:,} bytes after {RETRIES} resumed "
                    f"attempts; run the command again to resume from {part}"
                ) from e
            log.warning("%s: connection dropped at %s bytes (%s); resuming", url, f"{got:,}", type(e).__name__)
        except urllib.error.URLError as e:
            raise network_error(url, e.reason) from e
        except OSError as e:  # a reset connection while reading, a refused one while opening
            attempts += 1
            if attempts > RETRIES or not part.exists():
                raise network_error(url, e) from e


def fetch_github(src: Source, f: SourceFile, sums: Checksums) -> Path:
    from filelock import FileLock

    dest = cache_dir() / "github" / src.repo / src.ref / f.path
    dest.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(dest) + ".lock"):  # two commands sharing a cache: one writes the .part, the other waits
        return _fetch_github(src, f, sums, dest)


def _fetch_github(src: Source, f: SourceFile, sums: Checksums, dest: Path) -> Path:
    what = f"{github_url(src, f)}"
    if dest.is_file():  # complete and verified when it was renamed; checked again (cheap next to a build)
        verify(src, f, dest, sums, f"{dest} (cached {what})")
        return dest
    if offline():
        raise DownloadError(f"{what}: not in the cache {dest.parent} and HF_HUB_OFFLINE is set (fetch it once online)")
    http_download(what, dest, f.size)
    part = dest.with_name(dest.name + ".part")
    try:
        verify(src, f, part, sums, what)
    except DownloadError:
        part.unlink(missing_ok=True)
        raise
    os.replace(part, dest)
    return dest


# ---------------------------------------------------------------- fetch + build
def fetch(src: Source) -> dict[str, Path]:
    """Every source file of src, verified: {path in the repo: local file}."""
    sums = Checksums(cache_dir())
    out = {}
    for f in src.files:
        t0 = time.monotonic()
        out[f.path] = fetch_hub(src, f, sums) if src.host == HUB else fetch_github(src, f, sums)
        log.info(
            "%s: %s ready (%.1f MB, %.1f s)", src.name, f.path, out[f.path].stat().st_size / 1e6, time.monotonic() - t0
        )
    return out


def build_argv(src: Source, files: dict[str, Path], out: str | Path) -> list[str]:
    """The `trm data BUILDER` arguments for src: {file} -> that fetched file, {dir} -> their folder."""
    folders = {p.parent for p in files.values()}
    if len(folders) != 1:
        raise DatasetError(
            f"{src.name}: source files in several folders {sorted(map(str, folders))}; "
            "the registry's {dir} needs them in one"
        )
    subst = {f"{{{Path(k).name}}}": str(v) for k, v in files.items()} | {"{dir}": str(folders.pop())}
    return ["--out", str(out), *(subst.get(a, a) for a in src.build_args)]


def build(src: Source, files: dict[str, Path], out: str | Path, overwrite: bool = False) -> Path:
    """Build as `trm data <builder>` does: its own parser and run function, the registry's flags."""
    from trm.data import arc, maze, sudoku

    module = {"sudoku": sudoku, "maze": maze, "arc": arc}[src.builder]
    argv = build_argv(src, files, out) + (["--overwrite"] if overwrite else [])
    log.info("%s: trm data %s %s", src.name, src.builder, " ".join(argv))
    parser = argparse.ArgumentParser(prog=f"trm data {src.builder}")
    module.add_args(parser)
    return module.run(parser.parse_args(argv))


def download(name: str, out: str | Path, overwrite: bool = False, sources: dict[str, Source] | None = None) -> Path:
    src = lookup(name, sources)
    if Path(out).exists() and not overwrite:  # before fetching gigabytes
        raise DatasetError(f"--out {out}: already exists (pass --overwrite to replace it)")
    t0 = time.monotonic()
    files = fetch(src)
    t1 = time.monotonic()
    path = build(src, files, out, overwrite)
    size = sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())
    log.info(
        "%s: fetched in %.1f s, built in %.1f s, %.1f MB at %s", name, t1 - t0, time.monotonic() - t1, size / 1e6, path
    )
    return path


# ---------------------------------------------------------------- CLI: trm data download
def add_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("name", nargs="?", metavar="NAME", help="dataset name (--list shows them)")
    parser.add_argument("--out", metavar="DIR", help="dataset folder to create")
    parser.add_argument("--list", action="store_true", help="list the known datasets and their sources")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing dataset at --out")
    return parser


def run(args: argparse.Namespace) -> Path | None:
    sources = registry()
    if args.list:
        for s in sources.values():
            print(f"{s.describe()}\n{'':18s} {s.about}")
        return None
    if not args.name:
        raise DatasetError(f"NAME: missing; expected one of {', '.join(sorted(sources))}")
    src = lookup(args.name, sources)
    if not args.out:
        raise DatasetError(f"--out: missing; expected the dataset folder to create (e.g. --out data/{src.name})")
    return download(args.name, args.out, args.overwrite, sources)


__all__ = [
    "Checksums",
    "DownloadError",
    "add_args",
    "build",
    "build_argv",
    "cache_dir",
    "download",
    "fetch",
    "http_download",
    "hub_download",
    "run",
    "sha256_of",
    "verify",
]
