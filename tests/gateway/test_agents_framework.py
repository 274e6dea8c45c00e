"""An agent framework that speaks OpenAI (OpenAI Agents SDK) runs its tool loop against the gateway, unmodified.

Only its base URL and a session header change.  Its turns are one program
of the runtime, and the second turn's request hits the KV pin the first
turn's tool call left.
"""

from __future__ import annotations

from typing import Any

import pytest
from openai import AsyncOpenAI

from runtime import Gateway, InProcessEngine, ProgramState, Runtime
from runtime._program import NodeKind

from ..runtime._helpers import poll_until
from .test_gateway import SYSTEM

pytestmark = pytest.mark.engine


async def test_openai_agents_tool_loop_is_one_pinned_program(gateway: Gateway, gw_runtime: Runtime) -> None:
    from agents import (
        Agent,
        FunctionToolResult,
        ModelSettings,
        OpenAIChatCompletionsModel,
        RunContextWrapper,
        Runner,
        ToolsToFinalOutputResult,
        function_tool,
        set_tracing_disabled,
    )

    set_tracing_disabled(True)  # the SDK's own tracing would post to OpenAI's servers
    engine = gw_runtime.engines[0]
    assert isinstance(engine, InProcessEngine)
    hits = (await engine.pin_stats()).pin_hits
    looked_up: list[str] = []

    @function_tool
    def lookup_capital(country: str) -> str:
        """Look up the capital city of a country.

        Args:
            country: The country's name, in English.
        """
        looked_up.append(country)
        return "Tokyo"

    def after_two_rounds(ctx: RunContextWrapper[Any], results: list[FunctionToolResult]) -> ToolsToFinalOutputResult:
        # The tiny random model cannot decide to stop: two tool rounds, then the last result is the answer.
        done = len(looked_up) >= 2
        return ToolsToFinalOutputResult(is_final_output=done, final_output=str(results[-1].output) if done else None)

    async with AsyncOpenAI(base_url=f"{gateway.url}/v1", api_key="unused", max_retries=0) as client:
        agent = Agent(
            name="capitals",
            instructions=SYSTEM,
            tools=[lookup_capital],
            model=OpenAIChatCompletionsModel(model=gateway.model_name, openai_client=client),
            model_settings=ModelSettings(
                tool_choice="required",
                parallel_tool_calls=False,
                max_tokens=128,
                temperature=0,
                extra_headers={"X-Session-ID": "agents-capitals"},
            ),
            tool_use_behavior=after_two_rounds,
            reset_tool_choice=False,
        )
        result = await Runner.run(agent, "What is the capital of Japan?", max_turns=4)

    assert result.final_output == "Tokyo" and len(looked_up) == 2
    program = gw_runtime.programs["agents-capitals"]
    assert program.workflow == "gateway" and program.llm_calls == 2
    llm_calls = [n for n in program.nodes.values() if n.kind is NodeKind.LLM]
    tools = [n for n in program.nodes.values() if n.kind is NodeKind.TOOL]
    # The first round's tool call was answered by the second request: a finished client-side tool node.
    assert tools[0].name == "lookup_capital" and tools[0].ok and tools[0].attributes["client_side"]
    assert (await engine.pin_stats()).pin_hits > hits
    assert llm_calls[1].usage.cached_tokens > 0

    # The framework sends no last-turn mark: the session ends after the gateway's idle timeout (5 s here).
    async def ended() -> bool:
        return program.state.finished

    await poll_until(ended, timeout_s=60)
    assert program.state is ProgramState.SUCCEEDED and program.result["ended"] == "idle"
