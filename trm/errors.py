"""The one user-facing error type.

Every error a user can cause (a bad flag, a missing data folder, an unreachable
tracking server, a price table that does not parse, a checkpoint that does not
match its digest) derives from `TrmError`. The CLI helper (`trm.cli_common`)
catches exactly this type and prints one line, ``error: <message>``, exiting 2;
anything else is a bug and keeps its traceback (shown in full with ``--debug``).

Subclasses live next to the code that raises them (``ConfigError`` in
``trm.config``, ``DatasetError`` in ``trm.data.dataset``, ``CheckpointError``
in ``trm.train.checkpoint``, ...). They may also derive from a builtin
(``ValueError``, ``RuntimeError``) so that existing ``except`` clauses keep
working.
"""

from __future__ import annotations


class TrmError(Exception):
    """A user-facing error: the message alone tells the user what to fix.

    The message names the field or flag at fault (``--tracking-uri``,
    ``data.path``, ``sweep.max_cost_usd``) and what was expected instead, in one
    line, without a traceback. Raise it (or a subclass) for anything the user
    can fix; let real bugs raise anything else.
    """
