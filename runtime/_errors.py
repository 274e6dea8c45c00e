"""Exceptions raised by the runtime.

The tree::

    AgentRuntimeError
     ├── ModelNotFoundError          a model name or path could not be resolved
     ├── ModelPreparationError       building or converting a local model failed
     ├── EngineError                 anything an engine reports
     │    ├── EngineStartError       an engine (in-process or server) failed to start
     │    ├── EngineUnavailableError the engine died, is restarting, or is unreachable
     │    ├── EngineRequestError     the engine rejected one request (bad params, too long)
     │    └── EngineClosedError      the engine was closed by us
     ├── NoEngineError               the runtime has no healthy engine to dispatch to
     ├── ProgramCancelledError       awaiting the result of a cancelled program
     ├── TraceError                  a workload trace breaks the trace format (line, field)
     ├── ResultError                 a replay result document cannot be read
     └── ProfileError                a simulator cost profile is missing or malformed

``TraceError``, ``ResultError`` and ``ProfileError`` are also ``ValueError``s;
they live beside the code that raises them (``_trace.py``, ``_results.py``,
``_sim/_cost.py``).

Low-level exceptions (aiohttp, vLLM's own) are converted in one place per
backend, so callers only ever need to catch these.
"""

from __future__ import annotations

__all__ = [
    "AgentRuntimeError",
    "EngineClosedError",
    "EngineError",
    "EngineRequestError",
    "EngineStartError",
    "EngineUnavailableError",
    "ModelNotFoundError",
    "ModelPreparationError",
    "NoEngineError",
    "ProgramCancelledError",
]


class AgentRuntimeError(Exception):
    """Base class of every exception raised by :mod:`runtime`."""


class ModelNotFoundError(AgentRuntimeError, LookupError):
    """A model name or path does not point at a usable model directory."""


class ModelPreparationError(AgentRuntimeError):
    """Building or converting a local model failed."""


class EngineError(AgentRuntimeError):
    """Base class of errors reported by an engine backend."""


class EngineStartError(EngineError):
    """An engine failed to start (bad model, port in use, out of memory...)."""


class EngineUnavailableError(EngineError):
    """The engine died, is restarting, or cannot be reached.

    A request that fails with this error may be retried, on this engine once it
    is healthy again or on another one.
    """


class EngineRequestError(EngineError):
    """The engine rejected one request (invalid parameters, prompt too long...)."""


class EngineClosedError(EngineError):
    """The engine has been closed with ``aclose()``."""


class NoEngineError(AgentRuntimeError):
    """The runtime has no engine that can take a request."""


class ProgramCancelledError(AgentRuntimeError):
    """The program was cancelled before it produced a result."""
