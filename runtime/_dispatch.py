"""The dispatcher: one LLM call from a context to an engine and back, and the policy's events.

For each call, in order: the policy's decision (:meth:`Policy.route`:
engine, priority, metadata; or hold it in the admission queue until a later
offer routes it), the engine request, the token stream (each token an
event of the program), failover to another engine when one dies mid-call,
and the bookkeeping of the finished call (node and program usage, service
received, the ``chat`` span's attributes, the policy's
:meth:`~Policy.on_call_finished`).  Contexts reach it through
:meth:`Dispatcher.generate` and the three ``*_started``/``*_finished``
notifications; nothing else of the runtime talks to engines for a call.

The dispatcher is also the :class:`~runtime.PolicyHost` a policy is bound to.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeVar

import anyio

import telemetry
from telemetry import names
from workflows import ToolCall, Usage

from ._clock import now
from ._engines._base import (
    METADATA_NODE_ID,
    METADATA_PIN_TTL_S,
    METADATA_PROGRAM_ID,
    METADATA_WORKFLOW,
    Completion,
    Engine,
    GenerateRequest,
)
from ._errors import (
    EngineCapabilityError,
    EngineClosedError,
    EngineUnavailableError,
    NoEngineError,
    PolicyError,
)
from ._events import LLMCallFinished, LLMCallStarted, TokenGenerated
from ._policies import CallFinished, CallInfo, Policy, Route, ToolFinished, ToolStarted
from ._program import Node, Program
from ._tracing import end_chat

if TYPE_CHECKING:
    from opentelemetry.trace import Span

__all__ = ["Dispatcher"]

logger = logging.getLogger("runtime.dispatch")

E = TypeVar("E")


@dataclass(eq=False, slots=True)
class _Held:
    """A call the policy held: waits until an offer routes it (or finds no engine left)."""

    call: CallInfo
    tried: set[str]
    ready: anyio.Event = field(default_factory=anyio.Event)
    released: bool = False
    route: Route | None = None
    error: Exception | None = None


class Dispatcher:
    """Runs LLM calls on ``engines`` as ``policy`` decides; one per :class:`~runtime.Runtime`."""

    def __init__(self, engines: Sequence[Engine], policy: Policy) -> None:
        self._engines = list(engines)
        self._by_name = {e.name: e for e in self._engines}
        self.policy = policy
        self._held: list[_Held] = []
        self._recheck: asyncio.TimerHandle | None = None

    # -- PolicyHost ------------------------------------------------------------

    @property
    def engines(self) -> Sequence[Engine]:
        return self._engines

    def engine(self, name: str) -> Engine:
        return self._by_name[name]

    def now(self) -> float:
        return now()

    def wake(self) -> None:
        """Offer the held calls to the policy again, in its order; release those it routes."""
        self._cancel_recheck()
        if not self._held:
            return
        held_by_call = {id(h.call): h for h in self._held}
        for call in self.policy.held_order([h.call for h in self._held]):
            held = held_by_call.get(id(call))
            if held is None or held.released:
                continue
            candidates = self._candidates(held.tried)
            if candidates:
                try:
                    route = self._route(call, candidates)
                    if route is None:
                        continue
                except Exception as exc:  # a policy bug: the held call raises it, not whoever woke us
                    held.error = exc
                else:
                    held.route = route
            # No candidates left: released without a route, the call then
            # raises NoEngineError from its own task.
            held.released = True
            held.ready.set()
        self._held = [h for h in self._held if not h.released]
        self._arm_recheck()

    # -- lifecycle -------------------------------------------------------------

    def start(self) -> None:
        """The engines have started: bind the policy to this dispatcher."""
        self.policy.bind(self)

    def close(self) -> None:
        self._cancel_recheck()

    @property
    def model(self) -> str:
        """The model name calls are recorded under before an engine is chosen (the first available engine's)."""
        return next((e.model for e in self._engines if e.available), self._engines[0].model)

    # -- LLM calls -------------------------------------------------------------

    async def generate(self, call: CallInfo, span: Span) -> Completion:
        """Run ``call`` to completion on the engine the policy routes it to, failing over if that engine dies.

        ``span`` is the call's ``chat`` span (its attributes are recorded
        here).  Raises :class:`~runtime.NoEngineError` when no engine is left
        to try, and what the engine raised otherwise.
        """
        program, node = call.program, call.node
        program.llm_calls += 1
        tried: set[str] = set()
        engine: Engine | None = None
        completion: Completion | None = None
        try:
            while True:
                route, candidates = await self._admit(call, tried)
                engine = route.engine
                tried.add(engine.name)
                telemetry.add_event(
                    names.EVENT_DISPATCH,
                    {names.AGENTRT_ENGINE_NAME: engine.name, names.AGENTRT_DISPATCH_CANDIDATES: candidates},
                )
                request = GenerateRequest(
                    request_id=f"{program.id}-{node.id}-{len(tried)}",
                    prompt=call.prompt,
                    sampling=call.sampling,
                    priority=route.priority,
                    metadata={
                        METADATA_PROGRAM_ID: program.id,
                        METADATA_NODE_ID: node.id,
                        METADATA_WORKFLOW: program.workflow,
                        **route.metadata,
                    },
                )
                node.engine = engine.name
                program.emit(
                    LLMCallStarted(
                        program_id=program.id,
                        t=program.elapsed(),
                        node_id=node.id,
                        engine=engine.name,
                        priority=route.priority,
                    )
                )
                try:
                    completion = await self._stream(program, node, engine, request)
                except EngineUnavailableError as exc:
                    telemetry.add_event(
                        names.EVENT_ENGINE_UNAVAILABLE,
                        {names.AGENTRT_ENGINE_NAME: engine.name, "exception.message": str(exc)},
                    )
                    # The engine died or is restarting: the call is retried on
                    # another engine, if there is one that has not failed it yet.
                    if self._candidates(tried):
                        continue
                    raise
                end_chat(
                    span, completion, priority=route.priority, attempts=len(tried), held_s=node.attributes.get("held_s")
                )
                await self._notify(self.policy.on_call_finished, CallFinished(call, engine.name, completion))
                return completion
        finally:
            if completion is None:
                with anyio.CancelScope(shield=True):
                    await self._notify(
                        self.policy.on_call_finished,
                        CallFinished(call, None if engine is None else engine.name, None, "failed or cancelled"),
                    )
            # Whatever ended, capacity may have freed: held calls get another offer.
            self.wake()

    def _candidates(self, tried: set[str]) -> list[Engine]:
        return [e for e in self._engines if e.available and e.name not in tried]

    async def _admit(self, call: CallInfo, tried: set[str]) -> tuple[Route, int]:
        """The policy's route for ``call`` and how many engines it chose from.

        Waits in the admission queue while the policy holds the call.
        """
        while True:
            candidates = self._candidates(tried)
            if not candidates:
                program = call.program
                raise NoEngineError(
                    f"no engine available for program {program.id} "
                    f"(engines: {', '.join(e.name for e in self._engines)}; "
                    f"failed here: {', '.join(sorted(tried)) or 'none'})"
                )
            route = self._route(call, candidates)
            if route is not None:
                return route, len(candidates)
            held = _Held(call, tried)
            self._held.append(held)
            self._arm_recheck()
            started = now()
            try:
                await held.ready.wait()
            finally:
                if not held.released:  # cancelled while held
                    self._held.remove(held)
                attributes = call.node.attributes
                attributes["held_s"] = attributes.get("held_s", 0.0) + now() - started
            if held.error is not None:
                raise held.error
            if held.route is not None:
                return held.route, len(self._candidates(tried))
            # Released without a route (no candidate left when offered): look again.

    def _route(self, call: CallInfo, candidates: Sequence[Engine]) -> Route | None:
        """The policy's decision for ``call`` among ``candidates``, refused if the runtime cannot carry it out."""
        route = self.policy.route(call, candidates)
        if route is None:
            return None
        if not any(route.engine is e for e in candidates):
            raise PolicyError(
                f"policy {self.policy.name!r} routed a call to engine {route.engine.name!r}, "
                f"which is not a candidate ({', '.join(e.name for e in candidates)})"
            )
        if METADATA_PIN_TTL_S in route.metadata and not route.engine.supports_pins:
            raise EngineCapabilityError(
                f"policy {self.policy.name!r} asked engine {route.engine.name!r} "
                f"({type(route.engine).__name__}) to pin KV blocks ({METADATA_PIN_TTL_S}), which it cannot"
            )
        return route

    async def _stream(self, program: Program, node: Node, engine: Engine, request: GenerateRequest) -> Completion:
        async with aclosing(engine.stream(request)) as chunks:
            async for chunk in chunks:
                if isinstance(chunk, Completion):
                    node.usage = Usage(chunk.prompt_tokens, chunk.completion_tokens, chunk.cached_tokens)
                    program.usage = program.usage + node.usage
                    program.llm_service_s += max(0.0, chunk.e2e_s - (chunk.queued_s or 0.0))
                    node.attributes.update(ttft_s=chunk.ttft_s, queued_s=chunk.queued_s, priority=request.priority)
                    program.emit(
                        LLMCallFinished(
                            program_id=program.id,
                            t=program.elapsed(),
                            node_id=node.id,
                            engine=engine.name,
                            prompt_tokens=chunk.prompt_tokens,
                            completion_tokens=chunk.completion_tokens,
                            cached_tokens=chunk.cached_tokens,
                            ttft_s=chunk.ttft_s,
                            duration_s=chunk.e2e_s,
                            finish_reason=chunk.finish_reason,
                        )
                    )
                    return chunk
                program.emit(
                    TokenGenerated(program_id=program.id, t=program.elapsed(), node_id=node.id, text=chunk.text)
                )
        raise EngineUnavailableError(f"engine {engine.name} ended request {request.request_id} without a result")

    # -- tools and programs ------------------------------------------------------

    async def tool_started(self, program: Program, node: Node, call: ToolCall) -> None:
        """The model's tool call ``call`` is about to run as ``node``."""
        await self._notify(self.policy.on_tool_started, ToolStarted(program, node, call.name, call.id, call.arguments))

    async def tool_finished(
        self, program: Program, node: Node, call: ToolCall, *, ok: bool, wall_s: float, error_kind: str | None
    ) -> None:
        """The tool call ran for ``wall_s`` seconds (shielded: it is also told of cancelled calls)."""
        event = ToolFinished(program, node, call.name, call.id, ok, wall_s, error_kind)
        with anyio.CancelScope(shield=True):
            await self._notify(self.policy.on_tool_finished, event)

    async def program_finished(self, program: Program) -> None:
        """``program`` has ended; its held calls (if any were left) no longer count."""
        with anyio.CancelScope(shield=True):
            await self._notify(self.policy.on_program_finished, program)
        self.wake()

    async def _notify(self, hook: Callable[[E], Awaitable[None]], event: E) -> None:
        # An engine that died or closed while the policy drove it (a pin on a
        # dead server) must not fail the program's own work: it is logged and
        # the engine's calls fail over as usual.  Anything else is a bug in
        # the policy and propagates.
        try:
            await hook(event)
        except (EngineUnavailableError, EngineClosedError) as exc:
            logger.warning("policy %s: %s failed: %s", self.policy.name, getattr(hook, "__name__", "hook"), exc)

    # -- recheck timer -------------------------------------------------------------

    def _arm_recheck(self) -> None:
        interval = self.policy.recheck_s
        if self._held and interval is not None and self._recheck is None:
            self._recheck = asyncio.get_running_loop().call_later(interval, self.wake)

    def _cancel_recheck(self) -> None:
        timer, self._recheck = self._recheck, None
        if timer is not None:
            timer.cancel()
