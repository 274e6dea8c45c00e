"""The replay lab: workload traces, their replay, the simulator, calibration, comparisons.

Layering: this package sits *above* the core.  It imports only the public
names of ``runtime`` (and of ``workflows`` and ``toolbridge``); nothing in
``runtime``, ``workflows``, ``toolbridge`` or ``telemetry`` imports it, and
importing them loads none of it (a test checks).  A replay runs programs
through the same ``Runtime``, policies, dispatch and engines a user's
workflows take; the simulator is one more engine backend behind
:class:`runtime.Engine`, and the lab's ``agentrt`` subcommands (``replay``,
``calibrate``, ``workload``, ``bench``) are registered through the
``agentrt.commands`` entry point, not by the core command line.

- traces: :class:`TraceProgram`, :class:`TraceCall`, :func:`load_trace`,
  :func:`dump_trace` (``TRACE_FORMAT.md`` is the contract);
- workloads: :func:`generate_workload` (agent, text2sql, bfcl, coding);
- replay: :func:`replay_trace` -> :class:`ReplayRun`;
- results: :class:`ReplayResult` and its parts, :func:`summarize`,
  :func:`load_result`, :func:`compare` (a table and a PNG);
- the simulator: :class:`SimEngine` priced by a :class:`CostProfile`, run in
  virtual time by :func:`run_virtual`;
- calibration: :func:`calibrate_engine` measures a real engine into a profile,
  on the grid points that fit its KV cache (:func:`fitting_decode_points`,
  :func:`fitting_prefill_contexts`); :func:`model_context_limit` is the
  context a model holds (replays size their engines' limit under it).

Exceptions::

    runtime.AgentRuntimeError
     └── ReplayError
          ├── TraceError     a workload trace breaks the trace format (line, field); also a ValueError
          ├── ResultError    a replay result document cannot be read; also a ValueError
          └── ProfileError   a simulator cost profile is missing or malformed; also a ValueError
"""

from __future__ import annotations

from ._bench import SLO_SCALES, compare, plot_labels, slo_attainment_at
from ._calibrate import (
    CPU_BLOCK_SIZE,
    KV_HEADROOM,
    REPLAY_MAX_MODEL_LEN,
    CalibrationProbe,
    cached_prompt_length,
    calibrate_engine,
    calibration_engine,
    fitting_decode_points,
    fitting_prefill_contexts,
    kv_bytes_per_token,
)
from ._errors import ReplayError
from ._model_limits import model_context_limit
from ._replay import ReplayRun, longest_context, replay_trace
from ._results import (
    CallResult,
    ProgramResult,
    ReplayResult,
    ResultError,
    Summary,
    format_summary,
    load_result,
    percentile,
    summarize,
)
from ._sim import CostProfile, ProfileError, QueueOrder, SimEngine, bundled_profiles
from ._tokens import Vocabulary, model_vocabulary
from ._trace import TraceCall, TraceError, TraceProgram, dump_trace, load_trace, prompt_lengths, topological_order
from ._vclock import VirtualClockLoop, run_virtual
from ._workloads import WorkloadKind, estimate_unloaded_s, generate_workload, workload_kinds

__all__ = [
    "CPU_BLOCK_SIZE",
    "KV_HEADROOM",
    "REPLAY_MAX_MODEL_LEN",
    "SLO_SCALES",
    "CalibrationProbe",
    "CallResult",
    "CostProfile",
    "ProfileError",
    "ProgramResult",
    "QueueOrder",
    "ReplayError",
    "ReplayResult",
    "ReplayRun",
    "ResultError",
    "SimEngine",
    "Summary",
    "TraceCall",
    "TraceError",
    "TraceProgram",
    "VirtualClockLoop",
    "Vocabulary",
    "WorkloadKind",
    "bundled_profiles",
    "cached_prompt_length",
    "calibrate_engine",
    "calibration_engine",
    "compare",
    "dump_trace",
    "estimate_unloaded_s",
    "fitting_decode_points",
    "fitting_prefill_contexts",
    "format_summary",
    "generate_workload",
    "kv_bytes_per_token",
    "load_result",
    "load_trace",
    "longest_context",
    "model_context_limit",
    "model_vocabulary",
    "percentile",
    "plot_labels",
    "prompt_lengths",
    "replay_trace",
    "run_virtual",
    "slo_attainment_at",
    "summarize",
    "topological_order",
    "workload_kinds",
]

# Tracebacks and reprs show the public path (httpx does the same).
for _name in __all__:
    _obj = globals()[_name]
    if getattr(_obj, "__module__", "").startswith("runtime.replay._"):
        _obj.__module__ = "runtime.replay"
del _name, _obj
