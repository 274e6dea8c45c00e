"""Executing agent programs: ``Runtime``, engines, policies, trace replay and the simulator.

Layering: ``runtime`` imports ``workflows``, ``toolbridge`` and
``telemetry``; none of them imports ``runtime``.  Everything lives in private
modules (``_runtime.py``, ``_engines/``, ``_policy.py`` ...); this module is
the public surface.

Exceptions (see :mod:`runtime._errors`)::

    AgentRuntimeError
     ├── ModelNotFoundError
     ├── ModelPreparationError
     ├── EngineError
     │    ├── EngineStartError
     │    ├── EngineUnavailableError
     │    ├── EngineRequestError
     │    └── EngineClosedError
     ├── NoEngineError
     ├── ProgramCancelledError
     ├── TraceError
     ├── ResultError
     └── ProfileError
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._engines._base import (
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
from ._errors import (
    AgentRuntimeError,
    EngineClosedError,
    EngineError,
    EngineRequestError,
    EngineStartError,
    EngineUnavailableError,
    ModelNotFoundError,
    ModelPreparationError,
    NoEngineError,
    ProgramCancelledError,
)
from ._events import (
    Event,
    LLMCallFinished,
    LLMCallStarted,
    ProgramFinished,
    ProgramStarted,
    StepFinished,
    StepStarted,
    TokenGenerated,
    ToolCallFinished,
    ToolCallStarted,
)
from ._handle import ProgramHandle
from ._models import KNOWN_MODELS, models_dir, prepare_model, resolve_model
from ._policy import Policy, VLLMPolicy, get_policy, policy_names, register_policy
from ._program import Node, NodeKind, Program, ProgramState
from ._replay import ReplayRun, replay_trace
from ._results import CallResult, ProgramResult, ReplayResult, ResultError, load_result
from ._runtime import DEFAULT_MODEL, Runtime
from ._sim import CostProfile, ProfileError, SimEngine
from ._tokens import Vocabulary, model_vocabulary
from ._trace import TraceCall, TraceError, TraceProgram, dump_trace, load_trace
from ._vclock import run_virtual
from ._workloads import generate_workload

if TYPE_CHECKING:
    from ._engines._inprocess import InProcessEngine
    from ._engines._remote import RemoteEngine
    from ._engines._server import ServerEngine

__all__ = [
    "DEFAULT_MODEL",
    "KNOWN_MODELS",
    "AgentRuntimeError",
    "CallResult",
    "ChatPrompt",
    "Completion",
    "CostProfile",
    "Engine",
    "EngineClosedError",
    "EngineError",
    "EngineRequestError",
    "EngineStartError",
    "EngineStats",
    "EngineUnavailableError",
    "Event",
    "GenerateRequest",
    "InProcessEngine",
    "LLMCallFinished",
    "LLMCallStarted",
    "ModelNotFoundError",
    "ModelPreparationError",
    "NoEngineError",
    "Node",
    "NodeKind",
    "Policy",
    "ProfileError",
    "Program",
    "ProgramCancelledError",
    "ProgramFinished",
    "ProgramHandle",
    "ProgramResult",
    "ProgramStarted",
    "ProgramState",
    "Prompt",
    "RemoteEngine",
    "ReplayResult",
    "ReplayRun",
    "ResultError",
    "Runtime",
    "SamplingOptions",
    "ServerEngine",
    "SimEngine",
    "StepFinished",
    "StepStarted",
    "TokenDelta",
    "TokenGenerated",
    "TokenPrompt",
    "ToolCallFinished",
    "ToolCallStarted",
    "TraceCall",
    "TraceError",
    "TraceProgram",
    "VLLMPolicy",
    "Vocabulary",
    "dump_trace",
    "generate_workload",
    "get_policy",
    "load_result",
    "load_trace",
    "model_vocabulary",
    "models_dir",
    "policy_names",
    "prepare_model",
    "register_policy",
    "replay_trace",
    "resolve_model",
    "run_virtual",
]

# Engine backends load on first use: importing `runtime` must not import vLLM.
_LAZY = {
    "InProcessEngine": "._engines._inprocess",
    "RemoteEngine": "._engines._remote",
    "ServerEngine": "._engines._server",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        obj = getattr(importlib.import_module(_LAZY[name], __name__), name)
        obj.__module__ = "runtime"
        globals()[name] = obj
        return obj
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


for _name in __all__:
    _obj = globals().get(_name)
    if _obj is not None and getattr(_obj, "__module__", "").startswith("runtime._"):
        _obj.__module__ = "runtime"
del _name, _obj
