"""Joining a Ray cluster: the optional distributed engine behind ``ray=`` / ``--ray``.

``connect("local")`` starts a local instance on this machine's cores; ``connect("auto")`` joins the cluster
that ``RAY_ADDRESS`` names, else starts a local one; any other value is a cluster address ("ray://head:10001",
"10.0.0.5:6379"). An instance that is already running in this process (``ray.init`` called by the caller,
or by an earlier call) is used as it is. Without Ray installed every entry point fails with one line that
says how to install it. ``check_shared`` proves that every worker sees a directory the driver wrote.
"""
from __future__ import annotations

import logging
import os
import uuid
from pathlib import Path

from .errors import InputError

log = logging.getLogger("mads_fast")

INSTALL = 'install Ray with: pip install "mads-fast[ray]"'


def import_ray():
    """The ``ray`` module, or an InputError saying how to install it."""
    try:
        import ray
    except ImportError:
        raise InputError(f"Ray is not installed; {INSTALL}", param="ray") from None
    return ray


def connect(address: str):
    """Connect this process to Ray (see the module doc) and return the ``ray`` module."""
    ray = import_ray()
    if not isinstance(address, str) or not address:
        raise InputError(f"must be 'local', 'auto' or a cluster address, got {address!r}", param="ray")
    if ray.is_initialized():
        return ray
    kwargs = dict(include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
    try:
        if address == "local" or (address == "auto" and not os.environ.get("RAY_ADDRESS")):
            log.info("starting a local Ray instance")
            ray.init(**kwargs)
        else:
            target = os.environ["RAY_ADDRESS"] if address == "auto" else address
            log.info("joining the Ray cluster at %s", target)
            ray.init(address=target, **kwargs)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise InputError(f"cannot reach the Ray cluster at {address!r}: {exc}", param="ray") from None
    return ray


def write_probe(folder: Path) -> Path:
    """A uniquely named empty file in ``folder`` (created if missing), for workers to look for."""
    folder.mkdir(parents=True, exist_ok=True)
    probe = folder / f".mads-probe-{uuid.uuid4().hex}"
    probe.write_bytes(b"")
    return probe


def check_shared(probe: Path, seen: list, what: str) -> None:
    """Raise an InputError unless every worker saw ``probe``: ``seen`` is [(node, saw it)] per worker."""
    missing = sorted({node for node, ok in seen if not ok})
    if missing:
        raise InputError(f"{what} {probe.parent} is not visible from the Ray workers on {', '.join(missing)}; "
                         "put it on a filesystem every node shares", param="store")
