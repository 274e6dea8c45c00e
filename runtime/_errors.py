"""Exceptions raised by the runtime.

The tree::

    AgentRuntimeError
     ├── ModelNotFoundError          a model name or path could not be resolved
     ├── ModelPreparationError       building or converting a local model failed
     ├── EngineError                 anything an engine reports
     │    ├── EngineStartError       an engine (in-process or server) failed to start
     │    ├── EngineUnavailableError the engine died, is restarting, or is unreachable
     │    ├── EngineRequestError     the engine rejected one request (bad params, too long)
     │    ├── EngineClosedError      the engine was closed by us
     │    └── EngineCapabilityError  the engine cannot do what was asked (pin KV blocks, ...)
     ├── NoEngineError               no engine took an LLM call through all its retry rounds
     ├── PolicyError                 a scheduling policy answered something the runtime cannot carry out
     ├── RuntimeStateError           the Runtime is not running, or was closed
     ├── ProgramIdInUseError         a program id given to start_program is taken by a running program
     ├── ProgramCancelledError       awaiting the result of a cancelled program
     └── JournalError                the journal cannot store or give back what a program needs
          ├── JournalDivergenceError a resumed program's code no longer makes the steps its journal holds
          └── ProgramNotFoundError   no program with that id in the journal

The replay lab (:mod:`runtime.replay`) derives its own errors from
``AgentRuntimeError`` and draws them in its own docstring.

Low-level exceptions (aiohttp, vLLM's own) are converted in one place per
backend, so callers only ever need to catch these.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "AgentRuntimeError",
    "EngineCapabilityError",
    "EngineClosedError",
    "EngineError",
    "EngineRequestError",
    "EngineStartError",
    "EngineUnavailableError",
    "JournalDivergenceError",
    "JournalError",
    "ModelNotFoundError",
    "ModelPreparationError",
    "NoEngineError",
    "PolicyError",
    "ProgramCancelledError",
    "ProgramIdInUseError",
    "ProgramNotFoundError",
    "RuntimeStateError",
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
    """The engine rejected one request (invalid parameters, prompt too long...).

    ``param`` names the request field at fault when the engine says which
    (``"max_tokens"``, ``"stop"``, ``"messages"`` ...), else ``None``.
    """

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param

    def __reduce__(self) -> tuple[Any, ...]:  # pickled with its param (the journal stores failures)
        return (_engine_request_error, (str(self), self.param))


def _engine_request_error(message: str, param: str | None) -> EngineRequestError:
    return EngineRequestError(message, param=param)


class EngineClosedError(EngineError):
    """The engine has been closed with ``aclose()``."""


class EngineCapabilityError(EngineError):
    """The engine lacks a capability a caller asked for (see :attr:`runtime.Engine.supports_pins`).

    Raised instead of ignoring the request, so that a policy that pins KV
    blocks on an engine that cannot hold them learns it at once.
    """


class NoEngineError(AgentRuntimeError):
    """No engine served an LLM call: none was available, or each failed it, through all its retry rounds.

    The message names the program, the call's node, every engine's state
    and what each attempt answered; the last engine error is chained.
    """


class PolicyError(AgentRuntimeError):
    """A scheduling policy's decision cannot be carried out (an engine that is not a candidate, ...)."""


class RuntimeStateError(AgentRuntimeError):
    """The :class:`~runtime.Runtime` is not in a state to do that: not entered yet, or closed."""


class ProgramIdInUseError(AgentRuntimeError, ValueError):
    """A program id passed to :meth:`~runtime.Runtime.start_program` belongs to a running program."""


class ProgramCancelledError(AgentRuntimeError):
    """The program was cancelled before it produced a result."""


class JournalError(AgentRuntimeError):
    """The journal (``Runtime(journal=...)``) failed to store or load what a program needs.

    Raised when the database cannot be opened or written, when a value a
    step returned cannot be serialized (the journal pickles results), and for
    the subclasses below.
    """


class JournalDivergenceError(JournalError):
    """Replaying a resumed program met a step that differs from the one its journal holds.

    The workflow's code (or something it reads that is not journaled: the
    clock, random numbers, the environment) changed since the program ran, so
    the journaled results no longer belong where the code now asks for them.
    The message names the step by position, kind and name.
    """


class ProgramNotFoundError(JournalError, LookupError):
    """No program with the given id is in the journal."""
