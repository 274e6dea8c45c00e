"""Engine backends behind one abstract base (:class:`Engine`).

- :class:`InProcessEngine`: vLLM's ``AsyncLLM`` in this process (the embedded default).
- :class:`RemoteEngine`: a vLLM OpenAI-compatible server reached over HTTP.
- :class:`ServerEngine`: a ``vllm serve`` subprocess the runtime launches and supervises.

Backends are imported lazily so that using one never imports another's
dependencies (a remote-only client never imports vLLM).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._base import (
    ChatPrompt,
    Completion,
    Engine,
    EngineStats,
    GenerateRequest,
    Prompt,
    SamplingOptions,
    TokenDelta,
    TokenPrompt,
)

if TYPE_CHECKING:
    from ._inprocess import InProcessEngine
    from ._remote import RemoteEngine
    from ._server import ServerEngine

__all__ = [
    "ChatPrompt",
    "Completion",
    "Engine",
    "EngineStats",
    "GenerateRequest",
    "InProcessEngine",
    "Prompt",
    "RemoteEngine",
    "SamplingOptions",
    "ServerEngine",
    "TokenDelta",
    "TokenPrompt",
]

_LAZY = {"InProcessEngine": "._inprocess", "RemoteEngine": "._remote", "ServerEngine": "._server"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
