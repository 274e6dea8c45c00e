"""The context a workflow's code receives: its only door to the runtime.

Workflows never import the runtime (the dependency rule: ``workflows``
imports nothing of ours).  The runtime implements :class:`Context`; tests may
implement it too.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from ._types import LLMReply, ReplyDelta, TokenReply, ToolCall, ToolChoice, ToolFormat, ToolLike, ToolMessage

if TYPE_CHECKING:
    from ._agent import Agent, AgentResult
    from ._decorators import StepCall

__all__ = ["Context", "ToolRun"]

T = TypeVar("T")


class Context(ABC):
    """What a running step or workflow can ask of the runtime.

    One context exists per running step (and one for the workflow body); they
    share the program they belong to.
    """

    @property
    @abstractmethod
    def program_id(self) -> str:
        """The id of the program (one run of a workflow) this context belongs to."""

    @abstractmethod
    async def llm(
        self,
        messages: Sequence[Mapping[str, Any]],
        *,
        max_tokens: int = 256,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int | None = None,
        stop: Sequence[str] = (),
        tools: Sequence[ToolLike] | None = None,
        tool_choice: ToolChoice = "auto",
        parallel_tool_calls: bool = True,
        json_schema: Mapping[str, Any] | None = None,
        priority: int | None = None,
        ignore_eos: bool = False,
        stage: str | None = None,
        timeout_s: float | None = None,
        retries: int | None = None,
        tool_format: ToolFormat = "auto",
        tool_parser: str | None = None,
        on_token: Callable[[str], None] | None = None,
        on_delta: Callable[[ReplyDelta], None] | None = None,
        extra_sampling: Mapping[str, Any] | None = None,
    ) -> LLMReply:
        """Run one LLM call on the program's behalf.

        ``messages`` are OpenAI-style chat messages.  With ``tools`` the model
        either calls tools (``reply.tool_calls``) or answers (``reply.text``),
        as ``tool_choice`` allows (``parallel_tool_calls=False``: at most one
        call per reply).  ``tool_format`` chooses how (docs/tools.md):
        ``"native"`` renders the tools through the model's chat template and
        parses its own call format with a vLLM tool parser (``tool_parser``
        names one, overriding the one found from the template; a model
        without tool support raises ``ValueError``), constraining the
        output only when a call is required; ``"json"`` constrains the
        output to a JSON protocol by structured output, so it always parses;
        ``"auto"`` is native where the model supports it, else JSON.
        Schema-only tools (any :class:`ToolSpec`) are enough to prompt with.
        ``json_schema`` constrains a plain reply
        to JSON valid against the schema.  ``priority`` (lower runs first)
        overrides the program's priority for this call.  ``stage`` names the
        stage of the program the call belongs to, for scheduling policies
        (default: the enclosing step's or agent's name).  ``timeout_s``
        bounds the call in seconds, queueing included (``TimeoutError``);
        ``retries`` is how many times a call that failed on a transient
        engine error (an engine that died or restarts) is tried again; both
        default to the runtime's settings.  ``on_token`` is called with each
        piece of text as the engine streams it (a reply replayed from a
        journal streams none); it runs in the calling task, must be quick,
        and an exception it raises fails the call.  ``on_delta`` is called,
        the same way, with the reply read as it streams (:class:`ReplyDelta`):
        answer text, and with tools each call's id and name as soon as the
        model has written them, then its arguments piece by piece, never the
        tool format's own syntax.  What it streams is what the model wrote; a
        reply that does not parse in the end (``reply.tool_call_error``) may
        have streamed part of a call.  ``extra_sampling`` passes further
        vLLM sampling fields to the engine as they are (penalties, ``top_k``,
        ``min_p``, ``min_tokens``, ``logit_bias`` by token id,
        ``stop_token_ids`` ...; ``runtime.EXTRA_SAMPLING_FIELDS``), checked
        there: a value vLLM refuses fails the call with its reason.
        """

    @abstractmethod
    async def llm_tokens(
        self,
        prompt_token_ids: Sequence[int],
        *,
        max_tokens: int,
        ignore_eos: bool = False,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int | None = None,
        stop: Sequence[str] = (),
        priority: int | None = None,
        stage: str | None = None,
        timeout_s: float | None = None,
        retries: int | None = None,
        on_token: Callable[[str], None] | None = None,
        extra_sampling: Mapping[str, Any] | None = None,
    ) -> TokenReply:
        """Run one LLM call on a prompt given as token ids; the reply carries the generated ids and their text.

        The token-level twin of :meth:`llm`, for callers that tokenize
        themselves (trace replay, a completions endpoint): no chat template,
        no tools.  It takes the same path as :meth:`llm` through the
        runtime's policy, dispatch, failover and bookkeeping, and its other
        options mean what they mean there.  With ``ignore_eos`` exactly
        ``max_tokens`` tokens are generated; generation also ends at any of
        the ``stop`` strings (not included in the text).
        """

    @abstractmethod
    async def gather(self, *aws: Awaitable[T]) -> list[T]:
        """Run awaitables (step calls, coroutines) concurrently; results in order.

        If one fails, the others are cancelled and its exception is raised.
        """

    @abstractmethod
    async def call_tool(self, call: ToolCall, tools: Sequence[ToolLike], *, reuse_results: bool = False) -> ToolMessage:
        """Run the tool a model asked for; errors come back in the message, never raised.

        With ``reuse_results``, a call with the same name and arguments as one
        that already succeeded through this context (one agent run) does not
        run again: the message repeats the earlier result, tells the model
        so, and has ``error_kind="repeated"``.
        """

    @abstractmethod
    async def start_tool(self, call: ToolCall) -> ToolRun:
        """Tell the runtime that the tool ``call`` asks for now runs elsewhere; end it with the run returned.

        For a tool that something other than the runtime executes (the
        client of an OpenAI-compatible endpoint, a worker, a person): the
        call becomes a tool node of the program, its events are emitted,
        and the scheduling policy treats the program as waiting on that
        tool, as for :meth:`call_tool` (which runs the tool itself the same
        way).  Call :meth:`ToolRun.finish` when the tool has answered, or
        :meth:`ToolRun.cancel` when it will not.  Its outcome is the
        executor's and is not journaled.
        """

    @abstractmethod
    async def run_step(self, call: StepCall[T]) -> T:
        """Run a step call with its retries and timeout (what ``await step(ctx, ...)`` does)."""

    @abstractmethod
    async def run_agent(self, agent: Agent, task: str | Sequence[Mapping[str, Any]]) -> AgentResult:
        """Run an agent's loop as a node of this program (what ``agent.run(ctx, task)`` does)."""


class ToolRun(ABC):
    """A tool call started with :meth:`Context.start_tool`, running elsewhere until its executor ends it.

    End it once: :meth:`finish` when the tool has answered, :meth:`cancel`
    when it will not; calls after the first do nothing.
    """

    @property
    @abstractmethod
    def call(self) -> ToolCall:
        """The tool call that runs."""

    @property
    @abstractmethod
    def ended(self) -> bool:
        """Whether :meth:`finish` or :meth:`cancel` has ended it."""

    @abstractmethod
    async def finish(self, message: ToolMessage | None = None, *, wall_s: float | None = None) -> None:
        """The tool has answered.

        ``message`` is its outcome as the model will see it (a failed one,
        ``ok`` false, fails the call with its ``content`` and
        ``error_kind``); ``None``: it succeeded, and its result stays with the
        executor.  ``wall_s`` is how long it ran, in seconds (default: the
        seconds since :meth:`Context.start_tool`).  It cannot be cancelled
        once called: the runtime's bookkeeping completes.
        """

    @abstractmethod
    async def cancel(self, reason: str = "cancelled") -> None:
        """The tool will not answer: the call fails with ``reason`` and error kind ``"cancelled"``."""
