"""What passes between the runtime and an engine: requests, their results, and the engines' reports.

A request (:class:`GenerateRequest`: a :class:`ChatPrompt` or
:class:`TokenPrompt`, :class:`SamplingOptions`, priority and metadata under
the ``METADATA_*`` keys) goes in; :class:`TokenDelta` items and one
:class:`Completion` come back.  :class:`EngineStats`, :class:`EngineLoad` and
:class:`PinStats` are what an engine reports of itself.  Plain frozen data, no
I/O: policies, the journal and the simulator read them without an engine.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeAlias

__all__ = [
    "EXTRA_SAMPLING_FIELDS",
    "CachedPrefix",
    "ChatPrompt",
    "Completion",
    "METADATA_NODE_ID",
    "METADATA_PIN_MODE",
    "METADATA_PIN_TTL_S",
    "METADATA_PREEMPT_RANK",
    "METADATA_PROGRAM_ID",
    "METADATA_WORKFLOW",
    "PIN_MODE_CONTINUUM",
    "EngineLoad",
    "EngineStats",
    "GenerateRequest",
    "MetadataValue",
    "PinStats",
    "Prompt",
    "SamplingOptions",
    "TokenDelta",
    "TokenPrompt",
]

#: Values vLLM accepts in ``SamplingParams.extra_args`` and in the HTTP body's
#: ``vllm_xargs`` alike (the HTTP side is the narrower of the two).
MetadataValue: TypeAlias = str | int | float | list[str | int | float]

# Request metadata keys with a meaning shared by the runtime and the engines.
#: The program a request belongs to (always sent by the runtime).
METADATA_PROGRAM_ID = "program_id"
#: The DAG node of the LLM call (always sent by the runtime).
METADATA_NODE_ID = "node_id"
#: The workflow's name (always sent by the runtime).
METADATA_WORKFLOW = "workflow"
#: Seconds to keep the request's KV blocks pinned for its program after it
#: finishes (a policy's choice).  Only engines with ``supports_pins`` accept it:
#: the runtime refuses to send it to any other.
METADATA_PIN_TTL_S = "pin_ttl_s"
#: How the engine treats pins and whom it preempts: absent for the engines'
#: own soft pins (given up before a request would wait or be preempted);
#: :data:`PIN_MODE_CONTINUUM` for Continuum's public scheduler (hard pins,
#: job-level FCFS, the latest job preempted; docs/kv_pinning.md).  Sent only
#: beside ``pin_ttl_s``; an engine that does not know a mode ignores it.
METADATA_PIN_MODE = "pin_mode"
#: The :data:`METADATA_PIN_MODE` value of the ``continuum`` policy.
PIN_MODE_CONTINUUM = "continuum"
#: Request metadata: the request's rank as a preemption victim, an int (higher: preempted first).  An
#: engine short of KV blocks preempts the running request with the highest rank, ties broken its own
#: way (vLLM: lowest priority, then latest arrival); requests without one rank 0.  The simulator
#: honours it; vLLM engines ignore it (their victim choice is inline in the scheduler: docs/kv_pinning.md).
METADATA_PREEMPT_RANK = "preempt_rank"


@dataclass(frozen=True, slots=True)
class ChatPrompt:
    """Chat messages (``{"role": ..., "content": ...}``) rendered by the engine's chat template.

    ``tools`` are OpenAI function tools (``{"type": "function", "function":
    {"name", "description", "parameters"}}``) for the template to render in
    the model's own tool format (the native path of docs/tools.md); empty on
    the JSON path, whose tools are described in the messages themselves.
    """

    messages: tuple[Mapping[str, Any], ...]
    tools: tuple[Mapping[str, Any], ...] = ()

    @classmethod
    def of(cls, messages: Sequence[Mapping[str, Any]], *, tools: Sequence[Mapping[str, Any]] = ()) -> ChatPrompt:
        return cls(tuple(dict(m) for m in messages), tuple(dict(t) for t in tools))


@dataclass(frozen=True, slots=True)
class TokenPrompt:
    """A prompt given as token ids, sent to the engine untouched."""

    token_ids: tuple[int, ...]


Prompt: TypeAlias = ChatPrompt | TokenPrompt


#: The range of a sampling seed (vLLM's: a signed 64-bit integer).
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
#: vLLM ``SamplingParams`` fields :attr:`SamplingOptions.extra` passes to the engine as they are: they change
#: which tokens are drawn, not the shape of the reply (``n``, ``logprobs`` would).
EXTRA_SAMPLING_FIELDS = frozenset(
    {
        "presence_penalty",
        "frequency_penalty",
        "repetition_penalty",
        "top_k",
        "min_p",
        "min_tokens",
        "logit_bias",
        "stop_token_ids",
        "include_stop_str_in_output",
        "bad_words",
        "allowed_token_ids",
    }
)


@dataclass(frozen=True, slots=True)
class SamplingOptions:
    """How to sample one completion.

    ``json_schema`` turns on structured output: the engine only emits text that
    parses as JSON valid against the schema (vLLM guided decoding).
    ``structural_tag`` (an xgrammar structural tag, as JSON text) constrains
    it to a format with free text and constrained parts, such as a model's
    own tool-call format; at most one of the two may be set.  ``extra`` holds
    further vLLM ``SamplingParams`` fields (:data:`EXTRA_SAMPLING_FIELDS`:
    penalties, ``top_k``, ``min_p``, ``min_tokens``, ``logit_bias`` by token
    id, ``stop_token_ids`` ...), passed to the engine as they are and checked
    by it; the simulator, which models time and not tokens, ignores them.
    """

    max_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False
    json_schema: Mapping[str, Any] | None = None
    structural_tag: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        unknown = sorted(set(self.extra) - EXTRA_SAMPLING_FIELDS)
        if unknown:
            raise ValueError(
                f"extra sampling options {unknown} are not passed to engines; "
                f"known: {', '.join(sorted(EXTRA_SAMPLING_FIELDS))}"
            )
        if self.json_schema is not None and self.structural_tag is not None:
            raise ValueError("json_schema and structural_tag are exclusive: constrain the output with one of them")
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {self.max_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.seed is not None and not INT64_MIN <= self.seed <= INT64_MAX:
            raise ValueError(f"seed must fit in a signed 64-bit integer, got {self.seed}")
        if any(not s for s in self.stop):
            raise ValueError("stop cannot contain an empty string")


@dataclass(frozen=True, slots=True)
class GenerateRequest:
    """One generation request.

    ``priority`` follows vLLM: lower values run first.  ``metadata`` reaches the
    engine's scheduler as ``SamplingParams.extra_args`` (in-process) or
    ``vllm_xargs`` (HTTP); the runtime uses it to tell the engine which program
    and turn a request belongs to.
    """

    request_id: str
    prompt: Prompt
    sampling: SamplingOptions = field(default_factory=SamplingOptions)
    priority: int = 0
    metadata: Mapping[str, MetadataValue] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class TokenDelta:
    """Newly generated text and token ids, streamed while a request runs."""

    text: str
    token_ids: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Completion:
    """The finished result of one request.

    Times are in seconds, measured by the runtime from the moment the request
    was handed to the engine: ``ttft_s`` to the first generated token, ``e2e_s``
    to the last.  ``queued_s`` is the time the engine kept the request waiting
    before scheduling it, when the backend can tell (``None`` otherwise).
    """

    request_id: str
    engine: str
    model: str
    text: str
    token_ids: tuple[int, ...]
    finish_reason: str | None
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    ttft_s: float | None
    e2e_s: float
    queued_s: float | None = None
    prompt_token_ids: tuple[int, ...] | None = None


@dataclass(frozen=True, slots=True)
class EngineStats:
    """A snapshot of one engine's load and totals.

    ``in_flight`` counts requests the runtime has sent and not yet seen finish.
    ``waiting``, ``running`` and ``kv_usage`` (fraction of KV blocks in use,
    0..1) come from the engine's own scheduler when the backend reports them,
    else ``None``.  Token totals are since the engine started.

    The pin counters come from backends that keep a finished request's KV
    blocks referenced for its program's next turn (``supports_pins``): ``pins``
    created, ``pin_hits`` (a program's next request admitted while its pin was
    live), ``pins_expired`` (TTL ran out) and ``pins_released_pressure``
    (released early because other requests needed the blocks), and
    ``pinned_blocks`` (held by pins now); ``None`` when the backend does not
    report them.

    ``recomputed_tokens``: computed tokens thrown away by preemptions (what a
    preempted request had computed, to be computed again).  The host-memory
    KV tier's counters, from engines that have one (``supports_offload``):
    ``bytes_offloaded`` (device to host), ``bytes_loaded`` (host to device)
    and ``host_hit_tokens`` (prompt tokens loaded from host memory instead of
    recomputed); ``None`` where the engine does not report them.
    """

    name: str
    model: str
    healthy: bool
    in_flight: int
    requests_total: int
    prompt_tokens: int
    cached_tokens: int
    completion_tokens: int
    waiting: int | None = None
    running: int | None = None
    kv_usage: float | None = None
    preemptions: int | None = None
    pins: int | None = None
    pin_hits: int | None = None
    pins_expired: int | None = None
    pins_released_pressure: int | None = None
    pinned_blocks: int | None = None
    recomputed_tokens: int | None = None
    bytes_offloaded: int | None = None
    bytes_loaded: int | None = None
    host_hit_tokens: int | None = None


@dataclass(frozen=True, slots=True)
class EngineLoad:
    """What a policy may read of one engine before each call: cheap, no I/O, possibly a little stale.

    ``in_flight`` (requests the runtime has sent and not seen finish) is
    exact.  ``waiting``, ``running`` and ``kv_usage`` (0..1) are the engine
    scheduler's latest figures where the backend has them (in-process vLLM:
    after every engine step; remote servers: as of the last :meth:`Engine.stats`
    call, which reads ``/metrics``; the simulator: now), else ``None``.
    ``pinned_blocks`` is the KV blocks pins hold now on engines that pin
    (``None`` elsewhere); ``kv_blocks`` the engine's total where known, and
    ``block_size`` its tokens per block (``kv_blocks * block_size`` tokens fit);
    ``max_num_seqs`` the most requests one engine step runs, where known.
    """

    name: str
    available: bool
    in_flight: int
    waiting: int | None = None
    running: int | None = None
    kv_usage: float | None = None
    pinned_blocks: int | None = None
    kv_blocks: int | None = None
    block_size: int | None = None
    max_num_seqs: int | None = None

    @property
    def kv_tokens(self) -> int | None:
        """Tokens the KV cache holds in all (``None`` where the engine does not say)."""
        if self.kv_blocks is None or self.block_size is None:
            return None
        return self.kv_blocks * self.block_size


@dataclass(frozen=True, slots=True)
class CachedPrefix:
    """How much of a token prompt an engine's prefix cache holds now (:meth:`Engine.cached_prefix`).

    ``blocks``: the prompt's leading full KV blocks the cache holds, counted
    from the first block up to the first one it lacks (a block that is
    cached after a missing one does not count: it cannot be reused);
    ``prompt_blocks``: the prompt's full blocks (a partial last block is
    never cached); ``block_size``: tokens per block.  Blocks held by running
    requests and freed blocks still cached (vLLM's LRU of cached free
    blocks) both count, as in vLLM's prefix-cache map.
    """

    blocks: int
    prompt_blocks: int
    block_size: int

    @property
    def tokens(self) -> int:
        """The cached prefix in tokens."""
        return self.blocks * self.block_size

    @property
    def ratio(self) -> float:
        """``blocks / prompt_blocks`` (0 for a prompt shorter than one block)."""
        return self.blocks / self.prompt_blocks if self.prompt_blocks else 0.0


@dataclass(frozen=True, slots=True)
class PinStats:
    """Pin counters of one engine since it started, and what pins hold now.

    ``pins`` created (at request finish or by :meth:`Engine.set_pin`),
    ``pin_hits`` (the program's next request was admitted while its pin was
    live), ``pins_expired`` (the time-to-live ran out), ``pins_released``
    (released by :meth:`Engine.release_pin`), ``pins_released_pressure``
    (given up because other requests needed the blocks); ``pinned_blocks``
    and ``pinned_programs`` are live now.
    """

    pins: int = 0
    pin_hits: int = 0
    pins_expired: int = 0
    pins_released: int = 0
    pins_released_pressure: int = 0
    pinned_blocks: int = 0
    pinned_programs: int = 0
