"""Events a running program emits; ``ProgramHandle.events()`` streams them.

Times (``t``) are seconds since the program was submitted.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypeAlias

__all__ = [
    "Event",
    "EventsDropped",
    "LLMCallFinished",
    "LLMCallStarted",
    "ProgramFinished",
    "ProgramStalled",
    "ProgramStarted",
    "StepFinished",
    "StepReplayed",
    "StepStarted",
    "TokenGenerated",
    "ToolCallFinished",
    "ToolCallStarted",
    "WaitingCall",
]


@dataclass(frozen=True, slots=True, kw_only=True)
class _EventBase:
    program_id: str
    t: float


@dataclass(frozen=True, slots=True, kw_only=True)
class ProgramStarted(_EventBase):
    """The program started running; ``resumed``: it was resumed from its journal (``run`` 2, 3 ...)."""

    workflow: str
    resumed: bool = False
    run: int = 1


@dataclass(frozen=True, slots=True, kw_only=True)
class ProgramFinished(_EventBase):
    state: str
    error: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class StepStarted(_EventBase):
    node_id: str
    name: str
    attempt: int


@dataclass(frozen=True, slots=True, kw_only=True)
class StepFinished(_EventBase):
    node_id: str
    name: str
    ok: bool
    duration_s: float
    attempts: int
    error: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class LLMCallStarted(_EventBase):
    node_id: str
    engine: str
    priority: int


@dataclass(frozen=True, slots=True, kw_only=True)
class TokenGenerated(_EventBase):
    node_id: str
    text: str


@dataclass(frozen=True, slots=True, kw_only=True)
class LLMCallFinished(_EventBase):
    node_id: str
    engine: str
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    ttft_s: float | None
    duration_s: float
    finish_reason: str | None


@dataclass(frozen=True, slots=True, kw_only=True)
class ToolCallStarted(_EventBase):
    node_id: str
    name: str
    call_id: str
    arguments: dict[str, Any]


@dataclass(frozen=True, slots=True, kw_only=True)
class ToolCallFinished(_EventBase):
    node_id: str
    name: str
    call_id: str
    ok: bool
    duration_s: float
    error_kind: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class StepReplayed(_EventBase):
    """A resumed program took this work's result from its journal instead of running it again.

    ``kind`` is the node kind (``step``, ``agent``, ``llm``, ``tool``); no
    other event is emitted for the node's work (a replayed step's inner
    calls are not visited at all).
    """

    node_id: str
    kind: str
    name: str


@dataclass(frozen=True, slots=True, kw_only=True)
class EventsDropped(_EventBase):
    """The reader fell behind: ``missed`` events were dropped from the program's buffer before it read them.

    Only the reader that missed them sees it (``Runtime(event_buffer=)``
    bounds the events a program keeps); the stream goes on with the oldest
    event kept.  :class:`ProgramFinished` is never dropped.
    """

    missed: int


@dataclass(frozen=True, slots=True)
class WaitingCall:
    """A call a stalled program waits on (see :class:`ProgramStalled`).

    ``kind`` is ``"llm"`` or ``"tool"``, ``name`` the tool's (``"chat"`` for
    an LLM call).  ``engine`` is the engine serving an LLM call; ``None``
    while the scheduling policy holds the call in its admission queue (and
    for tool calls).  ``waiting_s``: seconds since the call started.
    """

    node_id: str
    kind: str
    name: str
    engine: str | None
    waiting_s: float

    @property
    def held(self) -> bool:
        """An LLM call not yet on an engine: the policy holds it."""
        return self.kind == "llm" and self.engine is None

    def describe(self) -> str:
        """One line for a log: what the call is and where it waits."""
        if self.kind == "llm":
            where = "held by policy" if self.engine is None else f"on engine {self.engine}"
            return f"{self.node_id} llm call {where} for {self.waiting_s:.1f} s"
        return f"{self.node_id} tool {self.name!r} running for {self.waiting_s:.1f} s"


@dataclass(frozen=True, slots=True, kw_only=True)
class ProgramStalled(_EventBase):
    """The runtime made no progress for ``quiet_s`` seconds while this program's ``waiting`` calls were in flight.

    Progress is a generated token or a finished LLM or tool call, in any
    program; ``Runtime(stall_after_s=)`` sets how long a quiet period must
    last to be reported.
    """

    quiet_s: float
    waiting: tuple[WaitingCall, ...]


Event: TypeAlias = (
    ProgramStarted
    | ProgramFinished
    | StepStarted
    | StepFinished
    | LLMCallStarted
    | TokenGenerated
    | LLMCallFinished
    | ToolCallStarted
    | ToolCallFinished
    | StepReplayed
    | EventsDropped
    | ProgramStalled
)
