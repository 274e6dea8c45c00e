"""Engine backends behind one abstract base (:class:`Engine`); this module is the subpackage's face.

- :class:`InProcessEngine`: vLLM's ``AsyncLLM`` in this process (the embedded default).
- :class:`RemoteEngine`: a vLLM OpenAI-compatible server reached over HTTP.
- :class:`ServerEngine`: a ``vllm serve`` subprocess the runtime launches and supervises.
- :class:`PinningScheduler`, :class:`AsyncPinningScheduler`: agentrt's scheduler
  plug-in, loaded by vLLM in its engine-core process (public path:
  :mod:`runtime.vllm_scheduler`).

The rest of the runtime imports engines only through this module:
:class:`Engine` (``_base.py``), what passes between the runtime and an
engine (``_requests.py``: requests, completions, stats, the metadata keys),
``dtype="auto"`` (``_dtype.py``), how a model's chat template does tools
(``_tool_template.py``: what :meth:`Engine.tool_template` answers) and the
backends.  Backends are imported on
first use, so that importing this module never imports vLLM or aiohttp, and
using one backend never imports another's dependencies (a remote-only client
never imports vLLM).  Modules inside the subpackage import each other directly.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import load_on_first_use
from ._base import Engine
from ._dtype import DTYPE_BYTES, resolve_dtype
from ._requests import (
    EXTRA_SAMPLING_FIELDS,
    INT64_MAX,
    INT64_MIN,
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
    EngineLoad,
    EngineStats,
    GenerateRequest,
    MetadataValue,
    PinStats,
    Prompt,
    SamplingOptions,
    TokenDelta,
    TokenPrompt,
)
from ._tool_template import NativeTools, detect_parser, load_native_tools, native_tools_of, template_supports_tools

if TYPE_CHECKING:
    from ._inprocess import InProcessEngine
    from ._pin_scheduler import AsyncPinningScheduler, PinningScheduler
    from ._remote import RemoteEngine
    from ._server import ServerEngine

__all__ = [
    "EXTRA_SAMPLING_FIELDS",
    "INT64_MAX",
    "INT64_MIN",
    "DTYPE_BYTES",
    "METADATA_NODE_ID",
    "METADATA_PIN_MODE",
    "METADATA_PIN_TTL_S",
    "METADATA_PREEMPT_RANK",
    "METADATA_PROGRAM_ID",
    "METADATA_WORKFLOW",
    "AsyncPinningScheduler",
    "CachedPrefix",
    "ChatPrompt",
    "Completion",
    "Engine",
    "EngineLoad",
    "EngineStats",
    "GenerateRequest",
    "InProcessEngine",
    "MetadataValue",
    "NativeTools",
    "PIN_MODE_CONTINUUM",
    "PinStats",
    "PinningScheduler",
    "Prompt",
    "RemoteEngine",
    "SamplingOptions",
    "ServerEngine",
    "TokenDelta",
    "TokenPrompt",
    "detect_parser",
    "load_native_tools",
    "native_tools_of",
    "resolve_dtype",
    "template_supports_tools",
]

# The backends (vLLM, aiohttp) and the scheduler plug-in (vLLM) load on first use.
__getattr__ = load_on_first_use(
    __name__,
    {
        "InProcessEngine": "._inprocess",
        "RemoteEngine": "._remote",
        "ServerEngine": "._server",
        "PinningScheduler": "._pin_scheduler",
        "AsyncPinningScheduler": "._pin_scheduler",
    },
)
