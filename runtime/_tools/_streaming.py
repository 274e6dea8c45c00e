"""A reply read as it streams: answer text and tool-call pieces, from the raw text the engine sends.

:meth:`~._calling.ToolCalling.stream` gives one :class:`ReplyStream` per
call, fed each piece of generated text (and its token ids) in order; each
:meth:`ReplyStream.feed` returns what the piece added as a
:class:`workflows.ReplyDelta`, or None.  One reader per path:

- :class:`PlainStream`: no tools (or ``tool_choice="none"``): the text as it is;
- :class:`JsonProtocolStream`: agentrt's JSON protocol (:mod:`._json_protocol`):
  the ``answer`` string decoded as it grows, and each call's ``name`` then
  its ``arguments`` object's text as it is written;
- :class:`NativeStream`: the model's own format, read by the streaming half
  of the same vLLM tool parser that reads the whole reply (what ``vllm
  serve`` streams).

Tool-call ids are the caller's (``call_id(index)``), so the pieces carry the
ids the parsed reply will.  A reader never raises on what the model wrote:
output it cannot follow ends its stream, and the whole reply's parse reports
the error.
"""

from __future__ import annotations

import json
import logging
from abc import ABC, abstractmethod
from collections.abc import Callable, Generator, Sequence
from typing import Any

from workflows import ReplyDelta, ToolCallDelta, ToolSpec

from ._native import NativeTools, parser_class, quiet_logger, tool_request

__all__ = ["JsonProtocolStream", "NativeStream", "PlainStream", "ReplyStream"]

logger = logging.getLogger(__name__)

CallId = Callable[[int], str]

_WHITESPACE = " \t\r\n"
_ESCAPES = {'"': '"', "\\": "\\", "/": "/", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t"}


class ReplyStream(ABC):
    """One call's reply, read piece by piece."""

    @abstractmethod
    def feed(self, text: str, token_ids: Sequence[int] = ()) -> ReplyDelta | None:
        """What ``text`` (the next piece the engine streamed, and its ``token_ids``) adds; None: nothing yet."""


class PlainStream(ReplyStream):
    """A reply without tools: its text as it comes."""

    def feed(self, text: str, token_ids: Sequence[int] = ()) -> ReplyDelta | None:
        return ReplyDelta(text) if text else None


# A reader is a generator fed one character at a time (``send``); it writes what it reads into its sink.
_Reader = Generator[None, str, None]


class _Sink:
    def __init__(self) -> None:
        self.text: list[str] = []
        self.calls: list[ToolCallDelta] = []

    def take(self) -> ReplyDelta | None:
        if not self.text and not self.calls:
            return None
        delta = ReplyDelta("".join(self.text), tuple(self.calls))
        # Cleared in place: readers hold the lists' bound methods.
        self.text.clear()
        self.calls.clear()
        return delta


class JsonProtocolStream(ReplyStream):
    """agentrt's JSON protocol, ``{"answer": "..."}`` or ``{"tool_calls": [{"name", "arguments"}, ...]}``, as it grows.

    The answer streams as decoded text.  A call streams its ``name`` once
    complete (with its id), then its ``arguments`` object's JSON text as
    written, so the pieces join into the object.  Whitespace between tokens
    is allowed (a server whose grammar permits it); other keys are skipped.
    """

    def __init__(self, call_id: CallId) -> None:
        self._call_id = call_id
        self._sink = _Sink()
        self._reader: _Reader | None = self._reply()
        next(self._reader)

    def feed(self, text: str, token_ids: Sequence[int] = ()) -> ReplyDelta | None:
        reader = self._reader
        if reader is not None:
            try:
                for char in text:
                    reader.send(char)
            except StopIteration:  # the object closed, or the model wrote what the protocol does not hold
                self._reader = None
        return self._sink.take()

    # -- the readers: each gets its characters with ``char = yield`` -------------------

    def _reply(self) -> _Reader:
        char = yield from _skip_whitespace((yield))
        if char != "{":
            return
        while True:
            char = yield from _skip_whitespace((yield))
            if char != '"':
                return
            key, char = yield from _member()
            if key is None:
                return
            if key == "answer" and char == '"':
                char = yield from _skip_whitespace((yield from self._answer()))
            elif key == "tool_calls" and char == "[":
                char = yield from _skip_whitespace((yield from self._calls()))
            else:
                char = yield from _skip_whitespace((yield from _value(char, None)))
            if char != ",":
                return

    def _answer(self) -> Generator[None, str, str]:
        yield from _string(self._sink.text.append)
        return (yield)

    def _calls(self) -> Generator[None, str, str]:
        index = 0
        while True:
            char = yield from _skip_whitespace((yield))
            if char == "]":
                return (yield)
            if char != "{":
                return char
            char = yield from self._call(index)
            index += 1
            char = yield from _skip_whitespace(char)
            if char == "]":
                return (yield)
            if char != ",":
                return char

    def _call(self, index: int) -> Generator[None, str, str]:
        """One call object, its ``{`` read; returns the character after its ``}``."""
        name: str | None = None
        held: list[str] = []  # arguments written before the name: sent once it is known
        sink = self._sink

        def arguments(piece: str) -> None:
            if name is None:
                held.append(piece)
            else:
                sink.calls.append(ToolCallDelta(index, arguments=piece))

        while True:
            char = yield from _skip_whitespace((yield))
            if char == "}":
                return (yield)
            if char != '"':
                return char
            key, char = yield from _member()
            if key is None:
                return char
            if key == "name" and char == '"':
                name = yield from _whole_string()
                sink.calls.append(ToolCallDelta(index, self._call_id(index), name, "".join(held)))
                char = yield
            elif key == "arguments":
                char = yield from _value(char, arguments)
            else:
                char = yield from _value(char, None)
            char = yield from _skip_whitespace(char)
            if char == "}":
                return (yield)
            if char != ",":
                return char


def _whole_string() -> Generator[None, str, str]:
    """A JSON string, its opening quote read, decoded whole (a key, a tool's name)."""
    parts: list[str] = []
    yield from _string(parts.append)
    return "".join(parts)


def _member() -> Generator[None, str, tuple[str | None, str]]:
    """An object member's key, its opening quote read, and its value's first character.

    ``(None, char)`` where the key is not followed by a colon: ``char`` is what came instead.
    """
    key = yield from _whole_string()
    char = yield from _skip_whitespace((yield))
    if char != ":":
        return None, char
    return key, (yield from _skip_whitespace((yield)))


def _skip_whitespace(char: str) -> Generator[None, str, str]:
    while char in _WHITESPACE:
        char = yield
    return char


def _string(out: Callable[[str], None] | None) -> Generator[None, str, None]:
    """A JSON string's characters after its opening quote, decoded into ``out`` as they come; ends at its quote."""
    high: int | None = None  # a UTF-16 high surrogate waiting for its low half
    while True:
        char = yield
        if char == '"':
            return
        if char != "\\":
            if out is not None:
                out(char)
            continue
        char = yield
        if char != "u":
            if out is not None:
                out(_ESCAPES.get(char, char))
            continue
        digits = ""
        for _ in range(4):
            digits += yield
        try:
            code = int(digits, 16)
        except ValueError:
            continue
        if 0xD800 <= code < 0xDC00:
            high = code
            continue
        if 0xDC00 <= code < 0xE000 and high is not None:
            code = 0x10000 + ((high - 0xD800) << 10) + (code - 0xDC00)
        high = None
        if out is not None:
            out(chr(code))


def _value(char: str, out: Callable[[str], None] | None) -> Generator[None, str, str]:
    """Any JSON value starting with ``char``, its raw text copied into ``out``; returns the character after it."""
    depth = 0
    in_string = escaped = False
    while True:
        if out is not None:
            # A raw control character inside a string (the grammar lets a model write one, and the whole
            # parse reads it leniently) is sent escaped: the pieces join into strict JSON.
            out(json.dumps(char)[1:-1] if in_string and not escaped and char < " " else char)
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
                if depth == 0:
                    return (yield)
        elif char == '"':
            in_string = True
        elif char in "{[":
            depth += 1
        elif char in "}]":
            depth -= 1
            if depth == 0:
                return (yield)
        char = yield
        if depth == 0 and not in_string and char in ",}]" + _WHITESPACE:
            return char  # the end of a scalar (number, true, false, null)


class NativeStream(ReplyStream):
    """The model's own tool format, read by the streaming half of its vLLM tool parser (as ``vllm serve`` does)."""

    def __init__(self, native: NativeTools, tools: Sequence[ToolSpec], call_id: CallId) -> None:
        self._call_id = call_id
        self._text = ""
        self._ids: list[int] = []
        # As the whole reply's parse builds its parser: the calls are read whatever the choice asked.
        self._request = tool_request(tools, "auto")
        self._parser: Any = None
        if native.parser is not None:
            try:
                self._parser = parser_class(native.parser)(native.tokenizer, list(self._request.tools or ()))
            except Exception as exc:  # the whole reply's parse reports it
                logger.debug("no streaming %s parser: %s", native.parser, exc)

    def feed(self, text: str, token_ids: Sequence[int] = ()) -> ReplyDelta | None:
        parser = self._parser
        if parser is None:
            return None
        previous_text, previous_ids = self._text, self._ids
        self._text = previous_text + text
        self._ids = [*previous_ids, *token_ids]
        # vLLM's parsers log every piece they cannot follow: that is the model's output, not a fault here.
        with quiet_logger(type(parser).__module__):
            try:
                message = parser.extract_tool_calls_streaming(
                    previous_text, self._text, text, previous_ids, self._ids, list(token_ids), self._request
                )
            except Exception:  # the whole reply's parse reports what went wrong
                self._parser = None
                return None
        return self._delta(message)

    def _delta(self, message: Any) -> ReplyDelta | None:
        if message is None:
            return None
        calls = []
        for item in message.tool_calls or ():
            function = item.function
            if isinstance(function, dict):
                name, arguments = function.get("name"), function.get("arguments")
            else:
                name = getattr(function, "name", None) if function is not None else None
                arguments = getattr(function, "arguments", None) if function is not None else None
            index = int(item.index)
            calls.append(ToolCallDelta(index, self._call_id(index) if name else None, name or None, arguments or ""))
        text = message.content or ""
        return ReplyDelta(text, tuple(calls)) if text or calls else None
