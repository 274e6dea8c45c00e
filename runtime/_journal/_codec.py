"""What the journal stores, as bytes and digests: values, prompts, fingerprints.

Values (step results, LLM completions, tool messages, workflow inputs and
results) are pickled with cloudpickle, which also takes classes and
functions defined in ``__main__``; :func:`load_value` is plain ``pickle``.

Prompts are stored *content-addressed and chained* so that a conversation's
journal grows with its new tokens only.  Each chat message (or each aligned
chunk of :data:`TOKEN_CHUNK` token ids) is one blob named by its digest,
and a prompt is the last link of a chain ``link_k = H(link_{k-1}, part_k)``:
the next turn of an agent, whose prompt is the previous prompt plus a few
messages, adds only the new messages and their links.  (Storing the list of
part digests with every call instead would grow with the square of the
number of turns.)  A call's input fingerprint is its prompt's link plus its
sampling options, so replay compares inputs without reading a prompt back.
"""

from __future__ import annotations

import array
import dataclasses
import hashlib
import itertools
import json
import pickle
from collections.abc import Iterable, Mapping
from typing import Any

import cloudpickle

from .._engines import ChatPrompt, Prompt, SamplingOptions
from .._errors import JournalError

__all__ = [
    "TOKEN_CHUNK",
    "Blob",
    "PromptChain",
    "canonical_json",
    "digest",
    "dump_value",
    "fingerprint",
    "load_value",
]

#: Token ids per content-addressed chunk of a token prompt.  A prompt that
#: extends an earlier one shares all of its full chunks.
TOKEN_CHUNK = 256

#: A blob to store: ``(digest, kind, data)``.
Blob = tuple[str, str, bytes]


def digest(*parts: bytes) -> str:
    """A 128-bit BLAKE2b digest of ``parts`` in hex (collisions are not a practical concern at this size)."""
    h = hashlib.blake2b(digest_size=16)
    for part in parts:
        h.update(len(part).to_bytes(8, "little"))
        h.update(part)
    return h.hexdigest()


def _fallback(value: object) -> object:
    dump = getattr(value, "model_dump", None)
    if callable(dump):
        return dump(mode="json")
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if isinstance(value, set | frozenset):
        return sorted(map(repr, value))
    if isinstance(value, bytes):
        return value.hex()
    # Objects without a stable text form (their repr may hold an address)
    # are fingerprinted by their type only.
    return f"<{type(value).__module__}.{type(value).__qualname__}>"


def canonical_json(value: object) -> bytes:
    """``value`` as JSON with sorted keys: the same inputs always give the same bytes."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=_fallback).encode()


def fingerprint(kind: str, name: str, *inputs: object) -> str:
    """The digest of a step's kind, name and inputs (each made canonical JSON; strings as they are)."""
    parts = [kind.encode(), name.encode()]
    parts.extend(i.encode() if isinstance(i, str) else canonical_json(i) for i in inputs)
    return digest(*parts)


def dump_value(value: object, what: str) -> bytes:
    """Pickle ``value`` for the journal; ``what`` names it in the error when it cannot be."""
    try:
        try:
            data: bytes = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception:
            # What plain pickle cannot name (classes and functions defined in __main__ or
            # in a function) cloudpickle stores by value; it is several times slower.
            data = cloudpickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as exc:
        raise JournalError(
            f"the journal cannot store {what}: {type(value).__name__} does not pickle ({exc}); "
            "return plain data (str, numbers, lists, dicts, dataclasses, pydantic models) from journaled work"
        ) from exc
    return data


def load_value(data: bytes, what: str) -> Any:
    try:
        return pickle.loads(data)
    except Exception as exc:
        raise JournalError(
            f"the journal cannot load {what}: {type(exc).__name__}: {exc} "
            "(a class it refers to may have moved or changed since it was stored)"
        ) from exc


def sampling_json(sampling: SamplingOptions) -> bytes:
    fields = dataclasses.asdict(sampling)
    # Options added later count only when set: journals written before them keep their fingerprints.
    if fields.get("structural_tag") is None:
        fields.pop("structural_tag", None)
    if not fields.get("extra"):
        fields.pop("extra", None)
    return canonical_json(fields)


class PromptChain:
    """Digests and blobs of prompts, remembering what one program already stored.

    One per journaled program.  :meth:`link` returns a prompt's last chain
    link and the blobs not stored for this program yet; message digests are
    memoized on the message's (string) contents, so a long conversation is
    not re-serialized in full on every turn; and the prefix a chat prompt
    shares with the previous one (the same role and content strings, as an
    agent's growing conversation has) is not even looked up again.
    """

    __slots__ = ("_chunks", "_last", "_last_tools", "_links", "_messages", "_tools", "stored")

    def __init__(self, stored: Iterable[str] = ()) -> None:
        #: Blob digests this program has stored (or found stored).
        self.stored: set[str] = set(stored)
        self._messages: dict[tuple[tuple[str, str], ...], tuple[str, bytes]] = {}
        self._links: dict[tuple[str, str], str] = {}
        self._chunks: dict[tuple[int, ...], tuple[str, bytes]] = {}
        # The last chat prompt linked: per message, its role and content objects and its chain link.
        self._last: list[tuple[object, object, str]] = []
        # The tools part the last chat prompt's chain started from ("" without tools).
        self._last_tools = ""
        self._tools: dict[str, tuple[str, bytes]] = {}

    def link(self, prompt: Prompt) -> tuple[str, list[Blob]]:
        """The chain link naming ``prompt`` and the blobs to store for it."""
        blobs: list[Blob] = []
        parts: Iterable[tuple[str, str, bytes]]
        link = ""
        if isinstance(prompt, ChatPrompt):
            messages = prompt.messages
            # Tools rendered by the template (the native path) are the chain's first
            # part: a prompt with other tools is another prompt from the start.
            tools_part = self._tools_part(prompt.tools) if prompt.tools else None
            tools_digest = tools_part[1] if tools_part is not None else ""
            if tools_digest != self._last_tools:
                self._last.clear()
                self._last_tools = tools_digest
            shared = self._shared_prefix(messages)
            if shared:
                link = self._last[shared - 1][2]
            del self._last[shared:]
            parts = (("message", *self._message(m)) for m in messages[shared:])
            tail: list[Mapping[str, Any]] = list(messages[shared:])
            if tools_part is not None and not shared:
                parts = itertools.chain((tools_part,), parts)
                tail = [{}, *tail]  # the tools part is no message: nothing of it is remembered
        else:
            tail = []
            ids = prompt.token_ids
            parts = (("tokens", *self._chunk(ids[i : i + TOKEN_CHUNK])) for i in range(0, len(ids), TOKEN_CHUNK))
        # `stored` grows only once the blobs are committed (the caller's
        # `mark_stored`): a failed write must not make later calls skip them.
        new: set[str] = set()
        for index, (kind, part, data) in enumerate(parts):
            if part not in self.stored and part not in new:
                blobs.append((part, kind, data))
                new.add(part)
            prev = link
            link = self._links.get((prev, part)) or self._new_link(prev, part)
            if link not in self.stored and link not in new:
                blobs.append((link, "link", f"{prev}:{part}".encode()))
                new.add(link)
            if tail:
                message = tail[index]
                if message:
                    self._last.append((message.get("role"), message.get("content"), link))
        return link, blobs

    def _shared_prefix(self, messages: tuple[Mapping[str, Any], ...]) -> int:
        """How many leading messages are the previous prompt's own (same strings), with their links stored.

        A link is committed together with every part and link before it, so
        the last shared link being stored means the whole prefix is.
        """
        last = self._last
        shared = 0
        for message, (role, content, _link) in zip(messages, last, strict=False):
            if len(message) != 2 or message.get("role") is not role or message.get("content") is not content:
                break
            shared += 1
        while shared and last[shared - 1][2] not in self.stored:
            shared -= 1
        return shared

    def _tools_part(self, tools: tuple[Mapping[str, Any], ...]) -> tuple[str, str, bytes]:
        data = canonical_json([dict(t) for t in tools])
        key = data.decode()
        known = self._tools.get(key)
        if known is None:
            known = self._tools[key] = (digest(b"tools", data), data)
        return ("tools", *known)

    def mark_stored(self, blobs: Iterable[Blob]) -> None:
        self.stored.update(b[0] for b in blobs)

    def _new_link(self, prev: str, part: str) -> str:
        link = digest(b"link", prev.encode(), part.encode())
        self._links[(prev, part)] = link
        return link

    def _message(self, message: Mapping[str, Any]) -> tuple[str, bytes]:
        # Every call re-sends the whole conversation: the lookup must be cheap.
        # Strings cache their hashes, so a key of the message's strings costs
        # little however long they are; the common two-key message skips the sort.
        if len(message) == 2:
            role, content = message.get("role"), message.get("content")
            key: tuple[Any, ...] | None = (
                (("content", content), ("role", role)) if isinstance(role, str) and isinstance(content, str) else None
            )
        else:
            key = tuple(sorted(message.items())) if all(isinstance(v, str) for v in message.values()) else None
        if key is None:
            data = canonical_json(dict(message))
            return digest(b"message", data), data
        known = self._messages.get(key)
        if known is None:
            data = canonical_json(dict(message))
            known = self._messages[key] = (digest(b"message", data), data)
        return known

    def _chunk(self, token_ids: tuple[int, ...]) -> tuple[str, bytes]:
        # Each turn re-sends the context's chunks: hashing a tuple of ints is much cheaper than digesting it.
        known = self._chunks.get(token_ids)
        if known is None:
            data = array.array("q", token_ids).tobytes()
            known = self._chunks[token_ids] = (digest(b"tokens", data), data)
        return known
