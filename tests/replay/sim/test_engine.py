"""SimEngine through the Engine API, on the virtual clock."""

from __future__ import annotations

import asyncio
from contextlib import aclosing

import pytest

from runtime import ChatPrompt, Completion, EngineRequestError, GenerateRequest
from runtime.replay._sim import CostProfile, SimEngine
from runtime.replay._vclock import run_virtual

from ._builders import token_request

PREFIX = tuple(range(1000, 1384))


def test_one_request_reports_modelled_times_and_fields(profile: CostProfile) -> None:
    async def main() -> Completion:
        async with SimEngine(profile, name="sim-a", vocab_size=100, first_token_id=10) as engine:
            return await engine.generate(token_request("r", tuple(range(1000)), 3))

    c = run_virtual(main)
    prefill = 0.001 + 1000 / profile.prefill_rate(500)
    assert (c.engine, c.model, c.finish_reason) == ("sim-a", "tiny", "length")
    assert (c.prompt_tokens, c.completion_tokens, c.cached_tokens) == (1000, 3, 0)
    assert len(c.token_ids) == 3 and all(10 <= t < 100 for t in c.token_ids)
    assert c.ttft_s == pytest.approx(prefill)
    assert c.e2e_s == pytest.approx(prefill + 2 * 0.011)
    assert c.queued_s == 0.0
    assert c.prompt_token_ids == tuple(range(1000))


def test_stream_yields_one_delta_then_the_completion(profile: CostProfile) -> None:
    async def main() -> list[object]:
        async with SimEngine(profile) as engine:
            return [chunk async for chunk in engine.stream(token_request("r", (1, 2, 3), 20))]

    first, last = run_virtual(main)
    assert isinstance(last, Completion)
    assert first.token_ids == last.token_ids[:1]  # type: ignore[attr-defined]


def test_chat_prompts_are_rejected(profile: CostProfile) -> None:
    async def main() -> None:
        async with SimEngine(profile) as engine:
            await engine.generate(GenerateRequest("r", ChatPrompt.of([{"role": "user", "content": "hi"}])))

    with pytest.raises(EngineRequestError, match="TokenPrompt"):
        run_virtual(main)


def test_closing_a_stream_early_aborts_the_request(profile: CostProfile) -> None:
    async def main() -> tuple[float | None, int | None, float]:
        async with SimEngine(profile) as engine:
            async with aclosing(engine.stream(token_request("r", tuple(range(1000)), 500))) as chunks:
                async for _ in chunks:
                    break
            stats = await engine.stats()
            await asyncio.sleep(1)
            return stats.kv_usage, stats.running, asyncio.get_running_loop().time()

    usage, running, _ = run_virtual(main)
    assert usage == 0.0 and running == 0


def test_pins_from_metadata_and_stats(profile: CostProfile) -> None:
    async def main() -> tuple[int, int, dict[str, int | None]]:
        async with SimEngine(profile, kv_blocks=12) as engine:
            await engine.generate(token_request("p1", PREFIX, 1, program_id="p", pin_ttl_s=30.0))
            for i in range(3):
                await engine.generate(token_request(f"o{i}", tuple(range(10000 * (i + 1), 10000 * (i + 1) + 600)), 1))
            turn = await engine.generate(token_request("p2", (*PREFIX, 7, 8, 9), 1, program_id="p", pin_ttl_s=30.0))
            unpinned = await engine.release_pin("p")
            stats = await engine.stats()
            return (
                turn.cached_tokens,
                int(unpinned),
                {k: getattr(stats, k) for k in ("pins", "pin_hits", "pins_expired", "pins_released_pressure")},
            )

    cached, unpinned, counters = run_virtual(main)
    assert cached == 384 and unpinned == 1
    assert counters == {"pins": 2, "pin_hits": 1, "pins_expired": 0, "pins_released_pressure": 0}


def test_concurrent_requests_queue_and_preempt_on_a_small_cache(profile: CostProfile) -> None:
    async def main() -> tuple[list[Completion], int | None, int | None]:
        async with SimEngine(profile, kv_blocks=12, max_num_seqs=4) as engine:
            tasks = [
                asyncio.create_task(engine.generate(token_request(f"r{i}", range(i * 1000, i * 1000 + 300), 200)))
                for i in range(12)
            ]
            await asyncio.sleep(0.5)
            waiting = (await engine.stats()).waiting
            done = await asyncio.gather(*tasks)
            return done, waiting, (await engine.stats()).preemptions

    done, waiting, preemptions = run_virtual(main)
    assert [c.completion_tokens for c in done] == [200] * 12
    assert waiting is not None and waiting >= 8
    assert preemptions is not None and preemptions > 0
    assert max(c.queued_s or 0 for c in done) > 1.0


def test_same_seed_same_results_and_seed_changes_tokens(profile: CostProfile) -> None:
    def once(seed: int) -> list[tuple[tuple[int, ...], float]]:
        async def main() -> list[tuple[tuple[int, ...], float]]:
            async with SimEngine(profile, kv_blocks=16, seed=seed) as engine:
                outs = await asyncio.gather(
                    *(engine.generate(token_request(f"r{i}", tuple(range(i, i + 400)), 50)) for i in range(10))
                )
            return [(c.token_ids, c.e2e_s) for c in outs]

        return run_virtual(main)

    assert once(1) == once(1)
    assert [t for t, _ in once(1)] != [t for t, _ in once(2)]
