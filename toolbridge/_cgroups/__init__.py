"""Sandbox backends behind one interface (:class:`SandboxDriver`), chosen at start.

``select_driver()`` picks, in order: cgroup v2 (a unified hierarchy with the
memory and pids controllers that we may write), cgroup v1 (writable memory
and pids hierarchies), then rlimits with a warning.  ``AGENTRT_SANDBOX=
cgroup2|cgroup1|rlimit`` forces one (``v2`` and ``v1`` are accepted for
``cgroup2`` and ``cgroup1``); a forced cgroup backend the host lacks is an
``OSError``, not a fall-back.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
from pathlib import Path

from ._base import RunnerSetup, Sandbox, SandboxDriver, SandboxStats
from ._rlimit import RlimitDriver
from ._v1 import CgroupV1Driver
from ._v2 import CgroupV2Driver

__all__ = [
    "CgroupV1Driver",
    "CgroupV2Driver",
    "RlimitDriver",
    "RunnerSetup",
    "Sandbox",
    "SandboxDriver",
    "SandboxStats",
    "sandbox_driver",
    "select_driver",
    "set_sandbox_driver",
]

log = logging.getLogger("toolbridge.sandbox")

_driver: SandboxDriver | None = None
_lock = threading.Lock()


#: Other names ``AGENTRT_SANDBOX`` accepts for a backend (the README's short ones).
_ALIASES = {"v2": "cgroup2", "v1": "cgroup1"}


def select_driver(name: str | None = None, *, mount: Path = Path("/sys/fs/cgroup")) -> SandboxDriver:
    """Build the best backend this host allows, or the one named.

    Names (``name``, else ``$AGENTRT_SANDBOX``): ``cgroup2`` (or ``v2``),
    ``cgroup1`` (or ``v1``), ``rlimit``.  A named cgroup backend this host
    lacks raises ``OSError``; an unknown name raises ``ValueError``.
    """
    name = name or os.environ.get("AGENTRT_SANDBOX") or None
    if name is not None:
        name = _ALIASES.get(name, name)
    if name == "rlimit":
        return RlimitDriver()
    if name == "cgroup2":
        return CgroupV2Driver(mount=mount)
    if name == "cgroup1":
        return CgroupV1Driver(mount)
    if name is not None:
        raise ValueError(f"unknown sandbox backend {name!r}; use cgroup2 (v2), cgroup1 (v1) or rlimit")
    reasons: list[str] = []
    unified = mount / "cgroup.controllers"
    if unified.exists() and "memory" in unified.read_text().split():
        try:
            return CgroupV2Driver(mount=mount)
        except OSError as exc:
            reasons.append(str(exc))
    if (mount / "memory").is_dir():
        try:
            return CgroupV1Driver(mount)
        except OSError as exc:
            reasons.append(str(exc))
    log.warning(
        "toolbridge: no writable cgroup (%s); isolated tools run under rlimits only: "
        "no CPU share, memory bounds address space per process, pids are not bounded for root",
        "; ".join(reasons) or "no cgroup mount found",
    )
    return RlimitDriver()


def sandbox_driver() -> SandboxDriver:
    """The process-wide backend, selected on first use."""
    global _driver
    with _lock:
        if _driver is None:
            _driver = select_driver()
            atexit.register(_driver.close)
            log.info("toolbridge sandbox: %s", _driver.describe())
        return _driver


def set_sandbox_driver(driver: SandboxDriver | None) -> None:
    """Replace the process-wide backend (``None``: select again on next use)."""
    global _driver
    with _lock:
        _driver = driver
