"""The engine interface every backend implements.

An engine serves one model and runs generation requests: the in-process vLLM
engine (``AsyncLLM``), a remote vLLM OpenAI-compatible server, or a server the
runtime launched itself.  The runtime talks to all of them through
:class:`Engine`; backends only implement the ``_``-prefixed hooks, while the
base class keeps the bookkeeping (in-flight requests, token totals, closed
state) in one place so every backend reports the same statistics.  What goes
in and comes out (requests, completions, stats) is in :mod:`._requests`.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import AsyncGenerator, Sequence
from contextlib import aclosing
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

from .._errors import EngineCapabilityError, EngineClosedError, EngineError
from ._requests import CachedPrefix, Completion, EngineLoad, EngineStats, GenerateRequest, PinStats, TokenDelta

if TYPE_CHECKING:
    from ._tool_template import NativeTools

__all__ = ["Engine"]


class Engine(ABC):
    """Abstract base of engine backends; an async context manager.

    ``async with engine:`` starts it and closes it.  :meth:`stream` and
    :meth:`generate` are the request API; backends implement :meth:`_start`,
    :meth:`_stream`, :meth:`_abort`, :meth:`_check_health`, :meth:`_aclose`
    and may extend :meth:`_engine_stats` and :meth:`_load_figures`.

    **Engine control** (program state kept in the engine, driven by
    policies): engines whose :attr:`supports_pins` is true keep a finished
    request's KV blocks referenced for its program (a *pin*) when the request
    asks (metadata ``pin_ttl_s``), and implement :meth:`_set_pin`,
    :meth:`_release_pin` and :meth:`_pin_stats`.  On any other engine
    :meth:`set_pin`, :meth:`release_pin` and :meth:`pin_stats` raise
    :class:`~runtime.EngineCapabilityError`: a pin is never silently ignored.

    **Cache contents**: engines whose :attr:`reports_cached_prefix` is true
    say, cheaply and without I/O, how much of a token prompt their prefix
    cache holds now (:meth:`cached_prefix`, the figure llm-d's precise
    prefix-cache scorer keeps from vLLM's KV events); on any other engine
    :meth:`cached_prefix` raises :class:`~runtime.EngineCapabilityError`.

    **Host-memory KV tier**: engines whose :attr:`supports_offload` is true
    can move a program's cached KV to host (CPU) memory and bring it back
    (:meth:`offload`, :meth:`prefetch`; hooks :meth:`_offload` and
    :meth:`_prefetch`); on any other engine both raise
    :class:`~runtime.EngineCapabilityError`.
    """

    @property
    def supports_pins(self) -> bool:
        """Whether this engine can pin KV blocks (see the class docstring); backends that can override it."""
        return False

    @property
    def reports_cached_prefix(self) -> bool:
        """Whether :meth:`cached_prefix` can say what the engine's prefix cache holds; backends that can override it."""
        return False

    @property
    def supports_offload(self) -> bool:
        """Whether this engine has a host-memory KV tier that :meth:`offload` and :meth:`prefetch` drive.

        False here and on the real engines this project runs today: the
        in-process vLLM CPU build keeps its KV cache in host memory already
        (there is no device-to-host distinction to exploit), and a remote
        server exposes no per-program offload control.  The simulator has
        one when built with ``host_tier``.
        """
        return False

    @property
    def max_model_len(self) -> int | None:
        """The most tokens one request may hold (prompt and output), once the engine knows it; None if unknown.

        No request holds more KV than this, whatever its prompt's estimated
        length: a longer one is refused.  Memory-aware policies bound a
        call's demand by it.
        """
        return None

    @property
    def model_path(self) -> Path | None:
        """The served model's local directory (weights, tokenizer, chat template); None when there is no local copy.

        Backends that start the model themselves (in-process, a launched
        server) override it; a remote server's model is only an id to this
        process.  The gateway reads its tokenizer from here.
        """
        return None

    def __init__(self, name: str, model: str) -> None:
        self.name = name
        self.model = model
        self._started = False
        self._closed = False
        self._draining = False
        self._in_flight: set[str] = set()
        self._requests_total = 0
        self._prompt_tokens = 0
        self._cached_tokens = 0
        self._completion_tokens = 0

    # -- lifecycle ---------------------------------------------------------

    async def start(self) -> None:
        """Start the engine; a second call does nothing."""
        if self._closed:
            raise EngineClosedError(f"engine {self.name} is closed")
        if not self._started:
            await self._start()
            self._started = True

    async def aclose(self) -> None:
        """Abort what is in flight and release the engine; idempotent."""
        if self._closed:
            return
        self._closed = True
        await self._aclose()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    @property
    def closed(self) -> bool:
        return self._closed

    # -- requests ----------------------------------------------------------

    async def stream(self, request: GenerateRequest) -> AsyncGenerator[TokenDelta | Completion, None]:
        """Run ``request``, yielding :class:`TokenDelta` items, then one :class:`Completion`.

        Closing the iterator early (or cancelling the task that drives it)
        aborts the request in the engine.
        """
        if self._closed:
            raise EngineClosedError(f"engine {self.name} is closed")
        if not self._started:
            await self.start()
        if request.request_id in self._in_flight:
            raise EngineError(f"request id {request.request_id!r} is already in flight on {self.name}")
        self._in_flight.add(request.request_id)
        self._requests_total += 1
        try:
            async with aclosing(self._stream(request)) as chunks:
                async for chunk in chunks:
                    if isinstance(chunk, Completion):
                        self._prompt_tokens += chunk.prompt_tokens
                        self._cached_tokens += chunk.cached_tokens
                        self._completion_tokens += chunk.completion_tokens
                    yield chunk
        finally:
            self._in_flight.discard(request.request_id)

    async def generate(self, request: GenerateRequest) -> Completion:
        """Run ``request`` to completion and return the result."""
        async with aclosing(self.stream(request)) as chunks:
            async for chunk in chunks:
                if isinstance(chunk, Completion):
                    return chunk
        raise EngineError(f"engine {self.name} ended request {request.request_id!r} without a result")

    async def abort(self, request_id: str) -> None:
        """Abort a request in flight; unknown ids are ignored."""
        if request_id in self._in_flight:
            await self._abort(request_id)

    async def check_health(self) -> None:
        """Raise :class:`~runtime.EngineUnavailableError` unless the engine can serve."""
        if self._closed:
            raise EngineClosedError(f"engine {self.name} is closed")
        await self._check_health()

    async def stats(self) -> EngineStats:
        """Return a snapshot of load and totals (see :class:`EngineStats`)."""
        extra = await self._engine_stats()
        healthy = True
        try:
            await self.check_health()
        except EngineError:
            healthy = False
        return EngineStats(
            name=self.name,
            model=self.model,
            healthy=healthy,
            in_flight=len(self._in_flight),
            requests_total=self._requests_total,
            prompt_tokens=self._prompt_tokens,
            cached_tokens=self._cached_tokens,
            completion_tokens=self._completion_tokens,
            **extra,
        )

    @property
    def available(self) -> bool:
        """Whether the engine can take a request now (started, not closed, not draining); cheap, for dispatching."""
        return self._started and not self._closed and not self._draining and self._available()

    @property
    def draining(self) -> bool:
        """Whether the engine is draining: it finishes what it runs and takes no new calls."""
        return self._draining

    def drain(self) -> None:
        """Take no new calls from now on (the dispatcher sends them elsewhere); calls in flight finish here.

        For taking an engine out of a pool without failing anything: wait
        until :attr:`in_flight` is 0, then close it, or :meth:`undrain` it.
        """
        self._draining = True

    def undrain(self) -> None:
        """Take new calls again after :meth:`drain`."""
        self._draining = False

    @property
    def in_flight(self) -> int:
        """Requests sent to this engine and not finished yet."""
        return len(self._in_flight)

    def load(self) -> EngineLoad:
        """The engine's load now, for policies (see :class:`EngineLoad`); no I/O."""
        return EngineLoad(self.name, self.available, len(self._in_flight), **self._load_figures())

    def prefill_cost_s(self, tokens: int) -> float | None:
        """Seconds this engine takes to prefill ``tokens`` uncached tokens, from its calibration; None when it has none.

        For policies weighing a KV pin against recomputing the prompt; no I/O.
        """
        return None

    def cached_prefix(self, token_ids: Sequence[int]) -> CachedPrefix:
        """How many leading full blocks of the token prompt ``token_ids`` this engine's prefix cache holds now.

        For policies that route by the engines' actual cache contents (the
        ``llm-d`` policy); cheap, no I/O, like :meth:`load`.  Raises
        :class:`~runtime.EngineCapabilityError` unless
        :attr:`reports_cached_prefix`.
        """
        if not self.reports_cached_prefix:
            raise EngineCapabilityError(
                f"engine {self.name} ({type(self).__name__}) cannot report what its prefix cache holds"
            )
        return self._cached_prefix(token_ids)

    # -- the chat template's tools -------------------------------------------

    async def tool_template(self) -> NativeTools | None:
        """How this engine's chat template does tools (docs/tools.md); None when it does not, or cannot tell.

        The runtime asks before putting a call with tools to the model: with
        an answer, ``ChatPrompt.tools`` are rendered by the template and the
        output parsed by the named vLLM tool parser (the native path); with
        None, tools go the JSON-protocol way.  Backends that can see the
        model's tokenizer override it (in-process: the engine's own; servers:
        the model's local directory); the answer is cached by them.
        """
        return None

    # -- engine control: pins ------------------------------------------------

    def _require_pins(self, what: str) -> None:
        if not self.supports_pins:
            raise EngineCapabilityError(
                f"engine {self.name} ({type(self).__name__}) cannot pin KV blocks, so it cannot {what}"
            )
        if self._closed:
            raise EngineClosedError(f"engine {self.name} is closed")

    async def set_pin(self, program_id: str, ttl_s: float, *, value: float | None = None) -> bool:
        """Pin ``program_id``'s KV blocks for ``ttl_s`` seconds from now, or change its pin's expiry.

        The blocks are those of the program's last finished request, as far
        as the engine still holds them; ``ttl_s <= 0`` releases the pin.
        ``value`` is what the pin is worth per block it holds (the prefill
        seconds it saves times the chance that the program's next turn
        comes before expiry, per block; any consistent unit): under memory
        pressure the engine gives up the least valuable pin first, and among
        equal values (``None`` counts as 0) the latest program's.  Returns
        False when the engine holds none of the blocks (nothing to pin).
        """
        self._require_pins("set a pin")
        if value is not None and not math.isfinite(value):
            raise ValueError(f"a pin's value must be a finite number, got {value!r}")
        if ttl_s <= 0:
            return await self._release_pin(program_id)
        return await self._set_pin(program_id, float(ttl_s), None if value is None else float(value))

    async def release_pin(self, program_id: str) -> bool:
        """Release ``program_id``'s pin now; False if it holds none."""
        self._require_pins("release a pin")
        return await self._release_pin(program_id)

    async def pin_stats(self) -> PinStats:
        """Pin counters and what pins hold now (see :class:`PinStats`)."""
        self._require_pins("report pin statistics")
        return await self._pin_stats()

    # -- engine control: host-memory KV tier ----------------------------------

    def _require_offload(self, what: str) -> None:
        if not self.supports_offload:
            raise EngineCapabilityError(
                f"engine {self.name} ({type(self).__name__}) has no host-memory KV tier, so it cannot {what}"
            )
        if self._closed:
            raise EngineClosedError(f"engine {self.name} is closed")

    async def offload(self, program_id: str) -> bool:
        """Copy ``program_id``'s cached KV to host memory, then free its GPU blocks (evicted first) and drop its pin.

        The context is its live pin's blocks, else the blocks of its last
        finished request the GPU's prefix cache still holds.  The copy takes
        device-to-host link time; until it ends the GPU blocks stay held.
        Returns False when the engine caches none of it.
        """
        self._require_offload("offload KV to host memory")
        return await self._offload(program_id)

    async def prefetch(self, program_id: str, ttl_s: float) -> bool:
        """Bring ``program_id``'s host-held KV back to the GPU and pin it for ``ttl_s`` seconds after it arrives.

        For a program whose next request is expected soon (a tool call about
        to return).  As much as free GPU blocks allow is loaded, over the
        host-to-device link; until the copy ends it serves no request (one
        that needs it waits for it).  Returns False when neither memory holds
        any of the program's context.
        """
        self._require_offload("prefetch KV from host memory")
        if not (math.isfinite(ttl_s) and ttl_s > 0):
            raise ValueError(f"a prefetch's ttl_s must be a finite number of seconds > 0, got {ttl_s!r}")
        return await self._prefetch(program_id, float(ttl_s))

    # -- backend hooks -----------------------------------------------------

    @abstractmethod
    async def _start(self) -> None:
        """Bring the engine up; raise :class:`EngineStartError` on failure."""

    @abstractmethod
    def _stream(self, request: GenerateRequest) -> AsyncGenerator[TokenDelta | Completion, None]:
        """Yield deltas then exactly one :class:`Completion`; abort when closed early."""

    @abstractmethod
    async def _abort(self, request_id: str) -> None:
        """Abort one request in the engine."""

    @abstractmethod
    async def _check_health(self) -> None:
        """Raise :class:`EngineUnavailableError` if the engine cannot serve."""

    @abstractmethod
    async def _aclose(self) -> None:
        """Release everything the backend holds."""

    def _available(self) -> bool:
        """Backend view of :attr:`available` (e.g. false while a server restarts)."""
        return True

    async def _engine_stats(self) -> dict[str, Any]:
        """Backend-specific fields of :class:`EngineStats` (waiting, running, kv_usage, preemptions)."""
        return {}

    def _load_figures(self) -> dict[str, Any]:
        """Backend-specific fields of :class:`EngineLoad` (waiting, running, kv_usage, pinned/kv blocks); no I/O."""
        return {}

    def _cached_prefix(self, token_ids: Sequence[int]) -> CachedPrefix:
        """Engines with ``reports_cached_prefix``: the cached prefix of ``token_ids`` (no I/O)."""
        raise NotImplementedError

    async def _set_pin(self, program_id: str, ttl_s: float, value: float | None) -> bool:
        """Engines with ``supports_pins``: pin or re-pin (``ttl_s`` > 0 seconds, ``value`` as in :meth:`set_pin`)."""
        raise NotImplementedError

    async def _release_pin(self, program_id: str) -> bool:
        """Engines with ``supports_pins``: release now."""
        raise NotImplementedError

    async def _pin_stats(self) -> PinStats:
        """Engines with ``supports_pins``: the counters."""
        raise NotImplementedError

    async def _offload(self, program_id: str) -> bool:
        """Engines with ``supports_offload``: copy the program's cached KV to host memory."""
        raise NotImplementedError

    async def _prefetch(self, program_id: str, ttl_s: float) -> bool:
        """Engines with ``supports_offload``: load the program's host-held KV back, pinned ``ttl_s`` seconds."""
        raise NotImplementedError
