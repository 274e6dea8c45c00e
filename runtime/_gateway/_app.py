"""``Gateway``: the OpenAI-compatible HTTP server in front of a :class:`~runtime.Runtime` (aiohttp).

Endpoints: ``POST /v1/chat/completions`` and ``POST /v1/completions``
(streamed as server-sent events or not), ``GET /v1/models``, ``GET
/health``, ``GET /metrics`` (Prometheus).  ``/v1/*`` needs a valid API key
when keys are configured; ``/health`` and ``/metrics`` are open, as on
vLLM's server.

A request's way through: its tenant (:mod:`._tenants`, 401 without a valid
key), its body (:mod:`._protocol`, 400 with a clear message when malformed),
its admission (fair queuing across tenants), its program (:mod:`._session_keys`,
:mod:`._sessions`), and its turn, run by the program.  A client that
disconnects cancels its turn, which aborts the engine request, and ends its
program, which releases its pin.  A request with a W3C ``traceparent`` gets
a server span in the caller's trace, and its LLM call's spans are children
of it, so a client's trace and agentrt's join in Jaeger; without one, the
call's spans are in its program's trace.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self, TypeVar

import anyio
from aiohttp import web
from opentelemetry.trace import SpanKind

import telemetry
from telemetry import names
from workflows import ReplyDelta

from .._errors import EngineRequestError, EngineUnavailableError, NoEngineError, RuntimeStateError
from .._tools import TOOL_FORMATS, ToolFormat
from ._calls import ChatOutcome, CompletionOutcome, chat_work, completion_work
from ._metrics import GatewayMetrics
from ._protocol import (
    ChatRequest,
    CompletionRequest,
    OpenAIError,
    SessionFields,
    chat_chunk,
    chat_response,
    completion_chunk,
    completion_response,
    error_body,
    parse_body,
    usage_body,
)
from ._session_keys import SessionRef, session_ref
from ._sessions import DEFAULT_MIN_IDLE_TIMEOUT_S, GatewaySession, SessionTable, Turn, TurnCancelled
from ._tenants import FairAdmission, Tenant, TenantKeys

if TYPE_CHECKING:
    from .._runtime import Runtime

__all__ = ["DEFAULT_IDLE_TIMEOUT_S", "DEFAULT_MAX_TOKENS", "DEFAULT_MIN_IDLE_TIMEOUT_S", "Gateway"]

logger = logging.getLogger("runtime.gateway")

#: Seconds a gateway program waits for its next request before it ends (a tool's run included).
DEFAULT_IDLE_TIMEOUT_S = 300.0
#: ``max_tokens`` of a chat request that sets none.
DEFAULT_MAX_TOKENS = 1024
#: The largest request body accepted (bytes): long agent contexts are a few MB of JSON at most.
MAX_BODY_BYTES = 64 * 1024 * 1024
#: Bodies larger than this (bytes) are decoded and validated in a worker thread, off the event loop.
OFF_LOOP_BODY_BYTES = 256 * 1024

_CONTEXT_TOO_LONG = ("maximum model length", "max_model_len", "maximum context length", "too long")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
M = TypeVar("M", ChatRequest, CompletionRequest)

#: The request's tenant, set once its key is checked.
_TENANT = web.RequestKey("agentrt_tenant", Tenant)


def _json(body: Mapping[str, Any], status: int = 200, headers: Mapping[str, str] | None = None) -> web.Response:
    return web.Response(
        body=json.dumps(body, separators=(",", ":")).encode(),
        status=status,
        content_type="application/json",
        headers=headers,
    )


def _error_response(error: OpenAIError) -> web.Response:
    headers = {"WWW-Authenticate": "Bearer"} if error.status == 401 else None
    return _json(error_body(error), error.status, headers)


def _as_openai_error(exc: BaseException) -> OpenAIError:
    """What a turn's failure tells the client."""
    if isinstance(exc, OpenAIError):
        return exc
    message = str(exc)
    if isinstance(exc, EngineRequestError):
        if exc.param not in (None, "messages", "input_text", "input_tokens"):
            return OpenAIError(400, message, param=exc.param)
        if any(marker in message.lower() for marker in _CONTEXT_TOO_LONG):
            return OpenAIError(400, message, code="context_length_exceeded", param="messages")
        return OpenAIError(400, message, param=exc.param)
    if isinstance(exc, ValueError):  # the runtime refused the call's options
        return OpenAIError(400, message)
    if isinstance(exc, NoEngineError | EngineUnavailableError):
        return OpenAIError(503, message, type="server_error", code="engine_unavailable")
    if isinstance(exc, TimeoutError):
        return OpenAIError(504, message or "the call timed out", type="server_error", code="timeout")
    if isinstance(exc, TurnCancelled | RuntimeStateError):
        return OpenAIError(503, message, type="server_error", code="unavailable")
    logger.error("gateway request failed", exc_info=exc)
    return OpenAIError(500, f"internal error: {type(exc).__name__}: {message}", type="server_error")


async def _parse(raw: bytes, model: type[M]) -> tuple[M, SessionFields]:
    """:func:`parse_body`, in a worker thread when the body is large (a long context's JSON takes milliseconds)."""
    if len(raw) <= OFF_LOOP_BODY_BYTES:
        return parse_body(raw, model)
    return await anyio.to_thread.run_sync(parse_body, raw, model)


def _load_encoder(path: str | Path) -> Callable[[str], list[int]] | None:
    """The ``encode`` of the tokenizer in the local model directory ``path``; None if it is not one.  Blocking."""
    where = Path(path)
    if not (where / "tokenizer_config.json").is_file():
        return None
    from vllm.tokenizers import get_tokenizer

    tokenizer = get_tokenizer(str(where))

    def encode(text: str) -> list[int]:
        return [int(i) for i in tokenizer.encode(text)]

    return encode


class _ReplyPieces:
    """A turn's reply as it streams: the program's task sends, the handler receives."""

    def __init__(self) -> None:
        self.send, self.receive = anyio.create_memory_object_stream[ReplyDelta](math.inf)

    def put(self, delta: ReplyDelta) -> None:
        # A closed stream: the client left and nobody reads any more.
        with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):
            self.send.send_nowait(delta)


class Gateway:
    """Serve ``runtime``'s engines over the OpenAI API; an async context manager (enter the runtime first).

    ``host``/``port`` (``port=0``: any free port; :attr:`url` says which).
    ``model_name`` is the model id clients send and ``/v1/models`` lists
    (default: the name of the first engine's model).  ``api_keys`` maps
    bearer tokens to :class:`Tenant` objects (none: the gateway is open).
    ``max_in_flight`` bounds the requests the gateway lets through to the
    engines at once (``None``: no bound); beyond it requests wait, fairly
    across tenants, at most ``max_queued`` per tenant (then 429).
    A session with no request in flight ends after a timeout it derives
    from what it expects (4x the 95th-percentile duration of its client's
    running tools, after an answer 4x the longest pause its client has
    taken; docs/gateway.md), at least ``min_idle_timeout_s`` and at most
    ``idle_timeout_s`` seconds (equal: a fixed timeout).
    ``default_max_tokens`` is a chat request's ``max_tokens`` when it sets
    none.  ``tool_format`` is how tools reach the model ("auto": its
    chat template's native tool calls when it has them, else agentrt's
    structured-output protocol; see docs/tools.md).  ``tokenizer`` is a local
    directory whose tokenizer encodes ``/v1/completions`` string prompts
    (default: the engine's model directory, when it is one).
    """

    def __init__(
        self,
        runtime: Runtime,
        *,
        host: str = "127.0.0.1",
        port: int = 8000,
        model_name: str | None = None,
        api_keys: Mapping[str, Tenant] | None = None,
        max_in_flight: int | None = None,
        max_queued: int = 1000,
        idle_timeout_s: float = DEFAULT_IDLE_TIMEOUT_S,
        min_idle_timeout_s: float = DEFAULT_MIN_IDLE_TIMEOUT_S,
        default_max_tokens: int = DEFAULT_MAX_TOKENS,
        tool_format: ToolFormat = "auto",
        tokenizer: str | Path | None = None,
    ) -> None:
        if tool_format not in TOOL_FORMATS:
            raise ValueError(f"tool_format must be one of {', '.join(TOOL_FORMATS)}, got {tool_format!r}")
        if default_max_tokens < 1:
            raise ValueError(f"default_max_tokens must be >= 1, got {default_max_tokens}")
        self.runtime = runtime
        self.host = host
        self.port = port
        engine_model = runtime.engines[0].model if runtime.engines else ""
        self.model_name = model_name or Path(engine_model).name or engine_model
        self._model_names = {self.model_name, engine_model}
        self._keys = TenantKeys(api_keys)
        self.admission = FairAdmission(max_in_flight, max_queued=max_queued)
        self.metrics = GatewayMetrics(runtime.policy.name)
        m = self.metrics
        self.sessions = SessionTable(
            runtime,
            idle_timeout_s=idle_timeout_s,
            min_idle_timeout_s=min(min_idle_timeout_s, idle_timeout_s),
            on_started=lambda session: m.programs_started.labels(session.tenant.name, m.policy).inc(),
            on_ended=lambda session, reason: m.programs_ended.labels(session.tenant.name, reason, m.policy).inc(),
            on_turn_end=self._bill,
        )
        self.default_max_tokens = default_max_tokens
        self.tool_format: ToolFormat = tool_format
        self._tokenizer_path = tokenizer
        self._encode: Callable[[str], list[int]] | None = None
        self._runner: web.AppRunner | None = None

    # -- lifecycle ---------------------------------------------------------------

    @property
    def url(self) -> str:
        """The gateway's root URL (the OpenAI base URL is this plus ``/v1``)."""
        return f"http://{self.host}:{self.port}"

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def start(self) -> None:
        if self._runner is not None:
            return
        engine = self.runtime.engines[0] if self.runtime.engines else None
        # In-process and launched engines know their model's directory; a remote one only its model id.
        local = (engine.model_path or engine.model) if engine is not None else None
        source = self._tokenizer_path or local
        if source:
            try:
                self._encode = await anyio.to_thread.run_sync(_load_encoder, source)
            except Exception as exc:  # only string prompts of /v1/completions need it
                logger.warning("no tokenizer from %s for /v1/completions string prompts: %s", source, exc)
        app = web.Application(middlewares=[self._errors], client_max_size=MAX_BODY_BYTES)
        app.router.add_post("/v1/chat/completions", self._endpoint("chat", self._chat))
        app.router.add_post("/v1/completions", self._endpoint("completions", self._completions))
        app.router.add_get("/v1/models", self._endpoint("models", self._models))
        app.router.add_get("/health", self._health)
        app.router.add_get("/metrics", self._metrics)
        # handler_cancellation: a client that disconnects cancels its handler, which cancels its turn.
        runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, self.host, self.port)
        await site.start()
        addresses = runner.addresses  # (host, port, ...) of each bound socket: the port chosen for port 0
        if addresses:
            self.port = int(addresses[0][1])
        self._runner = runner
        logger.info("gateway listening on %s (model %s)", self.url, self.model_name)

    async def aclose(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    # -- plumbing ----------------------------------------------------------------

    @web.middleware
    async def _errors(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except OpenAIError as exc:
            return _error_response(exc)
        except web.HTTPRequestEntityTooLarge:
            return _error_response(OpenAIError(413, f"the request body is larger than {MAX_BODY_BYTES} bytes"))
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            return _error_response(OpenAIError(exc.status, f"{request.method} {request.path}: {exc.reason}"))

    def _endpoint(self, name: str, handler: Handler) -> Handler:
        """``handler`` with the request's metrics (count by status, duration), its errors as OpenAI errors."""

        async def counted(request: web.Request) -> web.StreamResponse:
            started = time.perf_counter()
            tenant = "unknown"
            status = 499  # the client left (nginx's convention)
            try:
                tenant_of = self._keys.tenant_for(request.headers.get("Authorization"))
                tenant = tenant_of.name
                request[_TENANT] = tenant_of
                response = await handler(request)
                status = response.status
                return response
            except OpenAIError as exc:
                status = exc.status
                return _error_response(exc)
            finally:
                self.metrics.requests.labels(name, tenant, str(status), self.metrics.policy).inc()
                self.metrics.duration.labels(name, self.metrics.policy).observe(time.perf_counter() - started)

        return counted

    def _check_model(self, model: str) -> None:
        if model not in self._model_names:
            raise OpenAIError(
                404,
                f"the model {model!r} does not exist; this gateway serves {self.model_name!r}",
                param="model",
                code="model_not_found",
            )

    # -- endpoints ---------------------------------------------------------------

    async def _health(self, request: web.Request) -> web.Response:
        available = [e.name for e in self.runtime.engines if e.available]
        body = {"status": "ok" if available else "unavailable", "engines_available": available}
        return _json(body, 200 if available else 503)

    async def _metrics(self, request: web.Request) -> web.Response:
        m = self.metrics
        for name in self.admission.tenant_names:
            m.in_flight.labels(name, m.policy).set(self.admission.in_flight(name))
            m.queued.labels(name, m.policy).set(self.admission.queued(name))
        m.programs.labels(m.policy).set(len(self.sessions))
        stats = await self.runtime.stats()
        return web.Response(body=m.render(stats), content_type="text/plain", charset="utf-8")

    async def _models(self, request: web.Request) -> web.Response:
        card = {"id": self.model_name, "object": "model", "created": 0, "owned_by": "agentrt"}
        return _json({"object": "list", "data": [card]})

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body, fields = await _parse(await request.read(), ChatRequest)
        self._check_model(body.model)
        body.refuse_unsupported()
        body.check_messages()
        ref = session_ref(request.headers, fields)
        work = chat_work(body, default_max_tokens=self.default_max_tokens, tool_format=self.tool_format)
        answers = frozenset(str(m["tool_call_id"]) for m in body.messages if m.get("role") == "tool")
        return await self._serve(
            request,
            "chat",
            ref,
            Turn(work, answers=answers, expected_tool=ref.expected_tool, last=ref.last_turn or ref.key is None),
            stream=body.stream,
            include_usage=body.include_usage,
        )

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        body, fields = await _parse(await request.read(), CompletionRequest)
        self._check_model(body.model)
        body.refuse_unsupported()
        ref = session_ref(request.headers, fields)
        work = completion_work(body, encode=self._encode)
        return await self._serve(
            request,
            "completions",
            ref,
            Turn(work, expected_tool=ref.expected_tool, last=ref.last_turn or ref.key is None),
            stream=body.stream,
            include_usage=body.include_usage,
        )

    # -- one turn ----------------------------------------------------------------

    async def _serve(
        self,
        request: web.Request,
        kind: str,
        ref: SessionRef,
        turn: Turn,
        *,
        stream: bool,
        include_usage: bool,
    ) -> web.StreamResponse:
        tenant = request[_TENANT]
        traced = "traceparent" in {k.lower() for k in request.headers}
        attributes = {
            names.HTTP_REQUEST_METHOD: request.method,
            names.HTTP_ROUTE: request.path,
            names.AGENTRT_TENANT: tenant.name,
            names.AGENTRT_SESSION_SOURCE: ref.source or "none",
        }
        with (
            telemetry.span(
                f"{request.method} {request.path}", attributes, kind=SpanKind.SERVER, trace_headers=request.headers
            )
            if traced
            else contextlib.nullcontext()
        ) as span:
            slot = await self.admission.admit(tenant)
            with slot:
                session = self.sessions.session_for(tenant, ref)
                if span is not None:
                    turn.span = span
                    span.set_attribute(names.GEN_AI_CONVERSATION_ID, session.program_id)
                pieces = _ReplyPieces() if stream else None
                if pieces is not None:
                    turn.on_delta = pieces.put
                    turn.tokens_done = pieces.send.close
                session.submit(turn)
                try:
                    if pieces is not None:
                        response = await self._stream(request, kind, session, turn, pieces, include_usage)
                    else:
                        response = await self._answer(kind, session, turn)
                except BaseException:
                    # Cancelled (the client disconnected) or failed writing to it: stop the call, end the program.
                    if not turn.done.is_set():
                        turn.cancel()
                        session.client_gone()
                        self.metrics.disconnects.labels(self.metrics.policy).inc()
                    raise
                finally:
                    if pieces is not None:
                        pieces.receive.close()
                if span is not None:
                    span.set_attribute(names.HTTP_RESPONSE_STATUS_CODE, response.status)
                return response

    def _bill(self, session: GatewaySession) -> None:
        """Charge ``session``'s tenant what its program consumed since the last bill (at each turn's end).

        From the program's usage, not the replies: a turn whose client left
        is charged the tokens its call streamed before it was cancelled.
        """
        program = self.runtime.programs.get(session.program_id)
        if program is None:
            return
        usage = program.usage - session.billed
        session.billed = program.usage
        if usage.total_tokens <= 0:
            return
        tenant = session.tenant
        self.admission.charge(tenant, usage.prompt_tokens, usage.completion_tokens)
        m = self.metrics
        m.tokens.labels(tenant.name, "prompt", m.policy).inc(usage.prompt_tokens)
        m.tokens.labels(tenant.name, "cached", m.policy).inc(usage.cached_tokens)
        m.tokens.labels(tenant.name, "completion", m.policy).inc(usage.completion_tokens)

    def _headers(self, session: GatewaySession, outcome: ChatOutcome | CompletionOutcome | None) -> dict[str, str]:
        headers = {"X-Agentrt-Program-Id": session.program_id}
        if outcome is not None and outcome.engine:
            headers["X-Agentrt-Engine"] = outcome.engine
        return headers

    async def _answer(self, kind: str, session: GatewaySession, turn: Turn) -> web.Response:
        try:
            outcome = await turn.outcome()
        except Exception as exc:
            raise _as_openai_error(exc) from None
        usage = usage_body(outcome.usage.prompt_tokens, outcome.usage.completion_tokens, outcome.usage.cached_tokens)
        if isinstance(outcome, ChatOutcome):
            body = chat_response(
                f"chatcmpl-{uuid.uuid4().hex}",
                self.model_name,
                content=outcome.content,
                tool_calls=[(c.id, c.name, c.arguments) for c in outcome.tool_calls],
                finish_reason=outcome.finish_reason,
                usage=usage,
            )
            if outcome.tool_call_error:
                body["agentrt"] = {"tool_call_error": outcome.tool_call_error}
        else:
            body = completion_response(
                f"cmpl-{uuid.uuid4().hex}",
                self.model_name,
                text=outcome.text,
                finish_reason=outcome.finish_reason,
                usage=usage,
            )
            if outcome.return_token_ids:
                body["choices"][0]["token_ids"] = list(outcome.token_ids)
                body["choices"][0]["prompt_token_ids"] = list(outcome.prompt_token_ids)
        return _json(body, headers=self._headers(session, outcome))

    async def _stream(
        self,
        request: web.Request,
        kind: str,
        session: GatewaySession,
        turn: Turn,
        pieces: _ReplyPieces,
        include_usage: bool,
    ) -> web.StreamResponse:
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-cache",
                "X-Agentrt-Program-Id": session.program_id,
            }
        )
        await response.prepare(request)
        created = int(time.time())
        chat = kind == "chat"
        response_id = f"chatcmpl-{uuid.uuid4().hex}" if chat else f"cmpl-{uuid.uuid4().hex}"
        model = self.model_name

        async def send(data: Mapping[str, Any]) -> None:
            await response.write(b"data: " + json.dumps(data, separators=(",", ":")).encode() + b"\n\n")

        if chat:
            await send(chat_chunk(response_id, model, created, delta={"role": "assistant", "content": ""}))
        streamed_text = False
        started_calls: set[int] = set()  # the indices of the tool calls whose first piece was sent
        async for piece in pieces.receive:
            if not chat:
                if piece.text:
                    await send(completion_chunk(response_id, model, created, text=piece.text))
                continue
            streamed_text = streamed_text or bool(piece.text)
            started_calls.update(c.index for c in piece.tool_calls if c.id is not None)
            await send(
                chat_chunk(
                    response_id,
                    model,
                    created,
                    delta={"content": piece.text} if piece.text else None,
                    tool_call_pieces=piece.tool_calls,
                )
            )
        try:
            outcome = await turn.outcome()
        except Exception as exc:
            # The status line is sent: the error goes as an event, as vLLM's server does.
            await send(error_body(_as_openai_error(exc)))
            await response.write(b"data: [DONE]\n\n")
            await response.write_eof()
            return response
        if isinstance(outcome, ChatOutcome):
            # What the stream could not read as it came (a reply replayed whole, a parser that lost the
            # thread) goes in the last chunk: the answer if none streamed, calls whose start did not.
            unsent = [(i, c) for i, c in enumerate(outcome.tool_calls) if i not in started_calls]
            if outcome.content and not streamed_text and not started_calls:
                delta = {"content": outcome.content}
            else:  # vLLM's finishing chunk carries an empty content (OpenAI's an empty delta)
                delta = {} if unsent else {"content": ""}
            last = chat_chunk(
                response_id,
                model,
                created,
                delta=delta,
                tool_calls=[(i, c.id, c.name, c.arguments) for i, c in unsent],
                finish_reason=outcome.finish_reason,
            )
            if outcome.tool_call_error:
                last["agentrt"] = {"tool_call_error": outcome.tool_call_error}
            await send(last)
        else:
            last = completion_chunk(response_id, model, created, finish_reason=outcome.finish_reason)
            if outcome.return_token_ids:  # the whole completion's ids, once, in the finishing chunk
                last["choices"][0]["token_ids"] = list(outcome.token_ids)
                last["choices"][0]["prompt_token_ids"] = list(outcome.prompt_token_ids)
            await send(last)
        if include_usage:
            usage = usage_body(
                outcome.usage.prompt_tokens, outcome.usage.completion_tokens, outcome.usage.cached_tokens
            )
            chunk = chat_chunk if chat else completion_chunk
            await send(chunk(response_id, model, created, usage=usage))
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response
