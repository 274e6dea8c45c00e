"""What the simulator tests build again and again: trace programs, engine requests, a replay through the runtime."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import TypeVar

from runtime import Engine, GenerateRequest, Policy, Runtime, SamplingOptions, TokenPrompt
from runtime.replay import ReplayRun, TraceCall, TraceProgram, Vocabulary, replay_trace, run_virtual

T = TypeVar("T")

#: The simulator's default vocabulary: 32,000 ids, 0-2 special.
VOCABULARY = Vocabulary(32000, frozenset({0, 1, 2}))


def program(
    pid: str,
    tools: Sequence[tuple[str, float] | None],
    *,
    arrival_s: float = 0.0,
    slo_s: float | None = None,
    new_tokens: int = 300,
    output_tokens: int = 8,
) -> TraceProgram:
    """A sequential program: one call per entry of ``tools``, each followed by that ``(tool, seconds)`` or by none."""
    calls = [
        TraceCall(
            id=f"c{i}",
            new_tokens=new_tokens,
            output_tokens=output_tokens,
            tool=t[0] if t else None,
            tool_s=t[1] if t else 0,
        )
        for i, t in enumerate(tools)
    ]
    return TraceProgram(id=pid, arrival_s=arrival_s, slo_s=slo_s, calls=calls)


def chain(
    pid: str, turns: int, *, arrival_s: float = 0.0, slo_s: float | None = None, new_tokens: int = 200
) -> TraceProgram:
    """``turns`` calls of 16 output tokens each, a 0.2 s tool ``t`` between one and the next."""
    tools: list[tuple[str, float] | None] = [("t", 0.2)] * (turns - 1)
    return program(pid, [*tools, None], arrival_s=arrival_s, slo_s=slo_s, new_tokens=new_tokens, output_tokens=16)


def token_request(rid: str, prompt: Iterable[int], max_tokens: int = 1, **metadata: str | float) -> GenerateRequest:
    """An engine request for a token prompt, ``max_tokens`` generated whatever the tokens (EOS ignored)."""
    sampling = SamplingOptions(max_tokens=max_tokens, ignore_eos=True)
    return GenerateRequest(rid, TokenPrompt(tuple(prompt)), sampling, 0, metadata)


def replay_then(
    policy: Policy, programs: Sequence[TraceProgram], engines: Sequence[Engine], then: Callable[[], Awaitable[T]]
) -> tuple[ReplayRun, T]:
    """Replay ``programs`` in virtual time through a runtime on ``engines``; then, the runtime still open, ``then()``.

    Checks that every program finished without an error.
    """

    async def main() -> tuple[ReplayRun, T]:
        async with Runtime(list(engines), policy=policy) as rt:
            run = await replay_trace(programs, rt, vocabulary=VOCABULARY)
            return run, await then()

    run, value = run_virtual(main)
    assert all(p.error is None for p in run.programs), [p.error for p in run.programs]
    return run, value


async def _nothing() -> None:
    return None


def replay(policy: Policy, programs: Sequence[TraceProgram], engines: Sequence[Engine]) -> ReplayRun:
    """Replay ``programs`` in virtual time through a runtime on ``engines``; every program finished without an error."""
    run, _ = replay_then(policy, programs, engines, _nothing)
    return run
