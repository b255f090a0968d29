"""What the benchmark scripts share."""
from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def scratch(prefix: str, keep: bool = False) -> Iterator[Path]:
    """A temp folder for a benchmark's data, runs and MLflow; afterwards the local Ray the
    benchmark started is shut down and the folder removed (or kept and printed)."""
    tmp = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield tmp
    finally:
        import ray

        if ray.is_initialized():
            ray.shutdown()
        if keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
