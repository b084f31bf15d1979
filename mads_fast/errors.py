"""The two kinds of failure a user sees.

``InputError`` is bad input or usage: the CLI prints its one-line message and exits 2, and nothing
half-written is left behind. ``BackendUnavailableError`` is an explicitly requested native backend
that cannot load; its message says why and how to fix it.
"""
from __future__ import annotations

import os
from typing import Optional, Union


class MadsError(Exception):
    """Base class of every error mads_fast raises on purpose."""


class InputError(MadsError, ValueError):
    """Bad input: names the file, the record or line, and the problem, on one line.

    >>> str(InputError("invalid JSON: Expecting ',' delimiter", path="data.jsonl", where="line 37"))
    "data.jsonl: line 37: invalid JSON: Expecting ',' delimiter"
    """

    def __init__(self, problem: str, path: Optional[Union[str, os.PathLike]] = None,
                 where: Optional[str] = None):
        self.problem = " ".join(str(problem).split())  # always one line
        self.path = None if path is None else os.fspath(path)
        self.where = where
        parts = [p for p in (self.path, where, self.problem) if p]
        super().__init__(": ".join(parts))


class BackendUnavailableError(MadsError, RuntimeError):
    """A requested solver backend (cpp, cuda) or kernel cannot be loaded here."""
