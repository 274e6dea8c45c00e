"""Fixtures of the gateway tests: one real engine (tiny model) behind a Runtime with the agentrt policy.

The engine pins KV blocks (in-process engines do), so a session's second
turn can be seen hitting its pin.  Tests that need other gateway options
start another :class:`~runtime.Gateway` on the same runtime: a gateway is
an HTTP front, cheap to start, while an engine takes tens of seconds.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from runtime import AgentrtPolicy, Gateway, InProcessEngine, Runtime


@pytest.fixture(scope="session")
async def gw_runtime(tiny_model: Path) -> AsyncIterator[Runtime]:
    engine = InProcessEngine(
        tiny_model, name="gw-0", max_num_seqs=8, max_model_len=2048, engine_args={"enforce_eager": True}
    )
    # A tool the policy has never seen is pinned for default_ttl_s (2 s); a cold engine's first structured-output
    # grammars can take longer to compile than that before the next turn is admitted.  These tests are about the
    # gateway carrying the pin, not about the TTL the policy picks.
    async with Runtime([engine], policy=AgentrtPolicy(default_ttl_s=30.0)) as runtime:
        yield runtime


@pytest.fixture(scope="session")
async def gateway(gw_runtime: Runtime) -> AsyncIterator[Gateway]:
    async with Gateway(gw_runtime, port=0, idle_timeout_s=5) as gw:
        yield gw
