"""Program-level FCFS with KV pins: what the ``continuum`` and ``agentrt`` policies share.

A :class:`PinningPolicy` keeps, per live program, its sequence number (the
order of its first call), the engine holding its pin and that pin's expiry
as far as the policy knows, and its last context length.  It then:

- **routes** a program holding a live pin to the engine holding it (when
  that engine is a candidate), every other call to the engine with the
  fewest requests in flight (ties round-robin, as :class:`VLLMPolicy`;
  a subclass may choose otherwise, :meth:`PinningPolicy.pick_engine`);
- gives each call the engine **priority** ``level * 2**42 + seq - pinned``
  (lower first): ``level`` is the caller's ``priority=`` if given, else the
  program's user priority, and stays the most significant key; within a
  level, programs holding a live pin come first (``pinned`` = 2**40, else
  0) and then programs in the order of their first call.  vLLM preempts
  the largest ``(priority, arrival)``: the latest program, Continuum's rule;
- asks engines that pin (``engine.supports_pins``) to keep every finished
  request's KV blocks for :attr:`PinningPolicy.provisional_ttl_s` seconds
  (metadata ``pin_ttl_s``): a *provisional* pin, covering only the moment
  between the reply and the policy's decision when the tool starts.
  Engines without pins get no pin metadata, and the policy is then
  program-level FCFS without pins;
- when a tool starts, asks the subclass (:meth:`PinningPolicy.ttl_for`) how
  long to keep the pin while it runs, and sets it (``engine.set_pin``, with
  the subclass's value) or releases it (TTL 0).  Tools started in the same
  pause (parallel tool calls) keep the longest expiry any of them asked
  for.  An engine that answers it holds nothing makes the policy forget
  the pin;
- when a tool finishes, records its wall time in the policy's own
  :class:`toolbridge.DurationPredictor` (its own, so two runs in one
  process learn apart), for every call that ran: not for cancelled,
  repeated, unknown-tool or invalid-argument calls;
- when a program finishes, releases its pin (its last turn needs none) and
  forgets it: no per-program state outlives the program.

The engine itself releases a pin on hand-off (the program's next request
admitted), expiry, abort and memory pressure.  Engine errors while pinning
propagate (:class:`~runtime.EngineUnavailableError`,
:class:`~runtime.EngineClosedError`: the dispatcher logs them and the
engine's calls fail over); the pin is forgotten first.
"""

from __future__ import annotations

import itertools
import math
from abc import abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

from toolbridge import DurationPredictor, ErrorKind

from .._engines import METADATA_PIN_MODE, METADATA_PIN_TTL_S, Completion, Engine, MetadataValue
from .._program import Program
from ._base import CallFinished, CallInfo, Policy, Route, ToolFinished, ToolStarted
from ._placement import least_loaded

__all__ = ["DEFAULT_PROVISIONAL_TTL_S", "PinChoice", "PinningPolicy", "ProgramPins"]

#: Seconds a finished request stays pinned before the policy decides at its tool's start.
#: The runtime starts the tool right after the reply is parsed, so this only has to
#: outlast that moment (and a turn that calls no tool, whose next call follows at once).
DEFAULT_PROVISIONAL_TTL_S = 1.0

# Priority bands: the caller's level is the most significant key, then pinned programs, then FCFS.
_LEVEL = 1 << 42
_PINNED = 1 << 40

# Tool outcomes whose wall time says nothing about how long the tool runs.
_NOT_RUN = frozenset({ErrorKind.CANCELLED, ErrorKind.REPEATED, ErrorKind.UNKNOWN_TOOL, ErrorKind.INVALID_ARGS})


@dataclass(slots=True, eq=False)
class ProgramPins:
    """What a pinning policy keeps per live program; times on the runtime's clock (seconds)."""

    #: The program's number in order of first call (program-level FCFS).
    seq: int
    #: The engine holding its pin, as far as the policy knows (None: no pin).
    engine: Engine | None = None
    #: When that pin expires (the engine may have released it earlier).
    pin_until: float = 0.0
    #: Prompt plus completion tokens of its last finished call: what a pin holds.
    context_tokens: int = 0
    #: The latest expiry decided in the current tool pause (None: no tool started since the last call).
    pause_until: float | None = None


@dataclass(frozen=True, slots=True)
class PinChoice:
    """How long to keep a program's pin while its tool runs (``ttl_s``, 0: release it) and what it is worth.

    ``value`` is passed to :meth:`~runtime.Engine.set_pin`: worth per block,
    deciding which pins memory pressure releases first (``None``: 0).
    """

    ttl_s: float
    value: float | None = None


class PinningPolicy(Policy):
    """Program-level FCFS, pin affinity and pins decided per tool (see the module docstring).

    Subclasses give a ``name`` and implement :meth:`ttl_for`; they may
    override :meth:`follows_pin` (whether a call follows its program's pin),
    :meth:`admit` (hold calls in the admission queue),
    :meth:`priority_of` (the engine priority), :meth:`pick_engine` (calls
    without a live pin to follow),
    :meth:`observe_completion` and :meth:`observe_tool` (to learn from
    finished calls and tools).
    """

    recheck_s: ClassVar[float | None] = None  # never holds a call
    #: The engines' pin mode for this policy's calls (metadata ``pin_mode``,
    #: sent beside ``pin_ttl_s``); ``None``: the engines' own soft pins.
    pin_mode: ClassVar[str | None] = None

    def __init__(self, *, provisional_ttl_s: float = DEFAULT_PROVISIONAL_TTL_S, window: int = 256) -> None:
        if not provisional_ttl_s > 0:
            raise ValueError(f"provisional_ttl_s must be > 0 seconds, got {provisional_ttl_s}")
        #: Seconds a finished request is pinned until its tool's start decides.
        self.provisional_ttl_s = float(provisional_ttl_s)
        #: Wall times of this policy's tool calls, the last ``window`` per tool.
        self.durations = DurationPredictor(window)
        self._programs: dict[str, ProgramPins] = {}
        self._seq = itertools.count()
        self._turn = itertools.count()

    # -- what subclasses decide ---------------------------------------------------

    @abstractmethod
    def ttl_for(self, tool: str, program: Program, pins: ProgramPins) -> PinChoice:
        """The pin to keep while ``tool`` runs for ``program`` (whose pin is on ``pins.engine``)."""

    def observe_completion(self, pins: ProgramPins, engine: Engine, completion: Completion) -> None:
        """A call of the program finished on ``engine``; ``pins`` still holds the previous call's figures."""
        return None  # optional hook

    def observe_tool(self, tool: str, wall_s: float) -> None:
        """A tool call that ran took ``wall_s`` seconds (already in :attr:`durations`)."""
        return None  # optional hook

    # -- state ------------------------------------------------------------------------

    def program_pins(self, program_id: str) -> ProgramPins | None:
        """The policy's record of a live program (``None`` once it finished, or before its first call)."""
        return self._programs.get(program_id)

    @property
    def tracked_programs(self) -> int:
        """Programs the policy keeps state for now."""
        return len(self._programs)

    # -- decisions --------------------------------------------------------------------

    def route(self, call: CallInfo, engines: Sequence[Engine]) -> Route | None:
        program = call.program
        pins = self._programs.get(program.id)
        if pins is None:
            pins = self._programs[program.id] = ProgramPins(next(self._seq))
        home = pins.engine
        pinned = (
            home is not None
            and self.host.now() < pins.pin_until
            and any(e is home for e in engines)
            and self.follows_pin(call, home)
        )
        if not pinned and not self.admit(call, engines, pins):
            return None  # held: the pin (if any) stays the program's
        if home is not None:
            # This call takes the pin over (the engine consumes it on admission).
            pins.engine = None
            pins.pin_until = 0.0
        engine = home if pinned and home is not None else self.pick_engine(call, engines, pins)
        priority = self.priority_of(call, pins, pinned=pinned)
        if engine.supports_pins:
            metadata: dict[str, MetadataValue] = {METADATA_PIN_TTL_S: self.provisional_ttl_s}
            if self.pin_mode is not None:
                metadata[METADATA_PIN_MODE] = self.pin_mode
            return Route(engine, priority, metadata)
        return Route(engine, priority)

    def follows_pin(self, call: CallInfo, engine: Engine) -> bool:
        """Whether ``call`` should go to ``engine``, which holds its program's live pin; default: always.

        A subclass that knows which context a call continues may say no
        (a parallel branch's call, whose context is elsewhere).
        """
        return True

    def admit(self, call: CallInfo, engines: Sequence[Engine], pins: ProgramPins) -> bool:
        """Whether ``call`` (of a program without a live pin among ``engines``) goes out now; default: always."""
        return True

    def priority_of(self, call: CallInfo, pins: ProgramPins, *, pinned: bool) -> int:
        """The engine priority: ``level * 2**42 + seq``, less ``2**40`` for a program holding a live pin."""
        return call.level * _LEVEL + pins.seq - (_PINNED if pinned else 0)

    def pick_engine(self, call: CallInfo, engines: Sequence[Engine], pins: ProgramPins) -> Engine:
        """The engine for a call with no live pin to follow: fewest in flight, ties round-robin."""
        return self.least_loaded(engines)

    def least_loaded(self, engines: Sequence[Engine]) -> Engine:
        """The candidate with the fewest requests in flight, ties broken round-robin."""
        return least_loaded(engines, self._turn)

    # -- events -------------------------------------------------------------------------

    async def on_call_finished(self, event: CallFinished) -> None:
        pins = self._programs.get(event.call.program.id)
        if pins is None:  # the program already finished
            return
        completion = event.completion
        old = pins.engine
        if completion is None or event.engine is None:
            # Failed or cancelled: whatever the engine kept of it is not the program's context.
            pins.engine = None
            pins.pin_until = 0.0
            return
        engine = self.host.engine(event.engine)
        self.observe_completion(pins, engine, completion)
        pins.context_tokens = completion.prompt_tokens + completion.completion_tokens
        pins.pause_until = None
        if engine.supports_pins:  # the route asked it for a provisional pin
            pins.engine = engine
            pins.pin_until = self.host.now() + self.provisional_ttl_s
        else:
            pins.engine = None
            pins.pin_until = 0.0
        if old is not None and old is not engine:
            # A parallel call of the program left a pin elsewhere: the newest context wins.
            await old.release_pin(event.call.program.id)

    async def on_tool_started(self, event: ToolStarted) -> None:
        program = event.program
        pins = self._programs.get(program.id)
        if pins is None or pins.engine is None:
            return
        engine = pins.engine
        choice = self.ttl_for(event.tool, program, pins)
        now = self.host.now()
        until = now + choice.ttl_s if choice.ttl_s > 0 else now
        if pins.pause_until is not None and pins.pause_until >= until:
            return  # a tool started earlier in this pause keeps the pin longer
        pins.pause_until = until
        # Forgotten first: if the engine fails the call, the pin is not counted on.
        pins.engine = None
        pins.pin_until = 0.0
        if choice.ttl_s <= 0:
            await engine.release_pin(program.id)
        elif await engine.set_pin(program.id, choice.ttl_s, value=choice.value):
            pins.engine = engine
            pins.pin_until = until

    async def on_tool_finished(self, event: ToolFinished) -> None:
        if event.error_kind in _NOT_RUN or not math.isfinite(event.wall_s) or event.wall_s < 0:
            return
        self.durations.observe(event.tool, event.wall_s)
        self.observe_tool(event.tool, event.wall_s)

    async def on_program_finished(self, program: Program) -> None:
        pins = self._programs.pop(program.id, None)
        if pins is not None and pins.engine is not None:
            await pins.engine.release_pin(program.id)
