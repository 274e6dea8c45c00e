"""The simulator's host-memory KV tier: offload, prefetch, loads on admission, capacity, lost stores.

Round figures: 128-token blocks of 1,000 bytes per token (128,000 bytes a
block), copied to host memory at 1 MB/s (0.128 s a block) and back at
2 MB/s (0.064 s a block).
"""

from __future__ import annotations

import asyncio
import math
from typing import Any

import pytest

from runtime import Completion, EngineCapabilityError, EngineStats, GenerateRequest, SamplingOptions, TokenPrompt
from runtime.replay import run_virtual
from runtime.replay._sim import CostProfile, SimEngine
from runtime.replay._sim._host import HostTier, TransferLink
from runtime.replay._sim._kv import BlockManager
from runtime.replay._sim._scheduler import Scheduler

from ._builders import token_request
from ._drive import one_step, request
from .conftest import profile_data

PREFIX = list(range(1000, 1384))  # three full blocks of 128
BLOCK_BYTES = 128 * 1000
D2H_S = BLOCK_BYTES / 1e6  # seconds per block, device to host
H2D_S = BLOCK_BYTES / 2e6  # host to device


def host_profile(**overrides: Any) -> CostProfile:
    data = profile_data(
        kv_bytes_per_token=1000,
        host_kv_bytes=100 * BLOCK_BYTES,
        device_to_host_bytes_per_s=1e6,
        host_to_device_bytes_per_s=2e6,
    )
    data.update(overrides)
    return CostProfile.model_validate(data)


def drive(sched: Scheduler, now: float = 0.0) -> float:
    """Run steps until idle, waking for copies from host memory; checks the block bookkeeping; returns the time."""
    while True:
        end = one_step(sched, now)
        if end is not None:
            now = end
            continue
        event = sched.next_event()
        if event == math.inf:
            return now
        now = event


def fill_with_others(sched: Scheduler, now: float, count: int = 3) -> float:
    """Requests with prompts of their own that take the whole 12-block cache between them."""
    for i in range(count):
        sched.add(request(f"o{i}", list(range(10000 * (i + 1), 10000 * (i + 1) + 600)), 1, arrival=now))
        now = drive(sched, now)
    return now


# -- links and host memory ---------------------------------------------------


def test_a_link_runs_copies_one_after_another_at_its_bandwidth() -> None:
    link = TransferLink(1e6)
    assert link.issue(128_000, 1.0) == 1.0 + 0.128
    # Issued before the first ended: it starts when the link is free.
    assert link.issue(256_000, 1.05) == 1.0 + 0.128 + 0.256
    # Issued after the link went idle: it starts at once.
    assert link.issue(128_000, 5.0) == 5.0 + 0.128
    assert link.bytes_moved == 512_000


def test_host_memory_drops_its_least_recently_used_blocks_past_capacity() -> None:
    kv = BlockManager(16, 128)
    host = HostTier(
        kv,
        "lru",
        capacity_blocks=4,
        block_bytes=BLOCK_BYTES,
        host_to_device_bytes_per_s=2e6,
        device_to_host_bytes_per_s=1e6,
    )
    a, b, c = [11, 12, 13], [21, 22], [31, 32]
    for hashes in (a, b, c):
        blocks = kv.allocate(len(hashes))
        assert blocks is not None
        kv.register_many(blocks, hashes)
    host.store(a, 0.0)
    host.store(b, 0.0)
    host.settle(10.0)
    assert [host.holds(h) for h in (*a, *b)] == [False, True, True, True, True]  # 11 went first
    host.load([12], 10.0)  # a load makes its blocks the most recently used
    host.store(c, 10.0)
    host.settle(20.0)
    # 13 and 21 were the least recently used; 12 was loaded after them.
    assert [host.holds(h) for h in (12, 13, 21, 22, 31, 32)] == [True, False, False, True, True, True]
    assert host.num_held == 4
    assert host.bytes_offloaded == 7 * BLOCK_BYTES and host.bytes_loaded == BLOCK_BYTES


# -- directed: offload and prefetch -------------------------------------------


def test_offload_then_prefetch_brings_a_programs_context_back_without_recompute() -> None:
    profile = host_profile()

    async def main() -> tuple[list[Any], Completion, EngineStats]:
        marks: list[Any] = []
        async with SimEngine(profile, kv_blocks=12, host_tier="directed") as engine:
            assert engine.supports_offload
            await engine.generate(token_request("p1", PREFIX, program_id="p"))
            assert await engine.offload("p")
            marks.append(engine.load().kv_usage)  # held while the copy runs
            await asyncio.sleep(3 * D2H_S + 1e-9)
            marks.append(engine.load().kv_usage)
            marks.append(engine.cached_prefix(PREFIX).blocks)  # freed, still cached (the first to go)
            for i in range(3):  # others take the cache
                await engine.generate(token_request(f"o{i}", list(range(10000 * (i + 1), 10000 * (i + 1) + 600))))
            marks.append(engine.cached_prefix(PREFIX).blocks)
            assert await engine.prefetch("p", 30.0)
            marks.append(engine.cached_prefix(PREFIX).blocks)  # not usable before the copy ends
            await asyncio.sleep(3 * H2D_S + 1e-9)
            marks.append(engine.cached_prefix(PREFIX).blocks)
            marks.append((await engine.pin_stats()).pinned_blocks)
            turn = await engine.generate(token_request("p2", [*PREFIX, 7, 8, 9], program_id="p"))
            engine.scheduler.kv.check()
            return marks, turn, await engine.stats()

    marks, turn, stats = run_virtual(main)
    assert marks == [3 / 12, 0.0, 3, 0, 0, 3, 3]
    assert turn.cached_tokens == 384  # the whole context, none of it recomputed
    # The turn prefilled only its 3 new tokens after the 384 loaded ones.
    assert turn.ttft_s == pytest.approx(profile.step_time([(384, 3)], 0, 0), abs=1e-12)
    assert stats.bytes_offloaded == 3 * BLOCK_BYTES
    assert stats.bytes_loaded == 3 * BLOCK_BYTES
    assert stats.host_hit_tokens == 0  # prefetched, then a GPU cache hit
    assert stats.pin_hits == 1


def test_offload_and_prefetch_take_the_modelled_transfer_time() -> None:
    sched = Scheduler(host_profile(), kv_blocks=12, host_tier="directed")
    host = sched.host
    assert host is not None
    a1 = request("a1", PREFIX, 1, program_id="a")
    sched.add(a1)
    now = drive(sched)
    sched.add(request("b1", PREFIX[:256] + list(range(7000, 7128)), 1, program_id="b", arrival=now))
    now = drive(sched, now)
    t = now
    assert sched.offload("a", t)
    assert sched.offload("b", t)  # queued behind a's copy on the device-to-host link
    assert host.d2h.free_at == t + 3 * BLOCK_BYTES / 1e6 + 1 * BLOCK_BYTES / 1e6  # b's first two blocks are a's
    used = sched.kv.num_used
    sched.settle(t + 3 * D2H_S)  # a's copy ended, b's not yet
    assert sched.kv.num_used == used - 1  # a's third block freed; the shared two are b's until its copy ends
    sched.settle(t + 4 * D2H_S + 1e-9)
    assert sched.kv.num_used == 0
    sched.kv.check()
    now = fill_with_others(sched, t + 1.0)
    assert sched.kv.cached_blocks(a1.hashes) == 0
    t = now
    assert sched.prefetch("a", 5.0, t)
    assert host.h2d.free_at == t + 3 * BLOCK_BYTES / 2e6
    sched.settle(host.h2d.free_at)
    pin = sched.kv.pin_of("a")
    assert pin is not None and len(pin.blocks) == 3
    assert pin.expiry == host.h2d.free_at + 5.0
    sched.kv.check()


def test_a_request_that_needs_blocks_a_prefetch_is_loading_waits_for_them() -> None:
    sched = Scheduler(host_profile(), kv_blocks=12, host_tier="directed")
    host = sched.host
    assert host is not None
    sched.add(request("p1", PREFIX, 1, program_id="p"))
    now = drive(sched)
    assert sched.offload("p", now)
    now = fill_with_others(sched, now + 1.0)
    assert sched.prefetch("p", 5.0, now)
    turn = request("p2", [*PREFIX, 7, 8, 9], 1, program_id="p", arrival=now)
    sched.add(turn)
    drive(sched, now)
    assert turn.cached_tokens == 384
    assert turn.first_scheduled == pytest.approx(now + 3 * H2D_S, abs=1e-12)
    assert host.bytes_loaded == 3 * BLOCK_BYTES  # loaded once, not again for the request
    assert host.host_hit_tokens == 0


# -- loads on admission --------------------------------------------------------


def test_lru_mode_loads_a_prefix_the_gpu_evicted_instead_of_recomputing_it() -> None:
    sched = Scheduler(host_profile(), kv_blocks=12, host_tier="lru")
    host = sched.host
    assert host is not None
    a = request("a", PREFIX, 1, program_id="p")
    sched.add(a)
    now = drive(sched)
    assert host.bytes_offloaded == 3 * BLOCK_BYTES  # every computed block is written through
    now = fill_with_others(sched, now + 1.0)
    assert sched.kv.cached_blocks(a.hashes) == 0
    b = request("b", [*PREFIX, 7, 8, 9], 1, program_id="p", arrival=now)
    sched.add(b)
    assert sched.schedule(now) is None  # b waits for its blocks, out of the queue
    assert sched.num_waiting == 0 and b.loading
    assert sched.next_event() == now + 3 * BLOCK_BYTES / 2e6
    end = drive(sched, now)
    assert b.cached_tokens == 384  # counted as cached, as vLLM counts KV-connector hits
    assert host.host_hit_tokens == 384
    assert b.first_scheduled == pytest.approx(now + 3 * H2D_S, abs=1e-12)
    profile = sched.profile
    assert end == pytest.approx(now + 3 * H2D_S + profile.step_time([(384, 3)], 0, 0), abs=1e-12)


def test_a_block_evicted_before_its_store_ended_is_not_loaded() -> None:
    # A slow link: 128 s per block to host memory.
    sched = Scheduler(host_profile(device_to_host_bytes_per_s=1e3), kv_blocks=12, host_tier="lru")
    host = sched.host
    assert host is not None
    a = request("a", PREFIX, 1)
    sched.add(a)
    now = drive(sched)
    now = fill_with_others(sched, now)  # evicts a's blocks while their store runs
    late = now + 10_000.0
    b = request("b", [*PREFIX, 7], 1, arrival=late)
    sched.add(b)
    drive(sched, late)
    assert b.cached_tokens == 0 and host.host_hit_tokens == 0 and host.bytes_loaded == 0
    assert host.stores_lost >= 3 and not any(host.holds(h) for h in a.hashes[:3])


def test_an_aborted_load_gives_its_blocks_back() -> None:
    sched = Scheduler(host_profile(), kv_blocks=12, host_tier="lru")
    sched.add(request("a", PREFIX, 1))
    now = fill_with_others(sched, drive(sched) + 1.0)
    b = request("b", [*PREFIX, 7], 1, arrival=now)
    sched.add(b)
    assert sched.schedule(now) is None and b.loading
    assert sched.abort("b")
    assert sched.kv.num_used == 0
    drive(sched, now)
    sched.kv.check()
    assert not sched.has_work


# -- capability, defaults, counters ----------------------------------------------


def test_an_engine_without_the_tier_refuses_clearly(profile: CostProfile) -> None:
    async def main() -> EngineStats:
        async with SimEngine(host_profile(), kv_blocks=12) as engine:  # the profile has a tier; the engine not
            assert not engine.supports_offload
            with pytest.raises(EngineCapabilityError, match="no host-memory KV tier, so it cannot offload"):
                await engine.offload("p")
            with pytest.raises(EngineCapabilityError, match="cannot prefetch"):
                await engine.prefetch("p", 1.0)
            return await engine.stats()

    stats = run_virtual(main)
    assert stats.bytes_offloaded is None and stats.bytes_loaded is None and stats.host_hit_tokens is None
    assert stats.recomputed_tokens == 0
    with pytest.raises(ValueError, match="needs the cost profile's kv_bytes_per_token"):
        SimEngine(profile, host_tier="lru")


def test_a_prefetch_needs_a_positive_ttl() -> None:
    async def main() -> None:
        async with SimEngine(host_profile(), kv_blocks=12, host_tier="directed") as engine:
            with pytest.raises(ValueError, match="ttl_s"):
                await engine.prefetch("p", 0.0)
            assert not await engine.prefetch("p", 1.0)  # nothing known of it
            assert not await engine.offload("p")

    run_virtual(main)


def test_preemptions_count_the_computed_tokens_they_throw_away(profile: CostProfile) -> None:
    sched = Scheduler(profile, kv_blocks=4)
    r1 = request("r1", list(range(200)), 100)
    r2 = request("r2", list(range(5000, 5200)), 100)
    sched.add(r1)
    sched.add(r2)
    drive(sched)
    assert sched.preemptions == 1 and r2.preemptions == 1
    assert sched.recomputed_tokens == 256  # r2 had filled its two blocks when r1 needed a third


@pytest.mark.parametrize("mode", ["lru", "directed"])
@pytest.mark.parametrize("seed", range(4))
def test_under_pressure_every_request_finishes_and_the_books_balance(mode: Any, seed: int) -> None:
    """Programs whose growing contexts overflow a small GPU cache, turns of several at a time, offloads between."""
    import random

    rng = random.Random(seed)
    sched = Scheduler(host_profile(host_kv_bytes=40 * BLOCK_BYTES), kv_blocks=24, host_tier=mode)
    contexts = {f"p{i}": list(range(100_000 * (i + 1), 100_000 * (i + 1) + rng.randrange(100, 700))) for i in range(6)}
    now = 0.0
    turns = []
    for round_ in range(5):
        for program, context in contexts.items():
            context += [rng.randrange(3, 30000) for _ in range(rng.randrange(1, 200))]
            r = request(f"{program}-{round_}", list(context), rng.randrange(1, 40), program_id=program, arrival=now)
            sched.add(r)
            turns.append(r)
        for _ in range(rng.randrange(5, 60)):  # run a while, then move programs in and out of host memory
            end = one_step(sched, now)
            if end is None:
                break
            now = end
        for program in rng.sample(sorted(contexts), 2):
            sched.offload(program, now)
        sched.prefetch(rng.choice(sorted(contexts)), rng.uniform(0.01, 1.0), now)
        sched.kv.check()
        now = drive(sched, now)
    now = drive(sched, now)
    assert all(r.finished for r in turns)
    host = sched.host
    assert host is not None and host.num_held <= 40
    sched.settle(now + 1e6)
    sched.kv.expire_pins(now + 1e6)
    sched.kv.check()
    assert sched.kv.num_used == 0


@pytest.mark.parametrize("mode", ["lru", "directed"])
def test_offloads_and_prefetches_during_decode_runs_keep_the_engine_consistent(mode: Any) -> None:
    """Programs decoding long replies (runs of identical decode steps) while another task moves them about."""
    import random

    rng = random.Random(7)

    async def program(engine: SimEngine, name: str) -> list[int]:
        first = 1000 + 10_000 * int(name[1:])
        context = list(range(first, first + 300))
        cached = []
        for turn in range(4):
            context += [rng.randrange(3, 30000) for _ in range(rng.randrange(10, 150))]
            request = GenerateRequest(
                f"{name}-{turn}",
                TokenPrompt(tuple(context)),
                SamplingOptions(max_tokens=rng.randrange(20, 120), ignore_eos=True),
                0,
                {"program_id": name},
            )
            done = await engine.generate(request)
            cached.append(done.cached_tokens)
            context += done.token_ids
            await asyncio.sleep(rng.uniform(0.0, 0.5))
        return cached

    async def mover(engine: SimEngine, names: list[str]) -> None:
        for _ in range(40):
            await asyncio.sleep(rng.uniform(0.01, 0.2))
            if rng.random() < 0.5:
                await engine.offload(rng.choice(names))
            else:
                await engine.prefetch(rng.choice(names), rng.uniform(0.05, 1.0))
            engine.scheduler.kv.check()

    async def main() -> tuple[list[list[int]], EngineStats]:
        async with SimEngine(host_profile(), kv_blocks=20, host_tier=mode) as engine:
            names = [f"p{i}" for i in range(5)]
            move = asyncio.create_task(mover(engine, names))
            results = await asyncio.gather(*(program(engine, n) for n in names))
            await move
            engine.scheduler.kv.check()
            return list(results), await engine.stats()

    results, stats = run_virtual(main)
    assert len(results) == 5 and all(len(r) == 4 for r in results)
    assert stats.bytes_offloaded and stats.bytes_offloaded > 0
