"""Shared fixtures: one real vLLM engine (tiny model) per test session.

An engine takes tens of seconds to start on 2 cores, so the whole session
shares one in-process engine behind one Runtime; tests that need a server or
a differently configured engine start their own.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

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
