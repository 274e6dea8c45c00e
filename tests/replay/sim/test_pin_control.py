"""Engine control on the simulator: pins set, changed and released after a request finished.

And one policy object driving it through the runtime in virtual time, the
way the KV-pinning policy will drive real engines.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from runtime import (
    CallFinished,
    CallInfo,
    Engine,
    PinStats,
    Program,
    Route,
    ToolStarted,
    VLLMPolicy,
)
from runtime.replay import CostProfile, SimEngine, TraceProgram, run_virtual

from ._builders import program, replay, token_request

PREFIX = tuple(range(1000, 1384))  # three full blocks of 128


async def _others_fill_the_cache(engine: SimEngine) -> None:
    for i in range(3):
        await engine.generate(token_request(f"o{i}", tuple(range(10000 * (i + 1), 10000 * (i + 1) + 600))))


def test_a_pin_set_after_the_request_finished_keeps_its_cached_blocks(profile: CostProfile) -> None:
    async def main(pin: bool) -> tuple[int, bool, PinStats, PinStats]:
        async with SimEngine(profile, kv_blocks=12) as engine:
            assert engine.supports_pins
            await engine.generate(token_request("p1", PREFIX, program_id="p"))  # no pin asked for at finish
            pinned = await engine.set_pin("p", 30.0) if pin else False
            during = await engine.pin_stats()
            await _others_fill_the_cache(engine)
            turn = await engine.generate(token_request("p2", (*PREFIX, 7, 8, 9), program_id="p"))
            return turn.cached_tokens, pinned, during, await engine.pin_stats()

    cached, pinned, during, after = run_virtual(lambda: main(True))
    assert pinned and cached == 384
    assert (during.pins, during.pinned_blocks, during.pinned_programs) == (1, 3, 1)
    assert (after.pin_hits, after.pinned_blocks, after.pinned_programs) == (1, 0, 0)
    cached, pinned, _, _ = run_virtual(lambda: main(False))
    assert not pinned and cached == 0  # without the pin the others evicted it


def test_set_pin_moves_a_live_pins_expiry_and_release_lets_go(profile: CostProfile) -> None:
    async def main() -> tuple[bool, bool, PinStats, bool, bool, PinStats]:
        async with SimEngine(profile, kv_blocks=64) as engine:
            unknown = await engine.set_pin("nobody", 5.0)
            await engine.generate(token_request("p1", PREFIX, program_id="p", pin_ttl_s=1.0))
            extended = await engine.set_pin("p", 100.0)
            await asyncio.sleep(50)  # past the first expiry, before the second
            alive = await engine.pin_stats()
            released = await engine.release_pin("p")
            again = await engine.release_pin("p")
            return unknown, extended, alive, released, again, await engine.pin_stats()

    unknown, extended, alive, released, again, end = run_virtual(main)
    assert not unknown and extended
    assert (alive.pins, alive.pins_expired, alive.pinned_programs) == (1, 0, 1)
    assert released and not again
    assert (end.pins_released, end.pinned_blocks, end.pins_expired) == (1, 0, 0)


def test_a_zero_ttl_releases_and_load_reports_pinned_blocks(profile: CostProfile) -> None:
    async def main() -> tuple[int | None, int | None, bool, int | None]:
        async with SimEngine(profile, kv_blocks=64) as engine:
            await engine.generate(token_request("p1", PREFIX, program_id="p", pin_ttl_s=10.0))
            load = engine.load()
            gone = await engine.set_pin("p", 0)
            assert load.block_size == 128 and load.kv_tokens == 64 * 128
            return load.pinned_blocks, load.kv_blocks, gone, engine.load().pinned_blocks

    held, total, gone, after = run_virtual(main)
    # 384 prompt tokens in three blocks; the one generated token never enters the cache.
    assert held == 3 and total == 64 and gone and after == 0


class PinDuringToolsPolicy(VLLMPolicy):
    """The `vllm` decision, plus: pin a program's KV on its last engine for 5 s when a tool starts."""

    name = "test-pin-during-tools"

    def __init__(self) -> None:
        super().__init__()
        self.last_engine: dict[str, str] = {}
        self.pinned: list[bool] = []

    def route(self, call: CallInfo, engines: Sequence[Engine]) -> Route:
        # Back to the engine holding the program's pin, when it can take the call.
        home = self.last_engine.get(call.program.id)
        chosen = super().route(call, engines)
        for engine in engines:
            if engine.name == home:
                return Route(engine, chosen.priority)
        return chosen

    async def on_call_finished(self, event: CallFinished) -> None:
        if event.engine is not None:
            self.last_engine[event.call.program.id] = event.engine

    async def on_tool_started(self, event: ToolStarted) -> None:
        engine = self.host.engine(self.last_engine[event.program.id])
        self.pinned.append(await engine.set_pin(event.program.id, 5.0))

    async def on_program_finished(self, program: Program) -> None:
        engine = self.last_engine.pop(program.id, None)
        if engine is not None:
            await self.host.engine(engine).release_pin(program.id)


def _agent_trace() -> list[TraceProgram]:
    return [program(f"p{p}", [("bash", 1.0), ("bash", 1.0), None], arrival_s=0.2 * p) for p in range(6)]


def test_one_policy_object_drives_simulated_engines_through_the_runtime(profile: CostProfile) -> None:
    def totals_of(policy: VLLMPolicy) -> dict[str, int]:
        # A cache small enough that other programs' prompts evict an unpinned one.
        engines = [SimEngine(profile, name=f"sim-{i}", kv_blocks=40) for i in range(2)]
        return replay(policy, _agent_trace(), engines).totals  # every program finished without an error

    policy = PinDuringToolsPolicy()
    totals = totals_of(policy)
    assert policy.pinned and all(policy.pinned)
    assert totals["pins"] == len(policy.pinned) == 12  # two tool pauses in each of six programs
    assert totals["pin_hits"] == 12 and totals["pins_expired"] == 0
    baseline = totals_of(VLLMPolicy())
    assert baseline["pins"] == 0
