"""Which program a gateway request belongs to: the session conventions of serving stacks, in one order.

Agent clients name their session in several ways; the gateway accepts all of
them and takes the first one present, in this order of precedence
(:data:`SESSION_SOURCES`):

1. agentrt: body ``program_id``, header ``X-Agentrt-Program-Id``;
2. vLLM: body ``session_id``, header ``X-Session-ID``;
3. Dynamo: header ``X-Dynamo-Session-ID``;
4. Claude Code (as Dynamo routes it): header ``x-claude-code-session-id``;
5. Continuum: body ``job_id``;
6. llm-d: header ``x-session-token``;
7. LiteLLM: body ``metadata.session_id``.

A request naming none of them is a program of one call.  A program ends
after a request marked last (body ``last_turn``, header
``X-Agentrt-Last-Turn``, Dynamo's ``X-Dynamo-Session-Final``, Continuum's
``is_last_step``: any of them true), or after an idle timeout.  The first
request of a program may set its ``deadline_s`` and ``priority`` (body or
``X-Agentrt-Deadline-S`` / ``X-Agentrt-Priority``); ``expected_tool`` (body
or ``X-Agentrt-Expected-Tool``) names the tool the client runs next.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from ._protocol import OpenAIError, SessionFields

__all__ = ["SESSION_SOURCES", "SessionRef", "session_ref"]


@dataclass(frozen=True, slots=True)
class SessionRef:
    """What a request says about its program; ``key`` ``None``: a program of its own."""

    key: str | None
    source: str | None
    last_turn: bool
    deadline_s: float | None
    priority: int | None
    expected_tool: str | None


def _header(name: str) -> Callable[[Mapping[str, str], SessionFields], str | None]:
    return lambda headers, _body: headers.get(name) or None


def _metadata_session(_headers: Mapping[str, str], body: SessionFields) -> str | None:
    value = (body.metadata or {}).get("session_id")
    return str(value) if value not in (None, "") else None


#: (source label, how to read it), first present wins.  Labels appear in traces (``agentrt.session.source``).
SESSION_SOURCES: tuple[tuple[str, Callable[[Mapping[str, str], SessionFields], str | None]], ...] = (
    ("body.program_id", lambda _h, body: body.program_id),
    ("header.x-agentrt-program-id", _header("X-Agentrt-Program-Id")),
    ("body.session_id", lambda _h, body: body.session_id),
    ("header.x-session-id", _header("X-Session-ID")),
    ("header.x-dynamo-session-id", _header("X-Dynamo-Session-ID")),
    ("header.x-claude-code-session-id", _header("x-claude-code-session-id")),
    ("body.job_id", lambda _h, body: None if body.job_id in (None, "") else str(body.job_id)),
    ("header.x-session-token", _header("x-session-token")),
    ("body.metadata.session_id", _metadata_session),
)

_TRUE = ("1", "true", "yes")
_FALSE = ("0", "false", "no", "")


def _flag(headers: Mapping[str, str], name: str) -> bool:
    raw = headers.get(name)
    if raw is None:
        return False
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise OpenAIError(400, f"header {name} must be true or false, got {raw!r}")


def _float_header(headers: Mapping[str, str], name: str) -> float | None:
    raw = headers.get(name)
    if raw is None:
        return None
    try:
        return float(raw)
    except ValueError:
        raise OpenAIError(400, f"header {name} must be a number, got {raw!r}") from None


def _int_header(headers: Mapping[str, str], name: str) -> int | None:
    raw = headers.get(name)
    if raw is None:
        return None
    try:
        return int(raw)
    except ValueError:
        raise OpenAIError(400, f"header {name} must be an integer, got {raw!r}") from None


def session_ref(headers: Mapping[str, str], body: SessionFields) -> SessionRef:
    """The program ``headers`` and ``body`` name (see the module docstring); a 400 for malformed values."""
    key = source = None
    for label, read in SESSION_SOURCES:
        value = read(headers, body)
        if value:
            key, source = value, label
            break
    if key is not None and len(key) > 256:
        raise OpenAIError(400, f"the session id from {source} is longer than 256 characters")
    last = (
        bool(body.last_turn)
        or bool(body.is_last_step)
        or _flag(headers, "X-Agentrt-Last-Turn")
        or _flag(headers, "X-Dynamo-Session-Final")
    )
    deadline_s = body.deadline_s if body.deadline_s is not None else _float_header(headers, "X-Agentrt-Deadline-S")
    if deadline_s is not None and not deadline_s > 0:
        raise OpenAIError(400, f"deadline_s must be > 0 seconds, got {deadline_s}")
    priority = body.priority if body.priority is not None else _int_header(headers, "X-Agentrt-Priority")
    expected_tool = body.expected_tool or headers.get("X-Agentrt-Expected-Tool") or None
    return SessionRef(key, source, last, deadline_s, priority, expected_tool)
