"""The policy interface: what a scheduling policy sees of each call, and what it decides.

A policy is one strategy object that the dispatcher (:mod:`runtime._dispatch`)
consults for every LLM call and tells about every call, tool and program
event.  The same object drives real engines and simulated ones: it sees
engines only through :class:`~runtime.Engine` (``load()``, and the pin
controls of engines that have them).

Per call the policy sees a :class:`CallInfo` (the program with its deadline,
user priority, elapsed time, service received and DAG so far; the call's
node, stage, prompt length, prefix key and the caller's priority) and the
candidate engines (available, not yet failed for this call).  It answers
with a :class:`Route` (the engine, the engine priority, extra request
metadata that every backend forwards), or ``None`` to hold the call in the
runtime's admission queue; held calls are offered again, in the order
:meth:`Policy.held_order` gives, whenever a call finishes, a program
finishes, the policy calls :meth:`PolicyHost.wake`, or every
:attr:`Policy.recheck_s` seconds while any is held.
"""

from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

from .._engines import ChatPrompt, Completion, Engine, MetadataValue, Prompt, SamplingOptions
from .._program import Node, Program

__all__ = [
    "PREFIX_KEY_TOKENS",
    "CallFinished",
    "CallInfo",
    "Policy",
    "PolicyHost",
    "Route",
    "ToolFinished",
    "ToolStarted",
]

#: How many leading tokens of a token prompt make its :attr:`CallInfo.prefix_key`.
PREFIX_KEY_TOKENS = 256
#: Characters per token assumed when a chat prompt's length must be estimated.
_CHARS_PER_TOKEN = 4


class CallInfo:
    """One LLM call as a policy sees it.  Read-only by convention; times in seconds on the runtime's clock.

    - ``program``: the :class:`~runtime.Program` (``id``, ``workflow``,
      ``deadline_s``, ``priority``, ``elapsed()``, ``slack_s()``, ``usage``,
      ``llm_service_s``, ``llm_calls``, ``nodes``: the DAG so far);
    - ``node``: the call's DAG node; ``stage``: the step or stage it belongs
      to (the caller's ``stage=``, else the enclosing step's or agent's name);
    - ``prompt`` and ``sampling`` as sent (``sampling.max_tokens`` bounds the
      output); ``requested_priority``: the caller's ``priority=``, if any;
    - ``arrived_s``: when the call reached the dispatcher;
    - ``timeout_s`` and ``retries``: the caller's bound on the call's
      seconds and on its retries after transient engine failures (``None``:
      the runtime's defaults).
    """

    __slots__ = (
        "_prefix_key",
        "arrived_s",
        "node",
        "program",
        "prompt",
        "requested_priority",
        "retries",
        "sampling",
        "stage",
        "timeout_s",
    )

    def __init__(
        self,
        program: Program,
        node: Node,
        prompt: Prompt,
        sampling: SamplingOptions,
        *,
        stage: str | None,
        requested_priority: int | None,
        arrived_s: float,
        timeout_s: float | None = None,
        retries: int | None = None,
    ) -> None:
        self.program = program
        self.node = node
        self.prompt = prompt
        self.sampling = sampling
        self.stage = stage
        self.requested_priority = requested_priority
        self.arrived_s = arrived_s
        self.timeout_s = timeout_s
        self.retries = retries
        self._prefix_key: str | None = None

    @property
    def level(self) -> int:
        """The call's priority level: the caller's ``priority=``, else the program's user priority (lower first)."""
        requested = self.requested_priority
        return self.program.priority if requested is None else requested

    @property
    def prompt_tokens_exact(self) -> bool:
        """Whether :attr:`prompt_tokens` is exact (token prompts) or estimated (chat prompts)."""
        return not isinstance(self.prompt, ChatPrompt)

    @property
    def prompt_tokens(self) -> int:
        """The prompt's length in tokens: exact for token prompts; for chat prompts
        estimated from its characters (the template is rendered by the engine)."""
        prompt = self.prompt
        if not isinstance(prompt, ChatPrompt):
            return len(prompt.token_ids)
        chars = sum(len(str(m.get("content") or "")) for m in prompt.messages)
        return max(1, chars // _CHARS_PER_TOKEN)

    @property
    def prefix_key(self) -> str:
        """A digest shared by calls whose prompts begin alike, for cache affinity.

        The first :data:`PREFIX_KEY_TOKENS` tokens of a token prompt, or the
        first message (the system prompt, with its tool descriptions) of a
        chat prompt: programs of one app or one agent share it.  Computed on
        first use.
        """
        if self._prefix_key is None:
            prompt = self.prompt
            if isinstance(prompt, ChatPrompt):
                head = json.dumps(prompt.messages[0] if prompt.messages else {}, sort_keys=True, default=str).encode()
            else:
                head = ",".join(map(str, prompt.token_ids[:PREFIX_KEY_TOKENS])).encode()
            self._prefix_key = hashlib.blake2b(head, digest_size=8).hexdigest()
        return self._prefix_key

    def __repr__(self) -> str:
        return f"<CallInfo {self.program.id}/{self.node.id} stage={self.stage!r}>"


@dataclass(frozen=True, slots=True)
class Route:
    """A policy's decision for one call: where it goes, at what engine priority, with what metadata.

    ``priority`` follows vLLM (lower runs first).  ``metadata`` is added to
    the identity the runtime always sends (``program_id``, ``node_id``,
    ``workflow``) and reaches the engine's scheduler on every backend
    (in-process ``extra_args``, HTTP ``vllm_xargs``, the simulator); a key an
    engine cannot honour (``pin_ttl_s`` on an engine without pins) is refused
    with :class:`~runtime.EngineCapabilityError`, never dropped.
    """

    engine: Engine
    priority: int
    metadata: Mapping[str, MetadataValue] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class CallFinished:
    """An LLM call ended: with its ``completion`` (usage, cached tokens, TTFT, time queued, engine),
    or with ``error`` (it failed or was cancelled; ``completion`` is then ``None``)."""

    call: CallInfo
    engine: str | None
    completion: Completion | None
    error: str | None = None


@dataclass(frozen=True, slots=True)
class ToolStarted:
    """A model's tool call is about to run: the moment a pin's time-to-live is decided."""

    program: Program
    node: Node
    tool: str
    call_id: str
    arguments: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class ToolFinished:
    """A tool call ended after ``wall_s`` seconds.

    ``error_kind`` is a ``toolbridge.ErrorKind`` value when not ``ok``.
    """

    program: Program
    node: Node
    tool: str
    call_id: str
    ok: bool
    wall_s: float
    error_kind: str | None = None


class PolicyHost(Protocol):
    """What the runtime gives a policy when it starts (:meth:`Policy.bind`)."""

    @property
    def engines(self) -> Sequence[Engine]:
        """Every engine of the runtime, available or not."""
        ...

    def engine(self, name: str) -> Engine:
        """The engine called ``name`` (``KeyError`` if none)."""
        ...

    def wake(self) -> None:
        """Offer the held calls to :meth:`Policy.route` again now."""
        ...

    def now(self) -> float:
        """The runtime's clock, in seconds."""
        ...


class Policy(ABC):
    """A scheduling policy: admission, engine choice, engine priority and request metadata per LLM call.

    Subclass it, give it a ``name``, implement :meth:`route`, override the
    event hooks it needs, and register it with :func:`runtime.register_policy`.
    :meth:`route` and :meth:`held_order` run on every call and must be quick
    and free of I/O; the async hooks may drive engines (pins) and are awaited
    where the event happens.  One instance serves one runtime at a time.
    """

    name: ClassVar[str]
    #: Set by :meth:`bind`.
    host: PolicyHost

    #: Seconds between offers of held calls while any is held (``None``: only on events).
    recheck_s: ClassVar[float | None] = 0.1

    def bind(self, host: PolicyHost) -> None:
        """Called once the runtime's engines have started; ``host`` reaches them.  Default: keep it."""
        self.host = host

    @abstractmethod
    def route(self, call: CallInfo, engines: Sequence[Engine]) -> Route | None:
        """Where ``call`` goes now, or ``None`` to hold it in the runtime's admission queue.

        ``engines`` are the candidates: available, and not yet failed for
        this call (never empty).  The route's engine must be one of them.
        """

    def held_order(self, calls: Sequence[CallInfo]) -> Sequence[CallInfo]:
        """The order in which held calls are offered to :meth:`route` again; default: as they arrived."""
        return calls

    async def on_call_finished(self, event: CallFinished) -> None:
        """An LLM call finished (or failed, or was cancelled)."""
        return None  # optional hook: a policy overrides what it needs

    async def on_tool_started(self, event: ToolStarted) -> None:
        """A tool call is about to run."""
        return None  # optional hook: a policy overrides what it needs

    async def on_tool_finished(self, event: ToolFinished) -> None:
        """A tool call ended."""
        return None  # optional hook: a policy overrides what it needs

    async def on_program_finished(self, program: Program) -> None:
        """A program ended: ``program.state`` says how (succeeded, failed, cancelled)."""
        return None  # optional hook: a policy overrides what it needs
