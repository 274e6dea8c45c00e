"""Which engine holds the context a call continues: per program, its last few finished calls' contexts.

A call of a multi-turn program usually begins with the whole context of one
of the program's earlier calls (its prompt and reply, then a tool result);
in a DAG with parallel branches each branch continues its own.  The engine
that ran that earlier call has the context in its prefix cache (pinned, or
until it is evicted), so that is where the call should go, the *precise*
prefix affinity of llm-d's scorer, at the cost of a few comparisons:

- a token prompt continues a context of ``L`` tokens when it is at least
  ``L`` long and agrees with it on the first and the last
  :data:`FINGERPRINT_TOKENS` of those ``L`` tokens (random token ids make a
  false match vanishingly rare; the price is O(1), not O(L));
- a chat prompt continues a context of ``n`` messages and a reply when its
  message ``n`` (0-based) is that reply.

The longest context matched wins.  Each program keeps its last
:data:`CONTEXTS_PER_PROGRAM` contexts, dropped when the program ends.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from .._engines import ChatPrompt, Completion, Engine, Prompt

__all__ = ["CONTEXTS_PER_PROGRAM", "FINGERPRINT_TOKENS", "ContextIndex"]

#: Tokens compared at each end of a context.
FINGERPRINT_TOKENS = 8
#: Contexts remembered per program (parallel branches each leave one).
CONTEXTS_PER_PROGRAM = 8


@dataclass(frozen=True, slots=True)
class _TokenContext:
    engine: Engine
    length: int
    head: tuple[int, ...]
    tail: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class _ChatContext:
    engine: Engine
    messages: int
    reply: str


class ContextIndex:
    """The recent contexts of live programs and the engines holding them."""

    def __init__(self) -> None:
        self._programs: dict[str, deque[_TokenContext | _ChatContext]] = {}

    def remember(self, program_id: str, prompt: Prompt, completion: Completion, engine: Engine) -> None:
        """A call of the program finished on ``engine``: its prompt and reply are a context there now."""
        contexts = self._programs.get(program_id)
        if contexts is None:
            contexts = self._programs[program_id] = deque(maxlen=CONTEXTS_PER_PROGRAM)
        if isinstance(prompt, ChatPrompt):
            contexts.append(_ChatContext(engine, len(prompt.messages), completion.text))
            return
        # The ends of prompt + reply, without copying the whole context (tens of thousands of tokens).
        prompt_ids, reply_ids = prompt.token_ids, completion.token_ids
        n = FINGERPRINT_TOKENS
        head = (prompt_ids[:n] + reply_ids[:n])[:n]
        tail = (prompt_ids[-n:] + reply_ids[-n:])[-n:]
        contexts.append(_TokenContext(engine, len(prompt_ids) + len(reply_ids), head, tail))

    def holder(self, program_id: str, prompt: Prompt, engines: Sequence[Engine]) -> Engine | None:
        """The engine among ``engines`` holding the longest earlier context that ``prompt`` continues, if any."""
        contexts = self._programs.get(program_id)
        if not contexts:
            return None
        best: Engine | None = None
        best_length = -1
        if isinstance(prompt, ChatPrompt):
            messages = prompt.messages
            for context in contexts:
                if not isinstance(context, _ChatContext) or context.messages <= best_length:
                    continue
                if (
                    len(messages) > context.messages
                    and _content(messages[context.messages]) == context.reply
                    and any(e is context.engine for e in engines)
                ):
                    best, best_length = context.engine, context.messages
            return best
        tokens = prompt.token_ids
        n = FINGERPRINT_TOKENS
        for context in contexts:
            if not isinstance(context, _TokenContext) or context.length <= best_length:
                continue
            length = context.length
            if (
                len(tokens) >= length
                and tokens[:n] == context.head
                and tokens[max(0, length - n) : length] == context.tail
                and any(e is context.engine for e in engines)
            ):
                best, best_length = context.engine, length
        return best

    def forget(self, program_id: str) -> None:
        """The program ended."""
        self._programs.pop(program_id, None)

    def __len__(self) -> int:
        return len(self._programs)


def _content(message: object) -> str | None:
    if isinstance(message, Mapping):
        content = message.get("content")
        return content if isinstance(content, str) else None
    return None
