"""Executing agent programs: ``Runtime``, engines, policies, programs and their events.

Layering: ``runtime`` imports ``workflows``, ``toolbridge`` and
``telemetry``; none of them imports ``runtime``.  Everything lives in private
modules (``_runtime.py``, ``_dispatch.py``, ``_policies/``, ``_engines/`` ...);
this module is the public surface.  The replay lab (traces, workloads, the
simulator, calibration, comparisons) is the subpackage :mod:`runtime.replay`,
built on these names only; importing ``runtime`` does not load it.

Exceptions (see :mod:`runtime._errors`)::

    AgentRuntimeError
     ├── ModelNotFoundError
     ├── ModelPreparationError
     ├── EngineError
     │    ├── EngineStartError
     │    ├── EngineUnavailableError
     │    ├── EngineRequestError
     │    ├── EngineClosedError
     │    └── EngineCapabilityError
     ├── NoEngineError
     ├── PolicyError
     ├── RuntimeStateError
     ├── ProgramIdInUseError
     ├── ProgramCancelledError
     └── JournalError
          ├── JournalDivergenceError
          └── ProgramNotFoundError
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._engines import (
    DTYPE_BYTES,
    EXTRA_SAMPLING_FIELDS,
    METADATA_NODE_ID,
    METADATA_PIN_MODE,
    METADATA_PIN_TTL_S,
    METADATA_PREEMPT_RANK,
    METADATA_PROGRAM_ID,
    METADATA_WORKFLOW,
    PIN_MODE_CONTINUUM,
    CachedPrefix,
    ChatPrompt,
    Completion,
    Engine,
    EngineLoad,
    EngineStats,
    GenerateRequest,
    MetadataValue,
    PinStats,
    Prompt,
    SamplingOptions,
    TokenDelta,
    TokenPrompt,
    resolve_dtype,
)
from ._errors import (
    AgentRuntimeError,
    EngineCapabilityError,
    EngineClosedError,
    EngineError,
    EngineRequestError,
    EngineStartError,
    EngineUnavailableError,
    JournalDivergenceError,
    JournalError,
    ModelNotFoundError,
    ModelPreparationError,
    NoEngineError,
    PolicyError,
    ProgramCancelledError,
    ProgramIdInUseError,
    ProgramNotFoundError,
    RuntimeStateError,
)
from ._events import (
    Event,
    EventsDropped,
    LLMCallFinished,
    LLMCallStarted,
    ProgramFinished,
    ProgramStalled,
    ProgramStarted,
    StepFinished,
    StepReplayed,
    StepStarted,
    TokenGenerated,
    ToolCallFinished,
    ToolCallStarted,
    WaitingCall,
)
from ._handle import ProgramHandle
from ._journal import Journal, JournalState, PostgresJournal, ProgramRecord, PruneReport, SQLiteJournal, StepRecord
from ._lazy import load_on_first_use
from ._models import KNOWN_MODELS, models_dir, prepare_model, resolve_model
from ._policies import (
    AgentrtPolicy,
    AutellixPolicy,
    CallFinished,
    CallInfo,
    ContinuumPolicy,
    DynamoPolicy,
    HexgenPolicy,
    LlmdPolicy,
    Policy,
    PolicyHost,
    Route,
    ToolFinished,
    ToolStarted,
    VLLMPolicy,
    get_policy,
    policy_names,
    register_policy,
)
from ._program import Node, NodeKind, Program, ProgramState
from ._runtime import DEFAULT_MODEL, Runtime

if TYPE_CHECKING:
    from ._engines import InProcessEngine, RemoteEngine, ServerEngine
    from ._gateway import Gateway, Tenant, load_api_keys

__all__ = [
    "DEFAULT_MODEL",
    "DTYPE_BYTES",
    "EXTRA_SAMPLING_FIELDS",
    "KNOWN_MODELS",
    "METADATA_NODE_ID",
    "METADATA_PIN_MODE",
    "METADATA_PIN_TTL_S",
    "METADATA_PREEMPT_RANK",
    "METADATA_PROGRAM_ID",
    "METADATA_WORKFLOW",
    "AgentRuntimeError",
    "AgentrtPolicy",
    "AutellixPolicy",
    "CachedPrefix",
    "CallFinished",
    "CallInfo",
    "ChatPrompt",
    "Completion",
    "ContinuumPolicy",
    "DynamoPolicy",
    "HexgenPolicy",
    "Engine",
    "EngineCapabilityError",
    "EngineClosedError",
    "EngineError",
    "EngineLoad",
    "EngineRequestError",
    "EngineStartError",
    "EngineStats",
    "EngineUnavailableError",
    "Event",
    "EventsDropped",
    "Gateway",
    "GenerateRequest",
    "InProcessEngine",
    "Journal",
    "JournalDivergenceError",
    "JournalError",
    "JournalState",
    "LLMCallFinished",
    "LLMCallStarted",
    "LlmdPolicy",
    "MetadataValue",
    "ModelNotFoundError",
    "ModelPreparationError",
    "NoEngineError",
    "Node",
    "NodeKind",
    "PIN_MODE_CONTINUUM",
    "PinStats",
    "PostgresJournal",
    "Policy",
    "PolicyError",
    "PolicyHost",
    "Program",
    "ProgramCancelledError",
    "ProgramFinished",
    "ProgramHandle",
    "ProgramIdInUseError",
    "ProgramNotFoundError",
    "ProgramRecord",
    "ProgramStalled",
    "ProgramStarted",
    "ProgramState",
    "Prompt",
    "PruneReport",
    "RemoteEngine",
    "Route",
    "Runtime",
    "SQLiteJournal",
    "RuntimeStateError",
    "SamplingOptions",
    "ServerEngine",
    "StepFinished",
    "StepRecord",
    "StepReplayed",
    "StepStarted",
    "TokenDelta",
    "TokenGenerated",
    "Tenant",
    "TokenPrompt",
    "ToolCallFinished",
    "ToolCallStarted",
    "ToolFinished",
    "ToolStarted",
    "VLLMPolicy",
    "WaitingCall",
    "get_policy",
    "load_api_keys",
    "models_dir",
    "policy_names",
    "prepare_model",
    "register_policy",
    "resolve_dtype",
    "resolve_model",
]

# Engine backends and the gateway load on first use, from their subpackages' faces (which name the modules):
# importing `runtime` must not import vLLM or the web server.
__getattr__ = load_on_first_use(
    __name__,
    dict.fromkeys(("InProcessEngine", "RemoteEngine", "ServerEngine"), "._engines")
    | dict.fromkeys(("Gateway", "Tenant", "load_api_keys"), "._gateway"),
    shown_in=__name__,
)


for _name in __all__:
    _obj = globals().get(_name)
    if _obj is not None and getattr(_obj, "__module__", "").startswith("runtime._"):
        _obj.__module__ = "runtime"
del _name, _obj
