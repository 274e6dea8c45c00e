"""``Agent``: the multi-turn loop of a tool-using model.

Each turn asks the model for either tool calls or a final answer; tool calls
run (concurrently when there are several) and their results are fed back as
``tool`` messages; the loop ends with an answer or when ``max_turns`` is
reached, in which case the last turn is made to answer.  Output the loop
cannot use (a reply that does not parse, a call of an unknown tool, arguments
that fail validation) goes back to the model for repair, up to
``max_repairs`` times per run; one more raises :class:`AgentOutputError`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ._context import Context
from ._errors import AgentOutputError, WorkflowDefinitionError
from ._types import LLMReply, ToolChoice, ToolFormat, ToolLike, ToolMessage, Usage

__all__ = ["Agent", "AgentResult", "AgentTurn"]


def tool_name(tool: object) -> str:
    """The name a model calls ``tool`` by: its ``name`` attribute, else its ``__name__``."""
    name = getattr(tool, "name", None) or getattr(tool, "__name__", None)
    if not isinstance(name, str) or not name:
        raise WorkflowDefinitionError(f"tool {tool!r} has no name (give it a `name` or use a named function)")
    return name


@dataclass(frozen=True, slots=True)
class AgentTurn:
    """One turn of the loop: the model's reply and the tool results it led to."""

    reply: LLMReply
    tool_results: tuple[ToolMessage, ...] = ()


@dataclass(frozen=True, slots=True)
class AgentResult:
    """The outcome of an agent run.

    ``stopped`` is ``"answer"`` when the model answered, ``"max_turns"`` when the
    turn limit forced the end.  ``messages`` is the full conversation.
    ``repairs`` counts the model's unusable outputs that were sent back to it
    (see ``Agent(max_repairs=)``).
    """

    answer: str
    stopped: str
    turns: tuple[AgentTurn, ...]
    messages: tuple[dict[str, Any], ...]
    usage: Usage = field(default_factory=Usage)
    repairs: int = 0

    @property
    def tool_results(self) -> tuple[ToolMessage, ...]:
        return tuple(r for t in self.turns for r in t.tool_results)


class Agent:
    """A tool-using model loop.

    ``instructions`` become the system message.  ``tools`` are functions (sync
    or async, arguments described by their annotations) or tool objects from
    :mod:`toolbridge`.  ``max_turns`` bounds the number of LLM calls.
    ``tool_choice`` applies to every turn but the last, which must answer;
    ``parallel_tool_calls=False`` lets the model make one call per turn
    (small models tend to repeat a call as often as they are allowed).
    A call identical to one that already succeeded in this run (same tool,
    same arguments) is not run again unless ``repeat_calls`` is true (tools
    whose result changes, like polling): the model is given the earlier
    result and told to move on.

    ``max_repairs`` bounds the model's unusable outputs in one run: replies
    that could not be used (invalid or truncated JSON) and tool calls
    refused as an unknown tool or invalid arguments each count one, and each
    goes back to the model as an error to repair.  The ``max_repairs + 1``-th
    raises :class:`AgentOutputError` (quoting the last problems), which fails
    the program unless the workflow catches it.

    ``tool_format`` and ``tool_parser`` are passed to every ``ctx.llm`` call
    (docs/tools.md): on the native path the model's tool calls go back into
    the conversation as an OpenAI assistant ``tool_calls`` message and their
    results as ``tool`` messages, for the chat template to render.
    """

    #: Tool-message error kinds (``toolbridge.ErrorKind`` values) that mean the model's call was unusable.
    REFUSED_CALL_KINDS = frozenset({"unknown_tool", "invalid_args"})

    def __init__(
        self,
        instructions: str,
        *,
        tools: Sequence[ToolLike] = (),
        max_turns: int = 8,
        name: str = "agent",
        max_tokens: int = 256,
        temperature: float = 0.0,
        tool_choice: ToolChoice = "auto",
        parallel_tool_calls: bool = True,
        repeat_calls: bool = False,
        priority: int | None = None,
        max_repairs: int = 3,
        tool_format: ToolFormat = "auto",
        tool_parser: str | None = None,
    ) -> None:
        if not isinstance(instructions, str):
            raise WorkflowDefinitionError(f"Agent instructions must be a string, got {type(instructions).__name__}")
        if not isinstance(max_turns, int) or isinstance(max_turns, bool) or max_turns < 1:
            raise WorkflowDefinitionError(f"Agent max_turns must be an int >= 1, got {max_turns!r}")
        if not isinstance(max_tokens, int) or max_tokens < 1:
            raise WorkflowDefinitionError(f"Agent max_tokens must be an int >= 1, got {max_tokens!r}")
        if not isinstance(max_repairs, int) or isinstance(max_repairs, bool) or max_repairs < 0:
            raise WorkflowDefinitionError(
                f"Agent max_repairs must be an int >= 0 (unusable model outputs sent back for repair), "
                f"got {max_repairs!r}"
            )
        names: list[str] = []
        for t in tools:
            if not callable(t) and not hasattr(t, "parameters"):
                raise WorkflowDefinitionError(f"Agent tools must be functions or tool objects, got {t!r}")
            names.append(tool_name(t))
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise WorkflowDefinitionError(f"Agent {name!r}: duplicate tool name(s): {', '.join(duplicates)}")
        if tool_choice not in ("auto", "required", "none") and tool_choice not in names:
            raise WorkflowDefinitionError(
                f"Agent {name!r}: tool_choice must be 'auto', 'required', 'none' or a tool name "
                f"({', '.join(names) or 'no tools'}), got {tool_choice!r}"
            )
        if tool_format not in ("auto", "native", "json"):
            raise WorkflowDefinitionError(
                f"Agent {name!r}: tool_format must be 'auto', 'native' or 'json', got {tool_format!r}"
            )
        if tool_choice != "none" and tool_choice != "auto" and not names:
            raise WorkflowDefinitionError(f"Agent {name!r}: tool_choice={tool_choice!r} needs at least one tool")
        self.instructions = instructions
        self.tools: tuple[ToolLike, ...] = tuple(tools)
        self.tool_names: tuple[str, ...] = tuple(names)
        self.max_turns = max_turns
        self.name = name
        self.max_tokens = max_tokens
        self.temperature = temperature
        self.tool_choice: ToolChoice = tool_choice
        self.parallel_tool_calls = parallel_tool_calls
        self.repeat_calls = repeat_calls
        self.priority = priority
        self.max_repairs = max_repairs
        self.tool_format: ToolFormat = tool_format
        self.tool_parser = tool_parser

    async def run(self, ctx: Context, task: str | Sequence[Mapping[str, Any]]) -> AgentResult:
        """Run the loop for ``task`` (a user message, or a list of chat messages)."""
        return await ctx.run_agent(self, task)

    async def execute(self, ctx: Context, task: str | Sequence[Mapping[str, Any]]) -> AgentResult:
        """The loop itself; the runtime calls it inside the agent's node (use :meth:`run`)."""
        messages: list[dict[str, Any]] = [{"role": "system", "content": self.instructions}]
        if isinstance(task, str):
            messages.append({"role": "user", "content": task})
        else:
            messages.extend(dict(m) for m in task)
        turns: list[AgentTurn] = []
        usage = Usage()
        reply: LLMReply | None = None
        problems: list[str] = []  # unusable outputs of this run, for max_repairs

        def unusable(problem: str) -> None:
            problems.append(problem)
            if len(problems) > self.max_repairs:
                raise AgentOutputError(self.name, tuple(problems), max_repairs=self.max_repairs, turns=len(turns))

        # Passed only when chosen: contexts written before these options existed keep working.
        formats: dict[str, Any] = {}
        if self.tool_format != "auto":
            formats["tool_format"] = self.tool_format
        if self.tool_parser is not None:
            formats["tool_parser"] = self.tool_parser

        for turn in range(1, self.max_turns + 1):
            last = turn == self.max_turns
            choice: ToolChoice = "none" if last or not self.tools else self.tool_choice
            reply = await ctx.llm(
                messages,
                tools=self.tools or None,
                tool_choice=choice,
                parallel_tool_calls=self.parallel_tool_calls,
                max_tokens=self.max_tokens,
                temperature=self.temperature,
                priority=self.priority,
                **formats,
            )
            usage = usage + reply.usage
            native = reply.tool_format == "native"
            if native and reply.tool_calls and reply.tool_call_error is None:
                # The template renders the calls its own way (the model's format).
                messages.append(
                    {
                        "role": "assistant",
                        "content": reply.text or None,
                        "tool_calls": [call.to_openai() for call in reply.tool_calls],
                    }
                )
            else:
                # The assistant's turn goes back verbatim: the next prompt then
                # starts with exactly the tokens the engine already holds.
                messages.append({"role": "assistant", "content": reply.raw_text or reply.text})
            if reply.tool_call_error is not None:
                turns.append(AgentTurn(reply))
                unusable(f"turn {turn}: reply could not be used ({reply.tool_call_error}): {_excerpt(reply.raw_text)}")
                if last:
                    break
                again = (
                    "Reply again with a well-formed tool call or your answer."
                    if native
                    else "Reply again with one valid JSON object."
                )
                messages.append(
                    {"role": "user", "content": f"Your reply could not be used ({reply.tool_call_error}). {again}"}
                )
                continue
            if not reply.tool_calls:
                turns.append(AgentTurn(reply))
                return AgentResult(reply.text, "answer", tuple(turns), tuple(messages), usage, len(problems))
            # The context remembers what succeeded in this run: a repeated
            # identical call gets the earlier result (unless repeat_calls).
            results = await ctx.gather(
                *(ctx.call_tool(call, self.tools, reuse_results=not self.repeat_calls) for call in reply.tool_calls)
            )
            turns.append(AgentTurn(reply, tuple(results)))
            messages.extend(r.to_message() for r in results)
            for r in results:
                if not r.ok and r.error_kind in self.REFUSED_CALL_KINDS:
                    unusable(f"turn {turn}: call of {r.name!r} refused ({r.error_kind}): {_excerpt(r.content)}")
        answer = reply.text if reply is not None else ""
        return AgentResult(answer, "max_turns", tuple(turns), tuple(messages), usage, len(problems))


def _excerpt(text: str, limit: int = 160) -> str:
    """``text`` quoted for an error message, cut to ``limit`` characters."""
    return repr(text if len(text) <= limit else text[:limit] + "...")
