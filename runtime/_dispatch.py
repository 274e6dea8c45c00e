"""The dispatcher: one LLM call from a context to an engine and back, and the policy's events.

For each call, in order: the policy's decision (:meth:`Policy.route`:
engine, priority, metadata; or hold it in the admission queue until a later
offer routes it), the engine request, the token stream (each token an
event of the program), failover to another engine when one dies mid-call,
retry rounds with backoff when no engine is left to take it (a server
restarting), the call's time bound over all of it, and the bookkeeping of
the finished call (node and program usage, service received, the ``chat``
span's attributes, the policy's :meth:`~Policy.on_call_finished`).
Contexts reach it through :meth:`Dispatcher.generate`, the three
``*_started``/``*_finished`` notifications and :meth:`Dispatcher.tool_template`
(how the model does tools, asked before the prompt is rendered); nothing
else of the runtime talks to engines for a call.

The dispatcher is also the :class:`~runtime.PolicyHost` a policy is bound to.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeVar

import anyio
import anyio.lowlevel

import telemetry
from telemetry import names
from workflows import ToolCall, Usage

from ._backoff import Backoff
from ._clock import now
from ._engines import (
    METADATA_NODE_ID,
    METADATA_PIN_TTL_S,
    METADATA_PROGRAM_ID,
    METADATA_WORKFLOW,
    Completion,
    Engine,
    GenerateRequest,
    TokenDelta,
)
from ._errors import (
    EngineCapabilityError,
    EngineClosedError,
    EngineError,
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

    from ._engines import NativeTools

__all__ = ["DEFAULT_LLM_RETRIES", "RETRY_BACKOFF", "Dispatcher"]

logger = logging.getLogger("runtime.dispatch")

E = TypeVar("E")


#: How long a call waits before each new round over the engines: 0.5 s doubling, at most 10 s.
RETRY_BACKOFF = Backoff(first_s=0.5, max_s=10.0)

#: Rounds over the engines a call gets after its first (``Runtime(llm_retries=)``):
#: with :data:`RETRY_BACKOFF` a call waits out about 45 s of outage,
#: the restart of a small model's server.
DEFAULT_LLM_RETRIES = 8


def _engine_state(engine: Engine) -> str:
    if engine.closed:
        return "closed"
    if engine.draining:
        return "draining"
    return "available" if engine.available else "unavailable"


#: Characters of an engine's error kept for a call's final error (a server's
#: "not restarted" reason quotes its log).
_FAILURE_CHARS = 2000


@dataclass(slots=True)
class _Failures:
    """How often one engine failed one call, and its last answer."""

    count: int = 0
    last: str = ""

    def add(self, exc: Exception) -> None:
        self.count += 1
        self.last = f"{type(exc).__name__}: {exc}"[:_FAILURE_CHARS]


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
    """Runs LLM calls on ``engines`` as ``policy`` decides; one per :class:`~runtime.Runtime`.

    ``retries`` and ``timeout_s`` (seconds, ``None``: unbounded) are the
    defaults of calls that do not set their own; ``backoff`` spaces the
    retry rounds.
    """

    def __init__(
        self,
        engines: Sequence[Engine],
        policy: Policy,
        *,
        retries: int = DEFAULT_LLM_RETRIES,
        timeout_s: float | None = None,
        backoff: Backoff | None = None,
    ) -> None:
        if retries < 0:
            raise ValueError(f"llm_retries must be >= 0, got {retries}")
        if timeout_s is not None and not timeout_s > 0:
            raise ValueError(f"llm_timeout_s must be > 0 seconds or None, got {timeout_s}")
        self._retries = retries
        self._timeout_s = timeout_s
        self._backoff = backoff or RETRY_BACKOFF
        self._engines = list(engines)
        self._by_name = {e.name: e for e in self._engines}
        self.policy = policy
        self._held: list[_Held] = []
        self._recheck: asyncio.TimerHandle | None = None
        # The model's tool template (tool_template), once an engine has told.
        self._tool_template: NativeTools | None = None
        self._tool_template_known = False

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
            # No candidates left: released without a route; the call then
            # waits out its retry backoff (or gives up) in its own task.
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

    async def tool_template(self) -> NativeTools | None:
        """How the runtime's model does tools (:meth:`Engine.tool_template`), asked of its engines once.

        Every engine of one runtime serves one model, so a call's prompt is
        rendered for it before the policy picks an engine: the first engine
        that answers decides (available ones first; one that fails is passed
        over) and its answer is kept for the runtime's life.  None, not kept,
        when no engine answers.
        """
        if self._tool_template_known:
            return self._tool_template
        for engine in sorted(self._engines, key=lambda e: not e.available):
            try:
                found = await engine.tool_template()
            except EngineError:  # down: another engine of the same model may answer
                continue
            self._tool_template, self._tool_template_known = found, True
            return found
        return None

    # -- LLM calls -------------------------------------------------------------

    async def generate(
        self, call: CallInfo, span: Span, *, on_piece: Callable[[TokenDelta], None] | None = None
    ) -> Completion:
        """Run ``call`` to completion on the engine the policy routes it to, retrying transient engine failures.

        ``span`` is the call's ``chat`` span (its attributes are recorded
        here).  A call that fails with :class:`~runtime.EngineUnavailableError`
        (or on an engine closed under it) goes at once to another available
        engine it has not tried in this round; when none is left, or none is
        available at all, it waits (:data:`RETRY_BACKOFF`) and starts a new
        round over every available engine, up to ``call.retries`` rounds (the
        runtime's default when ``None``).  Then it raises
        :class:`~runtime.NoEngineError` naming every attempt.  An engine that
        rejected the request (:class:`~runtime.EngineRequestError`) is not
        retried.  The policy hears of every failed attempt
        (:meth:`~Policy.on_call_finished` with an ``error``) and then of the
        call's end.  ``call.timeout_s`` (or the runtime's default) bounds all of
        it, admission hold and backoff included: on expiry the engine request
        is aborted and :class:`TimeoutError` raised.  ``on_piece`` gets each
        piece streamed (an attempt that failed over included), as the
        program's :class:`~runtime.TokenGenerated` event is emitted.
        """
        program, node = call.program, call.node
        program.llm_calls += 1
        timeout_s = call.timeout_s if call.timeout_s is not None else self._timeout_s
        completion: Completion | None = None
        with anyio.CancelScope(deadline=math.inf if timeout_s is None else now() + timeout_s) as bound:
            completion = await self._generate_with_retries(call, span, on_piece)
        if completion is None:  # only the bound's expiry ends the block without a result
            assert bound.cancelled_caught
            raise TimeoutError(
                f"LLM call {node.id} of program {program.id} (workflow {program.workflow!r}) did not finish "
                f"within its bound of {timeout_s} s (ctx.llm(timeout_s=) or Runtime(llm_timeout_s=)); "
                f"the engine request it had running, if any, was aborted (attempts: {node.attempts}). "
                "Raise the bound, or shorten the call (max_tokens) if it is expected to take this long"
            )
        return completion

    async def _generate_with_retries(
        self, call: CallInfo, span: Span, on_piece: Callable[[TokenDelta], None] | None
    ) -> Completion:
        program, node = call.program, call.node
        retries = call.retries if call.retries is not None else self._retries
        tried: set[str] = set()  # engines that failed the call in this round
        failures: dict[str, _Failures] = {}  # by engine name
        rounds = 0  # backoff waits so far
        waited_s = 0.0
        last_error: Exception | None = None
        engine: Engine | None = None
        completion: Completion | None = None
        try:
            while True:
                admitted = await self._admit(call, tried)
                if admitted is None:
                    # Every available engine failed this round, or none is available
                    # (a server restarting): wait, then try them all again.
                    if rounds >= retries or all(e.closed for e in self._engines):
                        raise self._exhausted(call, failures, retries, rounds, waited_s) from last_error
                    rounds += 1
                    delay = self._backoff.delay_s(rounds)
                    logger.info(
                        "program %s: LLM call %s found no engine to take it (%s); round %d of %d in %.1f s",
                        program.id,
                        node.id,
                        "; ".join(f"{name}: {f.last[:200]}" for name, f in failures.items()) or "none available",
                        rounds,
                        retries,
                        delay,
                    )
                    await anyio.sleep(delay)
                    waited_s += delay
                    tried.clear()
                    continue
                route, candidates = admitted
                engine = route.engine
                tried.add(engine.name)
                node.attempts += 1
                telemetry.add_event(
                    names.EVENT_DISPATCH,
                    {names.AGENTRT_ENGINE_NAME: engine.name, names.AGENTRT_DISPATCH_CANDIDATES: candidates},
                )
                request = GenerateRequest(
                    request_id=f"{program.id}-{node.id}-{node.attempts}",
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
                    completion = await self._stream(program, node, engine, request, on_piece, call.prompt_tokens)
                except (EngineUnavailableError, EngineClosedError) as exc:
                    # The engine died, restarts, or was closed under the call:
                    # transient for the call, which another engine (or this
                    # one, back) may serve.
                    telemetry.add_event(
                        names.EVENT_ENGINE_UNAVAILABLE,
                        {names.AGENTRT_ENGINE_NAME: engine.name, "exception.message": str(exc)},
                    )
                    failures.setdefault(engine.name, _Failures()).add(exc)
                    last_error = exc
                    # The policy learns that this attempt is over, so the work it
                    # routed there leaves that engine's books: a call waiting to be
                    # routed again must not count against its own admission.
                    await self._notify(
                        self.policy.on_call_finished,
                        CallFinished(
                            call, engine.name, None, f"attempt {node.attempts} failed: {failures[engine.name].last}"
                        ),
                    )
                    self.wake()
                    continue
                end_chat(
                    span,
                    completion,
                    priority=route.priority,
                    attempts=node.attempts,
                    held_s=node.attributes.get("held_s"),
                )
                if waited_s:
                    node.attributes["retry_wait_s"] = waited_s
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

    def _exhausted(
        self, call: CallInfo, failures: Mapping[str, _Failures], retries: int, rounds: int, waited_s: float
    ) -> NoEngineError:
        """The error of a call that no engine served through all its rounds."""
        program, node = call.program, call.node
        states = ", ".join(f"{e.name} ({_engine_state(e)})" for e in self._engines)
        answered = (
            "; ".join(f"{name} failed it {f.count} time(s), last: {f.last}" for name, f in failures.items())
            or "no engine was available to try"
        )
        return NoEngineError(
            f"no engine available for LLM call {node.id} of program {program.id} (workflow {program.workflow!r}) "
            f"after {node.attempts} attempt(s) in {rounds + 1} round(s) over {waited_s:.1f} s of backoff "
            f"(retries={retries}). Engines now: {states}. What they answered: {answered}. "
            "Check the engines (await rt.stats(), their logs), or let calls wait longer for a restart "
            "with ctx.llm(retries=) or Runtime(llm_retries=)"
        )

    def _candidates(self, tried: set[str]) -> list[Engine]:
        return [e for e in self._engines if e.available and e.name not in tried]

    async def _admit(self, call: CallInfo, tried: set[str]) -> tuple[Route, int] | None:
        """The policy's route for ``call`` and how many engines it chose from; ``None`` when no engine is left.

        Waits in the admission queue while the policy holds the call.
        """
        while True:
            candidates = self._candidates(tried)
            if not candidates:
                return None
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

    async def _stream(
        self,
        program: Program,
        node: Node,
        engine: Engine,
        request: GenerateRequest,
        on_piece: Callable[[TokenDelta], None] | None,
        prompt_tokens: int,
    ) -> Completion:
        generated = 0  # tokens streamed so far: what the call consumed if it is cancelled
        try:
            async with aclosing(engine.stream(request)) as chunks:
                async for chunk in chunks:
                    if isinstance(chunk, Completion):
                        return self._finished(program, node, engine, request, chunk)
                    generated += len(chunk.token_ids)
                    program.emit(
                        TokenGenerated(program_id=program.id, t=program.elapsed(), node_id=node.id, text=chunk.text)
                    )
                    if on_piece is not None:
                        on_piece(chunk)
                    # A stream read from a full buffer never suspends: let the program's readers and
                    # other tasks run between tokens, so that a cancel (say, on the first token) lands
                    # before the call ends, and one fast stream cannot starve the event loop.
                    await anyio.lowlevel.checkpoint()
        except anyio.get_cancelled_exc_class():
            if generated:
                # Cancelled mid-stream (a client that left): the engine did this work, and the program's
                # usage says so (the prompt by its estimate), so that whoever bills the program can.
                partial = Usage(prompt_tokens, generated, 0)
                node.usage = partial
                node.attributes["usage_partial"] = True
                program.usage = program.usage + partial
            raise
        raise EngineUnavailableError(f"engine {engine.name} ended request {request.request_id} without a result")

    def _finished(
        self, program: Program, node: Node, engine: Engine, request: GenerateRequest, chunk: Completion
    ) -> Completion:
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
