"""A client of a vLLM OpenAI-compatible server (``vllm serve``).

Requests go out as streaming HTTP calls (``/v1/chat/completions`` for chat
prompts, ``/v1/completions`` for token prompts) with vLLM's extensions to the
OpenAI body: ``priority``, ``vllm_xargs`` (the runtime's per-request metadata),
``structured_outputs``, ``request_id`` and ``return_token_ids``.  Load comes
from the server's Prometheus ``/metrics``.

aiohttp never leaks out of this module: every aiohttp or socket error and every
HTTP error status is converted in one place (:func:`map_exceptions` and
:func:`error_from_status`) into the :mod:`runtime._errors` tree.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import AsyncGenerator, Iterator, Mapping
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import anyio.to_thread
from prometheus_client.parser import text_string_to_metric_families

import telemetry

from .._clock import now
from .._errors import (
    EngineClosedError,
    EngineError,
    EngineRequestError,
    EngineStartError,
    EngineUnavailableError,
)
from ._base import Engine
from ._pin_control import ENV_TOKEN, PinControlClient
from ._pinned import PinControlled
from ._requests import ChatPrompt, Completion, GenerateRequest, TokenDelta
from ._tool_template import NativeTools, load_native_tools

__all__ = [
    "RemoteEngine",
    "SSEDecoder",
    "error_from_status",
    "map_exceptions",
    "parse_vllm_metrics",
]

logger = logging.getLogger(__name__)

#: Finish reason of a request we aborted ourselves; the same string vLLM uses.
ABORT_FINISH_REASON = "abort"


# -- error mapping -----------------------------------------------------------


@contextmanager
def map_exceptions(what: str) -> Iterator[None]:
    """Convert aiohttp and socket errors raised inside the block.

    ``what`` names the operation for the message (``"POST http://.../v1/completions"``).
    Anything that means "the server is not there (any more)" becomes
    :class:`EngineUnavailableError`, so callers can retry elsewhere; other
    client errors become plain :class:`EngineError`.
    """
    try:
        yield
    except (
        aiohttp.ClientConnectionError,  # refused, reset, server disconnected, closed mid-body
        aiohttp.ClientPayloadError,  # the body was cut off (server died mid-stream)
        ConnectionError,
        TimeoutError,  # aiohttp's timeouts derive from it as well
    ) as exc:
        raise EngineUnavailableError(f"{what}: {type(exc).__name__}: {exc}") from exc
    except aiohttp.ClientError as exc:
        raise EngineError(f"{what}: {type(exc).__name__}: {exc}") from exc


def error_from_status(status: int, message: str, param: str | None = None) -> EngineError:
    """The exception for an HTTP error status (or an error event in a stream).

    400/422 mean the server rejected this request (bad parameters, prompt too
    long): retrying elsewhere will not help.  5xx mean the server is failing.
    ``param`` is the request field the server blamed.
    """
    text = f"server answered {status}: {message}"
    if status in (400, 422):
        return EngineRequestError(text, param=param)
    if 500 <= status <= 599:
        return EngineUnavailableError(text)
    return EngineError(text)


def _error_message(body: str) -> str:
    """The human part of an error body (vLLM sends ``{"error": {"message": ...}}``)."""
    return _error_fields(body)[0]


def _error_fields(body: str) -> tuple[str, str | None]:
    """An error body's message and the request field it blames (vLLM: ``{"error": {"message", "param"}}``)."""
    try:
        payload = json.loads(body)
    except ValueError:
        return body.strip()[:2000], None
    if isinstance(payload, dict):
        error = payload.get("error", payload)
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return str(error["message"]), _blamed(error)
        if isinstance(payload.get("detail"), str):  # FastAPI's own errors
            return str(payload["detail"]), None
    return body.strip()[:2000], None


def _blamed(error: Mapping[str, Any]) -> str | None:
    """The request field an error object names (vLLM's ``param``), if it names one."""
    param = error.get("param")
    return param if isinstance(param, str) else None


async def _raise_for_status(response: aiohttp.ClientResponse, what: str) -> None:
    if response.status < 400:
        return
    with map_exceptions(what):
        body = await response.text(errors="replace")
    raise error_from_status(response.status, *_error_fields(body))


# -- server-sent events ------------------------------------------------------


class SSEDecoder:
    """Incremental decoder of a ``text/event-stream`` body.

    Feed it raw bytes as they arrive; it returns the ``data`` of every event
    completed by them.  Lines are split here rather than with aiohttp's
    ``readline`` because one event (a chunk carrying a long prompt's token ids)
    can exceed aiohttp's line limit.
    """

    def __init__(self) -> None:
        self._buffer = b""
        self._data: list[str] = []

    def feed(self, chunk: bytes) -> list[str]:
        """Add bytes; return the data of each event they complete."""
        self._buffer += chunk
        events: list[str] = []
        while True:
            end = self._buffer.find(b"\n")
            if end < 0:
                break
            line = self._buffer[:end].rstrip(b"\r").decode("utf-8", errors="replace")
            self._buffer = self._buffer[end + 1 :]
            event = self._line(line)
            if event is not None:
                events.append(event)
        return events

    def flush(self) -> list[str]:
        """End of body: return an event left without its closing blank line."""
        events = self.feed(b"\n") if self._buffer else []
        if self._data:
            events.append("\n".join(self._data))
            self._data = []
        return events

    def _line(self, line: str) -> str | None:
        if not line:  # a blank line dispatches the event
            if not self._data:
                return None
            data = "\n".join(self._data)
            self._data = []
            return data
        if line.startswith(":"):  # a comment (vLLM's keep-alives)
            return None
        field, _, value = line.partition(":")
        if field == "data":
            self._data.append(value[1:] if value.startswith(" ") else value)
        # "event", "id" and "retry" carry nothing vLLM uses.
        return None


# -- metrics -----------------------------------------------------------------

#: Prometheus family -> EngineStats field.  Counters lose their ``_total``
#: suffix in the parsed family name.
_METRIC_FIELDS = {
    "vllm:num_requests_waiting": "waiting",
    "vllm:num_requests_running": "running",
    "vllm:kv_cache_usage_perc": "kv_usage",
    "vllm:num_preemptions": "preemptions",
}


def parse_vllm_metrics(text: str) -> dict[str, Any]:
    """Read ``waiting``, ``running``, ``kv_usage`` (0..1) and ``preemptions`` from ``/metrics`` text.

    Sums over label sets (one per engine core with data parallelism), except
    ``kv_usage``, which is their mean.  A missing metric is ``None``.
    """
    values: dict[str, list[float]] = {}
    for family in text_string_to_metric_families(text):
        name = family.name.removesuffix("_total")
        field = _METRIC_FIELDS.get(name)
        if field is None:
            continue
        # Counters also expose a ``_created`` timestamp sample; keep the value only.
        samples = [s.value for s in family.samples if s.name in (name, name + "_total")]
        if samples:
            values.setdefault(field, []).extend(samples)
    out: dict[str, Any] = dict.fromkeys(_METRIC_FIELDS.values())
    for field, samples in values.items():
        if field == "kv_usage":
            out[field] = sum(samples) / len(samples)
        else:
            out[field] = int(sum(samples))
    return out


# -- one streamed request ----------------------------------------------------


class _StreamState:
    """Accumulates the chunks of one streamed response into a :class:`Completion`."""

    def __init__(self, request: GenerateRequest, engine: str, model: str, sent_at: float) -> None:
        self.request = request
        self.engine = engine
        self.model = model
        self.sent_at = sent_at
        self.text: list[str] = []
        self.token_ids: list[int] = []
        self.prompt_token_ids: list[int] | None = None
        self.finish_reason: str | None = None
        self.usage: Mapping[str, Any] | None = None
        self.queued_s: float | None = None
        self.first_token_at: float | None = None
        self.done = False

    def add(self, chunk: Mapping[str, Any]) -> TokenDelta | None:
        """Take one parsed chunk; return the delta it carries, if any."""
        if "error" in chunk:
            error = chunk["error"]
            if isinstance(error, Mapping):
                raise error_from_status(int(error.get("code") or 500), str(error.get("message")), _blamed(error))
            raise EngineError(f"server reported an error mid-stream: {error}")
        if chunk.get("prompt_token_ids") is not None:  # chat: top level of the first chunk
            self.prompt_token_ids = list(chunk["prompt_token_ids"])
        if chunk.get("usage"):
            self.usage = chunk["usage"]
        metrics = chunk.get("metrics")
        if isinstance(metrics, Mapping) and metrics.get("queue_time_ms") is not None:
            self.queued_s = float(metrics["queue_time_ms"]) / 1000.0
        texts: list[str] = []
        ids: list[int] = []
        # n is always 1 here, so there is at most one choice per chunk.
        for choice in chunk.get("choices") or ():
            if choice.get("prompt_token_ids") is not None:  # completions: inside the choice
                self.prompt_token_ids = list(choice["prompt_token_ids"])
            delta = choice.get("delta")
            text = (delta.get("content") if isinstance(delta, Mapping) else choice.get("text")) or ""
            texts.append(text)
            ids.extend(choice.get("token_ids") or ())
            if choice.get("finish_reason"):
                self.finish_reason = str(choice["finish_reason"])
        text = "".join(texts)
        if not text and not ids:  # the role-only first chat chunk, the usage chunk
            return None
        if self.first_token_at is None:
            self.first_token_at = now()
        self.text.append(text)
        self.token_ids.extend(ids)
        return TokenDelta(text, tuple(ids))

    def completion(self, finish_reason: str | None = None) -> Completion:
        """The final result; ``finish_reason`` overrides the server's (used for aborts)."""
        usage = self.usage or {}
        details = usage.get("prompt_tokens_details") or {}
        prompt_tokens = usage.get("prompt_tokens")
        if prompt_tokens is None:
            prompt_tokens = len(self.prompt_token_ids or ())
        completion_tokens = usage.get("completion_tokens")
        if completion_tokens is None:
            completion_tokens = len(self.token_ids)
        finished_at = now()
        return Completion(
            request_id=self.request.request_id,
            engine=self.engine,
            model=self.model,
            text="".join(self.text),
            token_ids=tuple(self.token_ids),
            finish_reason=finish_reason or self.finish_reason,
            prompt_tokens=int(prompt_tokens),
            completion_tokens=int(completion_tokens),
            cached_tokens=int(details.get("cached_tokens") or 0),
            ttft_s=None if self.first_token_at is None else self.first_token_at - self.sent_at,
            e2e_s=finished_at - self.sent_at,
            queued_s=self.queued_s,
            prompt_token_ids=None if self.prompt_token_ids is None else tuple(self.prompt_token_ids),
        )


def request_body(request: GenerateRequest, model: str) -> tuple[str, dict[str, Any]]:
    """The endpoint path and JSON body for ``request`` (vLLM 0.32 field names)."""
    sampling = request.sampling
    body: dict[str, Any] = {
        "model": model,
        "stream": True,
        "stream_options": {"include_usage": True},
        "temperature": sampling.temperature,
        "top_p": sampling.top_p,
        "ignore_eos": sampling.ignore_eos,
        "priority": request.priority,
        # vLLM runs the request as "chatcmpl-<id>" / "cmpl-<id>", so its logs
        # and traces carry our id.
        "request_id": request.request_id,
        # Generated ids per chunk, and the prompt's ids in the first chunk.
        "return_token_ids": True,
    }
    # vLLM's server takes SamplingParams' fields at the top level (logit_bias's token ids become JSON strings).
    body.update(sampling.extra)
    if sampling.seed is not None:
        body["seed"] = sampling.seed
    if sampling.stop:
        body["stop"] = list(sampling.stop)
    if sampling.json_schema is not None:
        # vLLM's own field; works on both endpoints (response_format is chat-only).
        body["structured_outputs"] = {"json": dict(sampling.json_schema)}
    elif sampling.structural_tag is not None:
        body["structured_outputs"] = {"structural_tag": sampling.structural_tag}
    if request.metadata:
        body["vllm_xargs"] = {k: list(v) if isinstance(v, list) else v for k, v in request.metadata.items()}
    if isinstance(request.prompt, ChatPrompt):
        body["messages"] = [dict(m) for m in request.prompt.messages]
        if request.prompt.tools:
            # The server renders the tools through the template; "none" keeps its
            # own tool parsing and tool grammar out (no --enable-auto-tool-choice
            # or --tool-call-parser needed): the runtime parses the text itself
            # and sends its own structural tag.  (A server started with
            # --exclude-tools-when-tool-choice-none would drop the tools.)
            body["tools"] = [dict(t) for t in request.prompt.tools]
            body["tool_choice"] = "none"
            # A tool call's markers are special tokens in some models.
            body["skip_special_tokens"] = False
        body["max_completion_tokens"] = sampling.max_tokens  # max_tokens is deprecated on chat
        return "/v1/chat/completions", body
    body["prompt"] = list(request.prompt.token_ids)
    body["max_tokens"] = sampling.max_tokens
    return "/v1/completions", body


# -- the engine --------------------------------------------------------------


class RemoteEngine(PinControlled, Engine):
    """An engine behind a vLLM OpenAI-compatible HTTP server.

    ``base_url`` is the server's root (``http://host:8000``; a trailing ``/v1``
    is tolerated).  ``model`` is the served model id; when ``None`` it is
    discovered from ``/v1/models`` on start.  ``api_key`` is sent as a bearer
    token.  ``connect_timeout_s`` (seconds) bounds connecting and the small
    control calls (``/health``, ``/metrics``, ``/v1/models``); generation
    requests have no overall timeout, since they may legitimately wait in the
    server's queue for long.

    A failed :meth:`check_health` takes the engine out of dispatch
    (:attr:`available` false) until a check passes again; the runtime's
    health monitor probes every few seconds, so a killed server is noticed
    with no call in flight.

    ``pin_control`` is the address of the pin control path of a server that
    runs agentrt's scheduler plug-in (``http://host:port``, the server's
    ``AGENTRT_PIN_LISTEN``; see :mod:`runtime.vllm_scheduler`), and
    ``pin_token`` its shared token (default: ``AGENTRT_PIN_TOKEN`` of this
    process).  With it the engine pins KV blocks (:attr:`supports_pins`).
    """

    def __init__(
        self,
        base_url: str,
        *,
        model: str | None = None,
        api_key: str | None = None,
        name: str | None = None,
        connect_timeout_s: float = 10.0,
        pin_control: str | None = None,
        pin_token: str | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/").removesuffix("/v1")
        super().__init__(name or f"remote@{urlsplit(self.base_url).netloc}", model or "")
        self._requested_model = model
        self._max_model_len: int | None = None
        self._api_key = api_key
        self._connect_timeout_s = connect_timeout_s
        self._session: aiohttp.ClientSession | None = None
        # Open streaming responses by request id: closing one disconnects the
        # client, which is how vLLM learns to abort the request.
        self._responses: dict[str, aiohttp.ClientResponse] = {}
        self._aborted: set[str] = set()
        # The scheduler figures of the last /metrics read, for load().
        self._last_metrics: dict[str, Any] = {}
        # The chat template's tools (tool_template), read once.
        self._tool_template: NativeTools | None = None
        self._tool_template_read = False
        # Why the last health check failed; None while it passes.  Dispatch
        # skips the engine meanwhile (available is false).
        self._failed_check: str | None = None
        if pin_control is not None:
            token = pin_token if pin_token is not None else os.environ.get(ENV_TOKEN)
            if not token:
                raise ValueError(f"pin_control={pin_control!r} needs pin_token= or {ENV_TOKEN} in the environment")
            self._pin_client = PinControlClient(pin_control, token, engine=self.name, timeout_s=connect_timeout_s)

    # -- lifecycle ---------------------------------------------------------

    async def _start(self) -> None:
        await self._open_session()
        started = False
        try:
            await self._discover_model()
            await self._read_kv_geometry()
            started = True
        finally:
            if not started:
                await self._close_session()

    async def _aclose(self) -> None:
        for response in list(self._responses.values()):
            response.close()
        await self._close_session()
        await self._close_pin_client()

    async def _open_session(self) -> None:
        if self._session is not None:
            return
        headers = {"Authorization": f"Bearer {self._api_key}"} if self._api_key else {}
        self._session = aiohttp.ClientSession(
            headers=headers,
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=self._connect_timeout_s),
            # Each streaming request holds a connection for its whole life; the
            # runtime bounds concurrency, the pool must not (aiohttp's default is 100).
            connector=aiohttp.TCPConnector(limit=0),
        )

    async def _close_session(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    async def _discover_model(self) -> None:
        try:
            payload = await self._get_json("/v1/models")
        except EngineError as exc:
            raise EngineStartError(f"{self.name}: cannot list models at {self.base_url}: {exc}") from exc
        cards = [m for m in payload.get("data") or () if isinstance(m, Mapping)]
        served = [str(m.get("id")) for m in cards]
        if self._requested_model is None:
            if not served:
                raise EngineStartError(f"{self.name}: {self.base_url} serves no model")
            self.model = served[0]
        elif self._requested_model not in served:
            raise EngineStartError(
                f"{self.name}: model {self._requested_model!r} is not served at {self.base_url}; served: {served}"
            )
        # vLLM's model card says its context length; other servers may not.
        length = next((m.get("max_model_len") for m in cards if str(m.get("id")) == self.model), None)
        if isinstance(length, int) and length > 0:
            self._max_model_len = length

    @property
    def max_model_len(self) -> int | None:
        return self._max_model_len

    # -- the chat template's tools ------------------------------------------

    def _tokenizer_dir(self) -> str | None:
        """A local directory holding the served model's tokenizer, if the model id is one."""
        return self.model or None

    async def tool_template(self) -> NativeTools | None:
        """What the served model's chat template does with tools (see :meth:`Engine.tool_template`).

        Read from the model's tokenizer when the served model id is a local
        directory (as for :class:`ServerEngine`), once; None otherwise: the
        server's template cannot be seen from here, so tools go the JSON way
        unless ``tool_format="native"`` is asked for (an error then).
        """
        if not self._tool_template_read and self.model:  # the model id is known once started
            path = self._tokenizer_dir()
            found = None
            if path is not None:
                found = await anyio.to_thread.run_sync(load_native_tools, path, self.model)
            self._tool_template, self._tool_template_read = found, True
        return self._tool_template

    # -- HTTP helpers ------------------------------------------------------

    def _url(self, path: str) -> str:
        return self.base_url + path

    def _require_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise EngineUnavailableError(f"{self.name}: not started")
        return self._session

    def _control_timeout(self) -> aiohttp.ClientTimeout:
        return aiohttp.ClientTimeout(total=self._connect_timeout_s)

    async def _get(self, path: str) -> tuple[int, str]:
        """GET a control endpoint; return (status, body text)."""
        session = self._require_session()
        what = f"GET {self._url(path)}"
        with map_exceptions(what):
            async with session.get(self._url(path), timeout=self._control_timeout()) as response:
                return response.status, await response.text(errors="replace")

    async def _get_json(self, path: str) -> dict[str, Any]:
        status, body = await self._get(path)
        if status >= 400:
            raise error_from_status(status, _error_message(body))
        try:
            payload = json.loads(body)
        except ValueError as exc:
            raise EngineError(f"GET {self._url(path)}: not JSON: {body[:200]!r}") from exc
        if not isinstance(payload, dict):
            raise EngineError(f"GET {self._url(path)}: unexpected payload {body[:200]!r}")
        return payload

    def _request_headers(self, request: GenerateRequest) -> dict[str, str]:
        """Extra HTTP headers for one generation request.

        While tracing is on this is the W3C ``traceparent`` of the current
        ``chat`` span, so a vLLM server started with ``--otlp-traces-endpoint``
        parents its ``llm_request`` span on it and both land in one trace.
        """
        headers: dict[str, str] = {}
        telemetry.inject_trace_headers(headers)
        return headers

    # -- requests ----------------------------------------------------------

    async def _stream(self, request: GenerateRequest) -> AsyncGenerator[TokenDelta | Completion, None]:
        session = self._require_session()
        path, body = request_body(request, self.model)
        url = self._url(path)
        what = f"POST {url} ({request.request_id})"
        state = _StreamState(request, self.name, self.model, now())
        request_id = request.request_id
        response: aiohttp.ClientResponse | None = None
        finished = False
        try:
            with map_exceptions(what):
                response = await session.post(url, json=body, headers=self._request_headers(request))
            self._responses[request_id] = response
            if request_id in self._aborted:  # aborted while we were connecting
                yield state.completion(ABORT_FINISH_REASON)
                return
            await _raise_for_status(response, what)
            decoder = SSEDecoder()
            while not state.done:
                try:
                    with map_exceptions(what):
                        chunk = await response.content.readany()
                except EngineUnavailableError as exc:
                    if request_id in self._aborted:  # our own close() cut the body
                        yield state.completion(ABORT_FINISH_REASON)
                        return
                    if self.closed:  # aclose() cut it
                        raise EngineClosedError(f"{self.name} was closed during {request_id!r}") from exc
                    raise
                events = decoder.feed(chunk) if chunk else decoder.flush()
                for data in events:
                    if data == "[DONE]":
                        state.done = True
                        break
                    delta = state.add(_json_object(data, what))
                    if delta is not None:
                        yield delta
                if not chunk:
                    break
            if request_id in self._aborted:
                yield state.completion(ABORT_FINISH_REASON)
                return
            if not state.done:
                raise EngineUnavailableError(f"{what}: the stream ended before [DONE]")
            finished = True
            yield state.completion()
        finally:
            self._responses.pop(request_id, None)
            self._aborted.discard(request_id)
            if response is not None:
                if finished:
                    response.release()  # body fully read: the connection goes back to the pool
                else:
                    # Closing the connection is what tells vLLM to abort the request
                    # (early close of the iterator, cancellation, errors).
                    response.close()

    async def _abort(self, request_id: str) -> None:
        self._aborted.add(request_id)
        response = self._responses.get(request_id)
        if response is not None:
            response.close()

    # -- health and load ---------------------------------------------------

    async def check_health(self) -> None:
        """Raise :class:`~runtime.EngineUnavailableError` unless the server answers ``/health``.

        The outcome sticks: after a failed check the engine reports
        :attr:`available` false (so the runtime sends it no new call) until
        a check succeeds again.  The runtime's health monitor checks every
        ``Runtime(health_interval_s=)`` seconds; without it, call this (or
        :meth:`stats`) to bring the engine back.
        """
        try:
            await super().check_health()
        except EngineClosedError:
            raise
        except EngineError as exc:
            self._failed_check = str(exc)
            raise
        self._failed_check = None

    def _available(self) -> bool:
        return self._failed_check is None

    async def _check_health(self) -> None:
        status, body = await self._get("/health")
        if status != 200:
            raise EngineUnavailableError(f"{self.name}: /health answered {status}: {body[:200]}")

    async def _engine_stats(self) -> dict[str, Any]:
        try:
            status, body = await self._get("/metrics")
        except EngineError as exc:
            # stats() must still describe a dead engine; its health check says why.
            logger.debug("%s: /metrics unavailable: %s", self.name, exc)
            return {}
        if status != 200:
            return {}
        try:
            metrics = parse_vllm_metrics(body)
        except ValueError as exc:  # malformed exposition text
            logger.warning("%s: cannot parse /metrics: %s", self.name, exc)
            return {}
        self._last_metrics = {k: metrics[k] for k in ("waiting", "running", "kv_usage")}
        return {**metrics, **await self._pin_engine_stats()}

    def _load_figures(self) -> dict[str, Any]:
        # No I/O here: what the last stats() call read from /metrics, and the
        # pin control path's last answer.
        return {**self._last_metrics, **self._pin_load_figures()}


def _json_object(data: str, what: str) -> dict[str, Any]:
    try:
        value = json.loads(data)
    except ValueError as exc:
        raise EngineError(f"{what}: bad event data {data[:200]!r}") from exc
    if not isinstance(value, dict):
        raise EngineError(f"{what}: bad event data {data[:200]!r}")
    return value
