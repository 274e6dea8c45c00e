"""Helpers shared by the engine tests."""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import psutil


async def wait_until_idle(engine: Any, timeout_s: float = 20.0) -> Any:
    """Wait until ``engine`` reports nothing in flight, running or waiting; return its stats."""
    with anyio.fail_after(timeout_s):
        # Engine statistics have no change notification: poll them.
        while True:
            stats = await engine.stats()
            if stats.in_flight == 0 and not stats.running and not stats.waiting:
                return stats
            await anyio.sleep(0.1)


async def poll_until(check: Callable[[], Awaitable[bool]], timeout_s: float = 20.0) -> None:
    """Await ``check`` every 0.1 s until it is true (engine state has no change notification)."""
    with anyio.fail_after(timeout_s):
        while True:
            if await check():
                return
            await anyio.sleep(0.1)


def engine_core_processes() -> list[psutil.Process]:
    """vLLM engine-core processes below this one (zombies and processes gone meanwhile are skipped)."""
    found = []
    for child in psutil.Process(os.getpid()).children(recursive=True):
        try:
            if "EngineCore" in " ".join(child.cmdline() or [child.name()]):
                found.append(child)
        except psutil.Error:
            continue
    return found
