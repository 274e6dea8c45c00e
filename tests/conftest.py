"""Shared fixtures: real vLLM engines (tiny model), each started once per test session.

An engine takes tens of seconds to start on 2 cores, so the whole session
shares one in-process engine behind one Runtime (``rt``), and one with a
small cache (``small_cache_engine``) for the pin tests; a module that needs
another policy or other runtime options runs its own Runtime over one of
them with ``close_engines=False``.  Tests that need a server or a
differently configured engine start their own.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

# Keep vLLM's per-step INFO logs out of test output.
os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")


@pytest.fixture(scope="session")
def tiny_model() -> Path:
    """The tiny random-weight Llama, prepared once (idempotent, no hub access)."""
    from runtime import prepare_model

    return prepare_model("tiny")


@pytest.fixture(scope="session")
async def rt(tiny_model: Path) -> AsyncIterator[object]:
    """A Runtime over one in-process engine on the tiny model.

    ``max_num_seqs=4`` lets the priority test fill the engine and watch the
    waiting queue's order.
    """
    from runtime import InProcessEngine, Runtime

    engine = InProcessEngine(tiny_model, name="tiny-0", max_num_seqs=4, engine_args={"enforce_eager": True})
    async with Runtime([engine]) as runtime:
        yield runtime


#: KV blocks of ``small_cache_engine`` (128 tokens each): a few 1,500-token prompts fill it.
SMALL_CACHE_BLOCKS = 40


@pytest.fixture(scope="session")
async def small_cache_engine(tiny_model: Path) -> AsyncIterator[object]:
    """An in-process engine on the tiny model with a 40-block cache, so that pins matter; see :func:`fresh_cache`."""
    from runtime import InProcessEngine

    engine = InProcessEngine(
        tiny_model, name="pins-0", num_kv_blocks=SMALL_CACHE_BLOCKS, max_model_len=4096, max_num_seqs=4
    )
    async with engine:
        yield engine


async def fresh_cache(engine: Any) -> None:
    """Make a shared engine's cache as a new engine's: nothing in flight, no pin, no cached prefix.

    A module that shares ``small_cache_engine`` starts with it, so that what
    earlier modules cached cannot hit (or be evicted) in its tests.
    """
    from tests.runtime._helpers import poll_until, wait_until_idle

    await wait_until_idle(engine)

    async def unpinned() -> bool:
        return (await engine.pin_stats()).pinned_programs == 0

    await poll_until(unpinned)
    assert await engine.vllm.reset_prefix_cache(), "vLLM refused to reset the prefix cache: a block is still in use"
