"""KV pins on a real in-process vLLM engine: agentrt's scheduler plug-in and its control path.

One engine on the tiny model with a 40-block cache (128 tokens a block), so
that a few 1,500-token prompts fill it and pins matter.  Program ids keep
the tests apart; each test leaves no pin behind.
"""

from __future__ import annotations

import random
from contextlib import aclosing

import anyio
import pytest
import pytest_asyncio

from runtime import InProcessEngine
from runtime._engines import (
    METADATA_PIN_MODE,
    METADATA_PIN_TTL_S,
    METADATA_PROGRAM_ID,
    PIN_MODE_CONTINUUM,
    Completion,
    GenerateRequest,
    SamplingOptions,
    TokenDelta,
    TokenPrompt,
)
from tests.conftest import SMALL_CACHE_BLOCKS, fresh_cache

from ._helpers import poll_until

pytestmark = pytest.mark.engine

BLOCKS = 40
BLOCK = 128


@pytest_asyncio.fixture(scope="module")
async def engine(small_cache_engine: InProcessEngine) -> InProcessEngine:
    """The session's small-cache engine (40 blocks, ``max_num_seqs=4``), its cache emptied for this module."""
    assert SMALL_CACHE_BLOCKS == BLOCKS
    await fresh_cache(small_cache_engine)
    return small_cache_engine


_rng = random.Random(7)


def tokens(n: int) -> tuple[int, ...]:
    # Random ids: no two prompts share a prefix by chance.
    return tuple(_rng.randrange(10, 4000) for _ in range(n))


async def generate(
    engine: InProcessEngine,
    rid: str,
    prompt: tuple[int, ...],
    program: str,
    pin_s: float | None = None,
    n: int = 4,
    mode: str | None = None,
) -> Completion:
    meta: dict[str, str | float] = {METADATA_PROGRAM_ID: program}
    if pin_s is not None:
        meta[METADATA_PIN_TTL_S] = pin_s
    if mode is not None:
        meta[METADATA_PIN_MODE] = mode
    request = GenerateRequest(rid, TokenPrompt(prompt), SamplingOptions(max_tokens=n, ignore_eos=True), 0, meta)
    return await engine.generate(request)


async def flood(engine: InProcessEngine, tag: str, count: int = 6) -> None:
    """Other programs' prompts, one after another: together far more than the cache holds."""
    for i in range(count):
        await generate(engine, f"{tag}-flood-{i}", tokens(1800), f"{tag}-other-{i}")


async def test_pinned_context_survives_a_flood_and_an_unpinned_one_does_not(engine: InProcessEngine) -> None:
    pinned, unpinned = tokens(1500), tokens(1500)
    first = await generate(engine, "survive-a1", pinned, "survive-A", pin_s=1.0)
    other = await generate(engine, "survive-b1", unpinned, "survive-B")
    # The policy's decision once the tool is known: keep it for the tool's run.
    assert await engine.set_pin("survive-A", 60, value=1.0)
    before = await engine.pin_stats()
    assert before.pinned_programs == 1 and before.pinned_blocks == len(pinned) // BLOCK + 1
    await anyio.sleep(3)  # the tool call
    await flood(engine, "survive")
    inherited_a = pinned + first.token_ids
    inherited_b = unpinned + other.token_ids
    second = await generate(engine, "survive-a2", inherited_a + tokens(50), "survive-A")
    unpinned_second = await generate(engine, "survive-b2", inherited_b + tokens(50), "survive-B")
    assert second.cached_tokens >= 0.9 * len(inherited_a)
    assert unpinned_second.cached_tokens < 0.1 * len(inherited_b)
    after = await engine.pin_stats()
    # The next turn was admitted and reused the blocks: the pin handed off.
    assert after.pin_hits == before.pin_hits + 1
    assert after.pinned_programs == 0 and after.pinned_blocks == 0


async def test_expiry_frees_the_blocks(engine: InProcessEngine) -> None:
    before = await engine.pin_stats()
    await generate(engine, "expire-1", tokens(600), "expire-A", pin_s=0.5)
    assert (await engine.pin_stats()).pinned_programs == before.pinned_programs + 1

    async def expired() -> bool:
        return (await engine.pin_stats()).pins_expired > before.pins_expired

    await poll_until(expired)
    stats = await engine.pin_stats()
    assert stats.pinned_programs == 0 and stats.pinned_blocks == 0
    assert not await engine.set_pin("expire-A", 10)  # nothing left to pin


async def test_pressure_gives_up_the_least_valuable_pin_first(engine: InProcessEngine) -> None:
    before = await engine.pin_stats()
    await generate(engine, "pressure-a", tokens(1500), "pressure-A", pin_s=1.0)
    await generate(engine, "pressure-b", tokens(1500), "pressure-B", pin_s=1.0)
    assert await engine.set_pin("pressure-A", 60, value=1.0)
    assert await engine.set_pin("pressure-B", 60, value=5.0)
    held = await engine.pin_stats()
    assert held.pinned_programs == 2 and held.pinned_blocks == 24
    # 24 of 40 blocks pinned; this request needs 27: one pin has to go, A's.
    done = await generate(engine, "pressure-c", tokens(3400), "pressure-C")
    assert done.finish_reason == "length"
    after = await engine.pin_stats()
    assert after.pins_released_pressure == before.pins_released_pressure + 1
    assert not await engine.set_pin("pressure-A", 60)
    assert await engine.release_pin("pressure-B")
    assert (await engine.pin_stats()).pinned_programs == 0


async def test_every_request_completes_under_pressure(engine: InProcessEngine) -> None:
    """Eight programs, two turns each, every turn asking for a long pin: far more than 40 blocks."""
    first_turns: dict[int, Completion] = {}
    prompts = {i: tokens(1400) for i in range(8)}

    async def turn(i: int, second: bool) -> None:
        prompt = prompts[i] + (first_turns[i].token_ids + tokens(100) if second else ())
        done = await generate(engine, f"many-{i}-{int(second)}", prompt, f"many-{i}", pin_s=60.0, n=16)
        assert done.completion_tokens == 16
        first_turns[i] = done

    for second in (False, True):
        async with anyio.create_task_group() as tg:
            for i in range(8):
                tg.start_soon(turn, i, second)
    stats = await engine.pin_stats()
    assert stats.pins_released_pressure > 0 and stats.pinned_blocks <= BLOCKS
    for i in range(8):
        await engine.release_pin(f"many-{i}")
    assert (await engine.pin_stats()).pinned_programs == 0


async def test_continuum_pins_keep_a_newcomer_waiting_until_nothing_runs(engine: InProcessEngine) -> None:
    """Continuum's hard pins: a newcomer that does not fit beside them waits while a request runs.

    Two pins of 12 blocks; a running request growing to 8; a newcomer of 18
    blocks (plus one to decode). With soft pins it would get in at once by
    giving one up, and finish first (4 tokens against 400); here it waits
    until the running request has finished, and then the pin that ends last
    (B's) goes, A's stays.
    """
    mode = PIN_MODE_CONTINUUM
    before = await engine.pin_stats()
    await generate(engine, "hard-a", tokens(1500), "hard-A", pin_s=60.0, mode=mode)
    await generate(engine, "hard-b", tokens(1500), "hard-B", pin_s=120.0, mode=mode)
    finished: list[str] = []
    running = anyio.Event()

    async def long_request() -> None:
        request = GenerateRequest(
            "hard-r",
            TokenPrompt(tokens(500)),
            SamplingOptions(max_tokens=400, ignore_eos=True),
            0,
            {METADATA_PROGRAM_ID: "hard-R", METADATA_PIN_MODE: mode},
        )
        async with aclosing(engine.stream(request)) as stream:
            async for _ in stream:
                running.set()
        finished.append("R")

    async def newcomer() -> None:
        await running.wait()
        await generate(engine, "hard-c", tokens(2300), "hard-C", mode=mode)
        finished.append("C")

    async with anyio.create_task_group() as tg:
        tg.start_soon(long_request)
        tg.start_soon(newcomer)
    assert finished == ["R", "C"]
    after = await engine.pin_stats()
    assert after.pins_released_pressure == before.pins_released_pressure + 1
    assert await engine.release_pin("hard-A") and not await engine.release_pin("hard-B")
    assert (await engine.pin_stats()).pinned_programs == 0


#: Output tokens of each filler in the abort test: far more than the test needs (it aborts them), within
#: the cache: four fillers of 8 + 880 tokens (7 blocks each) beside a pinned 804-token context (7 blocks)
#: use 35 of the 40 blocks, so none is preempted and no pin is released under pressure.
FILL_TOKENS = 880


async def test_abort_releases_the_programs_pin(engine: InProcessEngine) -> None:
    """A program's request aborted while it waits (the engine is full): its pin goes, unused."""
    await generate(engine, "abort-a1", tokens(800), "abort-A", pin_s=60.0)
    before = await engine.pin_stats()
    assert before.pinned_programs == 1

    async def long(i: int) -> None:
        await generate(engine, f"abort-fill-{i}", tokens(8), f"abort-fill-{i}", n=FILL_TOKENS)

    async with anyio.create_task_group() as tg:
        for i in range(4):  # max_num_seqs=4: the next request waits
            tg.start_soon(long, i)

        async def full() -> bool:
            return engine.load().running == 4

        await poll_until(full)
        request = GenerateRequest(
            "abort-a2", TokenPrompt(tokens(100)), SamplingOptions(max_tokens=4), 0, {METADATA_PROGRAM_ID: "abort-A"}
        )
        chunks: list[TokenDelta | Completion] = []

        async def read() -> None:
            async with aclosing(engine.stream(request)) as stream:
                async for chunk in stream:
                    chunks.append(chunk)

        async with anyio.create_task_group() as reader:
            reader.start_soon(read)

            async def waits() -> bool:
                return engine.load().waiting == 1

            await poll_until(waits)  # in vLLM's waiting queue, behind the fillers
            reader.cancel_scope.cancel()  # closing the stream aborts the waiting request
        assert not chunks, "expected to wait behind the fillers"

        async def released() -> bool:
            return (await engine.pin_stats()).pinned_programs == 0

        await poll_until(released)
        tg.cancel_scope.cancel()
    after = await engine.pin_stats()
    assert after.pins_released == before.pins_released + 1 and after.pin_hits == before.pin_hits


async def test_a_prefix_cache_reset_drops_the_pins(engine: InProcessEngine) -> None:
    await generate(engine, "reset-1", tokens(600), "reset-A", pin_s=60.0)
    assert (await engine.pin_stats()).pinned_programs == 1
    assert await engine.vllm.reset_prefix_cache()  # refused while any block is referenced
    stats = await engine.pin_stats()
    assert stats.pinned_programs == 0 and stats.pinned_blocks == 0


def test_the_plug_in_classes_are_what_vllm_loads() -> None:
    """Both by the dotted path a user passes to --scheduler-cls; the async one for GPUs with async scheduling."""
    from vllm.utils.import_utils import resolve_obj_by_qualname
    from vllm.v1.core.sched.async_scheduler import AsyncScheduler
    from vllm.v1.core.sched.scheduler import Scheduler

    sync = resolve_obj_by_qualname("runtime.vllm_scheduler.PinningScheduler")
    asynchronous = resolve_obj_by_qualname("runtime.vllm_scheduler.AsyncPinningScheduler")
    assert issubclass(sync, Scheduler) and not issubclass(sync, AsyncScheduler)
    assert issubclass(asynchronous, AsyncScheduler)
    # The pinning overrides come before vLLM's in both.
    for cls in (sync, asynchronous):
        assert cls._free_blocks is not Scheduler._free_blocks and cls.schedule is not Scheduler.schedule
