"""The engines' restart loop on a stand-in process (pure logic).

Real deaths of real processes are in test_engine_death.py (an engine core)
and test_remote_engine.py (a `vllm serve`); these tests pin down the loop's
order, its counting and its messages.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path

import anyio
import pytest

from runtime import EngineStartError
from runtime._backoff import Backoff
from runtime._engines import _supervisor
from runtime._engines._supervisor import Supervisor

DIED = "engine e: its process died"


class StandIn:
    """A process that dies when told and comes back when rebuilt, unless the next rebuilds are to fail."""

    def __init__(self, failing_rebuilds: int = 0) -> None:
        self.dead = asyncio.Event()
        self.failing_rebuilds = failing_rebuilds
        self.steps: list[str] = []

    async def watch(self) -> str:
        await self.dead.wait()
        self.steps.append("died")
        return DIED

    async def clean_up(self) -> None:
        self.steps.append("cleaned up")

    async def rebuild(self) -> None:
        if self.failing_rebuilds:
            self.failing_rebuilds -= 1
            self.steps.append("rebuild failed")
            raise EngineStartError("no luck")
        self.steps.append("rebuilt")
        self.dead = asyncio.Event()

    def supervisor(self, *, restart: bool = True, max_restarts: int = 3, log_path: Path | None = None) -> Supervisor:
        return Supervisor(
            "e",
            watch=self.watch,
            clean_up=self.clean_up,
            rebuild=self.rebuild,
            restart=restart,
            max_restarts=max_restarts,
            restart_option="restart",
            logger=logging.getLogger("tests.supervisor"),
            log_path=log_path,
        )


@pytest.fixture(autouse=True)
def quick_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Backoff(first_s=1.0, max_s=30.0) == _supervisor.RESTART_BACKOFF  # what the engines document
    monkeypatch.setattr(_supervisor, "RESTART_BACKOFF", Backoff(first_s=0.001, max_s=0.001))


async def _until(condition: Callable[[], bool]) -> None:
    with anyio.fail_after(10):  # a hang guard
        while not condition():  # noqa: ASYNC110 - the supervisor has no event to wait on
            await anyio.sleep(0.001)


async def test_a_dead_process_is_restarted_until_the_restarts_are_used_up(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="tests.supervisor")
    process = StandIn()
    supervisor = process.supervisor(max_restarts=2)
    supervisor.start()
    try:
        process.dead.set()
        await _until(lambda: supervisor.restarts == 1 and supervisor.down_reason is None)
        process.failing_rebuilds = 1
        process.dead.set()
        await _until(lambda: supervisor.down_reason is not None and "not restarted" in supervisor.down_reason)
    finally:
        await supervisor.stop()
    assert process.steps == ["died", "cleaned up", "rebuilt", "died", "cleaned up", "rebuild failed"]
    assert supervisor.restarts == 2  # a failed rebuild is a restart used
    assert supervisor.down_reason == (
        f"{DIED} and is not restarted (restart=True, 2/2 restarts used): close it and start a new one"
    )
    messages = [r.getMessage() for r in caplog.records if r.name == "tests.supervisor"]
    assert messages == [
        f"{DIED}; restarting",
        "e: restarted (restart 1)",
        f"{DIED}; restarting",
        "e: restart 2 failed: no luck",
        supervisor.down_reason,
    ]


async def test_without_restarts_a_dead_process_stays_down_and_its_log_is_quoted(tmp_path: Path) -> None:
    log = tmp_path / "serve.log"
    log.write_text("".join(f"line {i}\n" for i in range(100)))
    process = StandIn()
    supervisor = process.supervisor(restart=False, log_path=log)
    supervisor.start()
    try:
        process.dead.set()
        await _until(lambda: supervisor.down_reason is not None and "not restarted" in supervisor.down_reason)
    finally:
        await supervisor.stop()
    assert process.steps == ["died", "cleaned up"] and supervisor.restarts == 0
    assert supervisor.down_reason is not None
    head, _, tail = supervisor.down_reason.partition("\n")
    assert head == f"{DIED} and is not restarted (restart=False, 0/3 restarts used); log {log}, last lines:"
    assert tail.splitlines() == [f"line {i}" for i in range(60, 100)]


class Broken(StandIn):
    async def watch(self) -> str:
        raise RuntimeError("a bug")


async def test_a_failing_supervisor_marks_the_engine_down() -> None:
    supervisor = Broken().supervisor()
    supervisor.start()
    await _until(lambda: supervisor.down_reason is not None)
    assert supervisor.down_reason == "engine e: its supervisor failed: RuntimeError('a bug')"
    await supervisor.stop()


async def test_stopping_abandons_a_restart_under_way(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_supervisor, "RESTART_BACKOFF", Backoff(first_s=60.0, max_s=60.0))
    process = StandIn()
    supervisor = process.supervisor()
    supervisor.start()
    process.dead.set()
    await _until(lambda: process.steps == ["died", "cleaned up"])
    with anyio.fail_after(5):  # the backoff's 60 s wait is cancelled, not waited out
        await supervisor.stop()
    assert supervisor.restarts == 0 and supervisor.down_reason == f"{DIED}; restarting"
