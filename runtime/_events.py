"""Events a running program emits; ``ProgramHandle.events()`` streams them.

Times (``t``) are seconds since the program was submitted.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypeAlias

__all__ = [
    "Event",
    "LLMCallFinished",
    "LLMCallStarted",
    "ProgramFinished",
    "ProgramStarted",
    "StepFinished",
    "StepStarted",
    "TokenGenerated",
    "ToolCallFinished",
    "ToolCallStarted",
]


@dataclass(frozen=True, slots=True, kw_only=True)
class _EventBase:
    program_id: str
    t: float


@dataclass(frozen=True, slots=True, kw_only=True)
class ProgramStarted(_EventBase):
    workflow: str


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
)
