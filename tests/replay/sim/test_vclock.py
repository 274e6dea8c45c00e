"""The virtual-time event loop: timers jump, I/O and threads still wake it, anyio works on it."""

from __future__ import annotations

import asyncio
import random
import threading
import time

import anyio
import anyio.to_thread
import pytest

from runtime._clock import now as monotonic
from runtime.replay._vclock import run_virtual


def test_ten_thousand_sleepers_finish_fast_and_in_order() -> None:
    rng = random.Random(7)
    delays = [rng.uniform(0, 3600) for _ in range(10_000)]
    woke: list[float] = []

    async def sleeper(delay: float) -> None:
        await asyncio.sleep(delay)
        woke.append(delay)

    async def main() -> float:
        await asyncio.gather(*(sleeper(d) for d in delays))
        return asyncio.get_running_loop().time()

    started = time.perf_counter()
    end = run_virtual(main)
    # An hour of sleeps: far more than the test could take if they were real.
    assert time.perf_counter() - started < max(delays) / 20
    assert woke == sorted(delays)
    assert end == pytest.approx(max(delays))


def test_anyio_primitives_follow_virtual_time() -> None:
    async def main() -> list[tuple[str, float]]:
        seen: list[tuple[str, float]] = []
        event = anyio.Event()

        async def setter() -> None:
            await anyio.sleep(500)
            event.set()

        async def waiter() -> None:
            await event.wait()
            seen.append(("event", anyio.current_time()))

        async with anyio.create_task_group() as tg:
            tg.start_soon(setter)
            tg.start_soon(waiter)
            with anyio.move_on_after(200) as scope:
                await anyio.sleep(10_000)
            seen.append(("timeout", anyio.current_time()))
            assert scope.cancelled_caught
        seen.append(("engine clock", monotonic()))
        return seen

    started = time.perf_counter()
    seen = run_virtual(main)
    assert time.perf_counter() - started < 50  # 500 virtual seconds: not slept for real
    assert seen == [("timeout", 200.0), ("event", 500.0), ("engine clock", 500.0)]


def test_a_thread_wakes_a_loop_without_timers() -> None:
    async def main() -> tuple[str, float]:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[str] = loop.create_future()

        def work() -> None:
            time.sleep(0.2)
            loop.call_soon_threadsafe(fut.set_result, "done")

        threading.Thread(target=work).start()
        return await fut, loop.time()

    started = time.perf_counter()
    result, virtual = run_virtual(main)
    assert result == "done" and virtual == 0.0
    assert time.perf_counter() - started >= 0.2  # it really blocked, waiting for the thread


def test_to_thread_works_under_virtual_time() -> None:
    async def main() -> int:
        return await anyio.to_thread.run_sync(lambda: sum(range(10)))

    assert run_virtual(main) == 45
