"""A scripted Context for unit tests of pure workflow logic (no engine).

Integration tests run the same code on the real runtime and engine; this
double only lets the agent loop's branching be tested exhaustively and fast.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeVar

from workflows import (
    Agent,
    AgentResult,
    Context,
    LLMReply,
    StepCall,
    TokenReply,
    ToolCall,
    ToolChoice,
    ToolLike,
    ToolMessage,
    ToolRun,
)

T = TypeVar("T")


class FakeContext(Context):
    def __init__(self, replies: Sequence[LLMReply] = ()) -> None:
        self.replies = list(replies)
        self.llm_calls: list[dict[str, Any]] = []
        self.tool_calls: list[ToolCall] = []
        #: ``reuse_results`` of each call_tool call, in order.
        self.reuse_results: list[bool] = []

    @property
    def program_id(self) -> str:
        return "fake"

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
        on_token: Callable[[str], None] | None = None,
    ) -> LLMReply:
        self.llm_calls.append({"messages": [dict(m) for m in messages], "tool_choice": tool_choice})
        return self.replies.pop(0)

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
    ) -> TokenReply:
        raise NotImplementedError("the fake context runs no token-level calls")

    async def gather(self, *aws: Awaitable[T]) -> list[T]:
        return [await aw for aw in aws]

    async def call_tool(self, call: ToolCall, tools: Sequence[ToolLike], *, reuse_results: bool = False) -> ToolMessage:
        self.tool_calls.append(call)
        self.reuse_results.append(reuse_results)
        fn = {getattr(t, "__name__", ""): t for t in tools}[call.name]
        assert callable(fn)
        return ToolMessage(call.id, call.name, str(fn(**call.arguments)))

    async def start_tool(self, call: ToolCall) -> ToolRun:
        raise NotImplementedError("the fake context starts no tools that run elsewhere")

    async def run_step(self, call: StepCall[T]) -> T:
        return await call.step.fn(self, *call.args, **call.kwargs)

    async def run_agent(self, agent: Agent, task: str | Sequence[Mapping[str, Any]]) -> AgentResult:
        return await agent.execute(self, task)
