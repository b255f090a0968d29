"""Moved: storage to `trm.storage`, prices, cost meter and run limits to `trm.cost`.

Only `trm.data.build` still imports these two names from here; remove this file once it
imports them from `trm.storage`.
"""
from trm.storage import download_dir, upload_dir

__all__ = ["download_dir", "upload_dir"]
