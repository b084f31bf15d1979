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
    """Bad input: names the parameter or the file, the record or line, and the problem, on one line.

    >>> str(InputError("invalid JSON: Expecting ',' delimiter", path="data.jsonl", where="line 37"))
    "data.jsonl: line 37: invalid JSON: Expecting ',' delimiter"
    >>> str(InputError("a count must be >= 1, got 0", param="budget"))
    'budget: a count must be >= 1, got 0'

    ``param`` is the Python parameter at fault; ``render`` lets a caller say it its own way (the CLI
    writes ``--budget``).
    """

    def __init__(self, problem: str, path: Optional[Union[str, os.PathLike]] = None,
                 where: Optional[str] = None, param: Optional[str] = None):
        self.problem = " ".join(str(problem).split())  # always one line
        self.path = None if path is None else os.fspath(path)
        self.where = where
        self.param = param
        super().__init__(self.render())

    def __reduce__(self):  # pickles whole (path, where, param), so an error raised in a worker process is the same
        return (type(self), (self.problem, self.path, self.where, self.param))

    def render(self, param: Optional[str] = None) -> str:
        """The one-line message, with ``param`` (default: the parameter's own name) in front."""
        parts = [param or self.param, self.path, self.where, self.problem]
        return ": ".join(p for p in parts if p)


class BackendUnavailableError(MadsError, RuntimeError):
    """A requested solver backend (cpp, cuda) or kernel cannot be loaded here."""
