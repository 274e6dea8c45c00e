"""In-process vLLM engine: ``vllm.v1.engine.async_llm.AsyncLLM`` in this process.

The engine core still runs in a child process that vLLM starts, which is why a
script that starts one needs an ``if __name__ == "__main__":`` guard.  That
process is guarded by the reaper (:mod:`._reaper`), so it does not outlive
this one, and watched by a supervisor (:mod:`._supervisor`) that rebuilds
the engine, with backoff, when the core dies (``restart_on_failure``).

This module and :mod:`._vllm_stats` are the only places that import vLLM's
Python API; that surface is kept small on purpose (vLLM's internals move
between releases) and every piece of it is exercised by the integration tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import secrets
import shutil
import signal
import tempfile
import threading
from collections.abc import AsyncGenerator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import anyio.to_thread

from .._clock import now
from .._errors import EngineError, EngineRequestError, EngineStartError, EngineUnavailableError
from .._models import resolve_model
from ._base import Engine
from ._dtype import engine_build, resolve_dtype
from ._pin_control import CONFIG_KEY, PinControlClient
from ._pinned import PinControlled
from ._reaper import NewChildren
from ._requests import ChatPrompt, Completion, GenerateRequest, TokenDelta
from ._supervisor import Supervisor
from ._tool_template import NativeTools, native_tools_of
from ._vllm_stats import SchedulerSnapshot, make_stat_logger_factory

if TYPE_CHECKING:
    from vllm.v1.engine.async_llm import AsyncLLM

__all__ = ["InProcessEngine"]

logger = logging.getLogger(__name__)

#: Seconds between looks at whether the engine core is alive (vLLM has no death callback).
_WATCH_S = 0.25
#: One engine build at a time in a process.  vLLM's build is not safe to run
#: concurrently with another: its Prometheus logger unregisters every "vllm:"
#: collector of the global registry and registers its own, so two builds that
#: finish together fail with "Duplicated timeseries"; the CPU cache size is
#: an environment variable the engine-core child reads when it starts; and
#: each build tells its engine-core process apart as the children that
#: appeared during it.  Engines of one pool start one after the other.
_BUILD_LOCK = threading.Lock()
#: Seconds the engine core gets to exit after vLLM's SIGTERM at shutdown before vLLM kills it (vLLM's default: 5).
_CORE_EXIT_GRACE_S = 30.0


async def _stop_output_handler(llm: AsyncLLM) -> None:
    """Cancel ``llm``'s output-handler task before its engine core stops.

    vLLM 0.32's ``AsyncLLM.shutdown`` stops the engine core first and cancels
    its output handler after; the handler often reads the core's end in
    between and logs it as a crash ("AsyncLLM output_handler failed ...
    EngineDeadError", a traceback at every other exit of the demo).  With
    nothing in flight the handler has nothing left to deliver, so it goes
    first.  (A close aborts what is in flight first, :func:`_quiesce`; on a
    dead core with requests in flight vLLM's order stands: the handler's
    error is what fails their streams instead of leaving them waiting.)
    """
    handler = getattr(llm, "output_handler", None)
    if isinstance(handler, asyncio.Task) and not handler.done():
        handler.cancel()
        await asyncio.wait({handler})  # not awaited itself: its CancelledError is not ours


async def _quiesce(llm: AsyncLLM, in_flight: tuple[str, ...]) -> None:
    """Before a deliberate shutdown of a live engine: abort what is in flight, then stop the output handler.

    Aborting ends each request's stream with vLLM's final "abort" output
    (what :meth:`Engine.aclose` promises), so the output handler has nothing
    left to deliver and can go before the core stops, and nobody waits on a
    stream that would otherwise only end by the handler's ``EngineDeadError``.
    """
    from vllm.v1.engine.exceptions import EngineDeadError

    if in_flight:
        try:
            await llm.abort(list(in_flight))
        except EngineDeadError:
            pass  # the core died meanwhile; the streams were ended before the core was asked
        except Exception:
            logger.warning("aborting %d request(s) before shutdown failed", len(in_flight), exc_info=True)
    await _stop_output_handler(llm)


def _shut_down_already(timeout: float | None = None) -> None:
    """What an ``AsyncLLM``'s ``shutdown`` does once we have shut it down."""


_engine_counter = 0


def _param_of(exc: BaseException) -> str | None:
    """The request field vLLM blames (``VLLMValidationError.parameter``), if it says."""
    param = getattr(exc, "parameter", None)
    return param if isinstance(param, str) else None


def _next_name() -> str:
    global _engine_counter
    _engine_counter += 1
    return f"inproc-{_engine_counter - 1}"


def plugin_scheduler_cls() -> str:
    """The dotted path of agentrt's pinning scheduler for this vLLM build (synchronous on the CPU)."""
    name = "PinningScheduler" if engine_build() == "cpu" else "AsyncPinningScheduler"
    return f"runtime.vllm_scheduler.{name}"


class InProcessEngine(PinControlled, Engine):
    """A vLLM engine running inside this process (``AsyncLLM``).

    ``model`` is a name under the models directory (``tiny``, ``smollm2-135m``)
    or a path.  ``kv_cache_gib`` sizes the KV cache on the CPU
    (``VLLM_CPU_KVCACHE_SPACE``); ``num_kv_blocks`` forces a small cache to
    create memory pressure.  ``enforce_eager`` skips graph compilation; by
    default it is on for the CPU, where compiling takes minutes at start-up for
    little gain on small models, and off elsewhere.  ``dtype`` is the number
    format (``"auto"``: bfloat16 on GPUs and on CPUs with native bfloat16,
    else float32, several times faster on such CPUs); :attr:`dtype` holds the
    one in use.  Requests run with vLLM's priority scheduling
    (lower value first) and prefix caching on.  Extra ``AsyncEngineArgs``
    fields go in ``engine_args``.

    ``pins`` runs vLLM with agentrt's scheduler plug-in
    (:mod:`runtime.vllm_scheduler`) and its control path on a private Unix
    socket, so policies can pin KV blocks (:attr:`supports_pins`).  By
    default it is on unless ``scheduler_cls`` names a scheduler of your own;
    ``pins=True`` with your own ``scheduler_cls`` says that it is (or
    subclasses) the plug-in.

    When the engine core dies (killed, crashed), requests in flight on it
    fail with :class:`~runtime.EngineUnavailableError` and the engine is
    not :attr:`available`.  With ``restart_on_failure`` (the default) it is
    then built again in the background, after 1, 2, 4 ... seconds (at most
    30), up to ``max_restarts`` times over its life, and is available again
    once rebuilt (:attr:`restarts` counts them); pins of the dead core are
    lost.  Without it the engine stays down until closed.
    """

    def __init__(
        self,
        model: str | os.PathLike[str] = "tiny",
        *,
        name: str | None = None,
        kv_cache_gib: int = 1,
        max_model_len: int | None = 4096,
        max_num_seqs: int | None = None,
        num_kv_blocks: int | None = None,
        dtype: str = "auto",
        scheduler_cls: str | None = None,
        pins: bool | None = None,
        enforce_eager: bool | None = None,
        engine_args: Mapping[str, Any] | None = None,
        restart_on_failure: bool = True,
        max_restarts: int = 3,
    ) -> None:
        self._model_path = resolve_model(model)
        super().__init__(name or _next_name(), self._model_path.name)
        self._kv_cache_gib = kv_cache_gib
        #: The number format the engine runs in (``"auto"`` resolved for this machine).
        self.dtype = resolve_dtype(dtype)
        self._args: dict[str, Any] = {
            "model": str(self._model_path),
            "served_model_name": [self._model_path.name],
            "dtype": self.dtype,
            "max_model_len": max_model_len,
            "max_num_seqs": max_num_seqs,
            "num_gpu_blocks_override": num_kv_blocks,
            "scheduler_cls": scheduler_cls,
            "scheduling_policy": "priority",
            "enable_prefix_caching": True,
            # Random-weight test models pad JSON with whitespace until
            # max_tokens unless whitespace outside strings is disallowed.
            "structured_outputs_config": {"backend": "xgrammar", "disable_any_whitespace": True},
            "disable_log_stats": True,
        }
        self._enforce_eager = enforce_eager
        self._args = {k: v for k, v in self._args.items() if v is not None}
        self._args.update(engine_args or {})
        self._pins = scheduler_cls is None if pins is None else pins
        if self._pins and scheduler_cls is None:
            self._args["scheduler_cls"] = plugin_scheduler_cls()
        self._pin_dir: str | None = None
        self._pin_address = self._pin_token = ""
        self._llm: AsyncLLM | None = None
        self._snapshot = SchedulerSnapshot()
        # The processes the current AsyncLLM started (its engine core), guarded by the reaper.
        self._children: NewChildren | None = None
        # A build in a worker thread; it runs on when its awaiter is cancelled, and closing waits for it.
        self._building: asyncio.Task[None] | None = None
        self._build_children: NewChildren | None = None
        self._supervisor = Supervisor(
            self.name,
            watch=self._core_death,
            clean_up=self._shut_down_llm,
            rebuild=self._rebuild,
            restart=restart_on_failure,
            max_restarts=max_restarts,
            restart_option="restart_on_failure",
            logger=logger,
        )
        # The chat template's tools, read once from the engine's tokenizer (the model does not change).
        self._tool_template: NativeTools | None = None
        self._tool_template_read = False

    @property
    def max_model_len(self) -> int | None:
        if self._llm is not None:
            return int(self._llm.model_config.max_model_len)
        configured = self._args.get("max_model_len")
        return configured if isinstance(configured, int) else None

    @property
    def model_path(self) -> Path:
        """The model's directory (``model`` resolved)."""
        return self._model_path

    @property
    def restarts(self) -> int:
        """How many times the engine was rebuilt after its engine core died."""
        return self._supervisor.restarts

    async def _start(self) -> None:
        if self._pins:
            self._open_pin_control()
        try:
            await self._build_in_thread()
        except Exception as exc:
            await self._close_pins()
            raise self._start_error(exc) from exc
        await self._read_kv_geometry()
        self._supervisor.start()

    def _start_error(self, exc: Exception) -> EngineStartError:
        # vLLM's messages can run to pages (every supported architecture);
        # the whole text stays on the chained cause.
        detail = " ".join(str(exc).split())
        if len(detail) > 400:
            detail = detail[:400] + " ..."
        return EngineStartError(f"in-process vLLM engine on {self._model_path} failed to start: {detail}")

    async def _build_in_thread(self) -> None:
        """Build the ``AsyncLLM`` in a worker thread (it blocks for tens of seconds) into ``self._llm``.

        The build runs in a task of its own and stores its result itself, so
        that cancelling the caller (Ctrl-C while engines start) does not lose
        an engine that then finishes starting: :meth:`_aclose` waits for the
        build and shuts down what it made.
        """
        building = asyncio.create_task(anyio.to_thread.run_sync(self._build_and_keep), name=f"{self.name} build")
        self._building = building
        try:
            await asyncio.shield(building)
        finally:
            if building.done():
                self._building = None

    def _build_and_keep(self) -> None:
        # The engine core is a child process vLLM forks while it builds: guard
        # it from the moment it appears, so a kill -9 of this process
        # mid-build leaves nothing behind either.
        with _BUILD_LOCK:
            if self.closed:  # closed while it waited for another engine's build: build nothing
                raise EngineUnavailableError(f"engine {self.name} was closed before it started")
            # vLLM on the CPU sizes its cache from this variable and refuses to
            # start without it on these machines; the engine-core child process
            # reads it when it is started, so set it just before.
            os.environ["VLLM_CPU_KVCACHE_SPACE"] = str(self._kv_cache_gib)
            self._build_locked()

    def _build_locked(self) -> None:
        children = self._build_children = NewChildren()
        try:
            with children:
                llm = self._build()
        except BaseException:
            children.release()  # vLLM stopped what it started
            raise
        finally:
            self._build_children = None
        self._llm, self._children = llm, children

    def _abort_build(self) -> None:
        """Stop the processes of a build in progress, so that it fails now rather than finish starting to be closed."""
        children = self._build_children
        for pid in set(children.pids) if children is not None else ():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)

    def _open_pin_control(self) -> None:
        # The control server listens in the engine-core process, on a socket
        # in a directory only this user can enter, with a token as well.
        self._pin_dir = tempfile.mkdtemp(prefix="agentrt-pins-")
        address = f"unix:{self._pin_dir}/control.sock"
        token = secrets.token_urlsafe(24)
        extra = dict(self._args.get("additional_config") or {})
        extra[CONFIG_KEY] = {"listen": address, "token": token}
        self._args["additional_config"] = extra
        self._pin_address, self._pin_token = address, token
        self._pin_client = PinControlClient(address, token, engine=self.name)

    async def _close_pins(self) -> None:
        await self._close_pin_client()
        self._pin_client = None
        if self._pin_dir is not None:
            shutil.rmtree(self._pin_dir, ignore_errors=True)
            self._pin_dir = None

    def _build(self) -> AsyncLLM:
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        options = dict(self._args)
        if "enforce_eager" not in options:
            if self._enforce_eager is None:
                from vllm.platforms import current_platform

                options["enforce_eager"] = current_platform.is_cpu()
            else:
                options["enforce_eager"] = self._enforce_eager
        args = AsyncEngineArgs(**options)
        return AsyncLLM.from_engine_args(args, stat_loggers=[make_stat_logger_factory(self._snapshot)])

    def _require_llm(self) -> AsyncLLM:
        if (reason := self._supervisor.down_reason) is not None:
            raise EngineUnavailableError(reason)
        if self._llm is None:
            raise EngineUnavailableError(f"engine {self.name} is not started")
        if self._llm.errored:
            raise EngineUnavailableError(f"engine {self.name}: its vLLM engine core died ({self._llm.dead_error})")
        return self._llm

    def _chat_prompt_ids(self, tokenizer: Any, prompt: ChatPrompt, max_model_len: int) -> list[int]:
        """The chat prompt rendered by the model's template and tokenized.  Blocking: run in a worker thread.

        A text longer than any ``max_model_len`` tokens could spell is refused
        before it is tokenized (vLLM's server does the same), so an oversized
        prompt costs a template rendering, not seconds of tokenizing.
        """
        # Tools only when there are some: a template given tools=[] may still
        # render its tools preamble, and the JSON path's prompts must not change.
        tools = {"tools": [dict(t) for t in prompt.tools]} if prompt.tools else {}
        try:
            text = tokenizer.apply_chat_template(
                [dict(m) for m in prompt.messages], add_generation_prompt=True, tokenize=False, **tools
            )
        except Exception as exc:
            raise EngineRequestError(
                f"cannot render chat messages with {self.model}'s template: {exc}", param="messages"
            ) from exc
        max_chars = max_model_len * int(getattr(tokenizer, "max_chars_per_token", 0) or 0)
        if max_chars and len(text) > max_chars:
            raise EngineRequestError(
                f"This model's maximum context length is {max_model_len} tokens. However, your prompt contains "
                f"{len(text)} characters (more than {max_chars} characters, which is the upper bound for "
                f"{max_model_len} input tokens). Please reduce the length of the input prompt.",
                param="messages",
            )
        # What apply_chat_template(tokenize=True) does: the rendered text carries its special tokens.
        return [int(i) for i in tokenizer.encode(text, add_special_tokens=False)]

    async def _stream(self, request: GenerateRequest) -> AsyncGenerator[TokenDelta | Completion, None]:
        from vllm.exceptions import VLLMClientError
        from vllm.sampling_params import RequestOutputKind, SamplingParams, StructuredOutputsParams
        from vllm.v1.engine.exceptions import EngineDeadError, EngineGenerateError

        llm = self._require_llm()
        opts = request.sampling
        max_model_len = int(llm.model_config.max_model_len)
        if opts.max_tokens > max_model_len:  # vLLM's server refuses it; AsyncLLM alone would cut the reply short
            raise EngineRequestError(
                f"max_tokens={opts.max_tokens} cannot be greater than max_model_len={max_model_len}. "
                "Please request fewer output tokens.",
                param="max_tokens",
            )
        if isinstance(request.prompt, ChatPrompt):
            # Rendering and tokenizing a long context takes milliseconds to seconds: off the event loop.
            prompt_ids = await anyio.to_thread.run_sync(
                self._chat_prompt_ids, llm.get_tokenizer(), request.prompt, max_model_len
            )
        else:
            prompt_ids = list(request.prompt.token_ids)
        try:
            params = SamplingParams(
                max_tokens=opts.max_tokens,
                temperature=opts.temperature,
                top_p=opts.top_p,
                seed=opts.seed,
                stop=list(opts.stop) or None,
                ignore_eos=opts.ignore_eos,
                structured_outputs=(
                    StructuredOutputsParams(json=dict(opts.json_schema))
                    if opts.json_schema is not None
                    else StructuredOutputsParams(structural_tag=opts.structural_tag)
                    if opts.structural_tag is not None
                    else None
                ),
                # A native tool call's markers are special tokens in some
                # models (as vLLM's parsers set it, for the parser to see them).
                skip_special_tokens=not (isinstance(request.prompt, ChatPrompt) and request.prompt.tools),
                extra_args=dict(request.metadata) or None,
                output_kind=RequestOutputKind.DELTA,
                **dict(opts.extra),
            )
        except (ValueError, TypeError, VLLMClientError) as exc:
            raise EngineRequestError(f"invalid sampling options: {exc}", param=_param_of(exc)) from exc

        started = now()
        ttft: float | None = None
        text: list[str] = []
        token_ids: list[int] = []
        try:
            async for out in llm.generate(
                {"prompt_token_ids": prompt_ids}, params, request.request_id, priority=request.priority
            ):
                piece = out.outputs[0]
                if piece.token_ids:
                    if ttft is None:
                        ttft = now() - started
                    text.append(piece.text)
                    token_ids.extend(piece.token_ids)
                    yield TokenDelta(piece.text, tuple(piece.token_ids))
                if out.finished:
                    metrics = out.metrics
                    queued = None
                    if metrics is not None and metrics.scheduled_ts and metrics.queued_ts:
                        queued = max(0.0, metrics.scheduled_ts - metrics.queued_ts)
                    yield Completion(
                        request_id=request.request_id,
                        engine=self.name,
                        model=self.model,
                        text="".join(text),
                        token_ids=tuple(token_ids),
                        finish_reason=piece.finish_reason,
                        prompt_tokens=len(prompt_ids),
                        completion_tokens=len(token_ids),
                        cached_tokens=out.num_cached_tokens or 0,
                        ttft_s=ttft,
                        e2e_s=now() - started,
                        queued_s=queued,
                        prompt_token_ids=tuple(prompt_ids),
                    )
                    return
        except EngineDeadError as exc:
            raise EngineUnavailableError(f"engine {self.name} died: {exc}") from exc
        except (VLLMClientError, ValueError) as exc:
            raise EngineRequestError(
                f"engine {self.name} rejected request {request.request_id!r}: {exc}", param=_param_of(exc)
            ) from exc
        except EngineGenerateError as exc:
            # vLLM wraps what went wrong inside generate(); a value it could not take is the request's fault.
            cause = exc.__cause__
            if isinstance(cause, ValueError | TypeError | OverflowError | VLLMClientError):
                raise EngineRequestError(
                    f"engine {self.name} rejected request {request.request_id!r}: {type(cause).__name__}: {cause}",
                    param=_param_of(cause),
                ) from exc
            raise EngineError(f"engine {self.name} failed request {request.request_id!r}: {cause!r}") from exc

    async def tool_template(self) -> NativeTools | None:
        """What the engine's own tokenizer's chat template does with tools (see :meth:`Engine.tool_template`)."""
        if not self._tool_template_read:
            tokenizer = self._require_llm().get_tokenizer()
            self._tool_template = native_tools_of(tokenizer, self.model)
            self._tool_template_read = True
        return self._tool_template

    async def _abort(self, request_id: str) -> None:
        if self._llm is not None:
            await self._llm.abort(request_id)

    async def _check_health(self) -> None:
        self._require_llm()

    def _available(self) -> bool:
        return self._supervisor.down_reason is None and self._llm is not None and not self._llm.errored

    async def _engine_stats(self) -> dict[str, Any]:
        return {**self._snapshot.as_stats(), **await self._pin_engine_stats()}

    def _load_figures(self) -> dict[str, Any]:
        snap = self._snapshot
        llm = self._llm
        seqs = None if llm is None else int(llm.vllm_config.scheduler_config.max_num_seqs)
        return {
            "waiting": snap.waiting,
            "running": snap.running,
            "kv_usage": snap.kv_usage,
            "max_num_seqs": seqs,
            **self._pin_load_figures(),
        }

    # -- supervision ---------------------------------------------------------

    async def _core_death(self) -> str:
        """Return once the engine core has died (the supervisor's ``watch``)."""
        while (llm := self._llm) is not None and not llm.errored:  # noqa: ASYNC110 - vLLM has no death event
            await asyncio.sleep(_WATCH_S)
        return f"engine {self.name}: its vLLM engine core died"

    async def _rebuild(self) -> None:
        """Build the engine again after its core died (the supervisor's ``rebuild``)."""
        try:
            await self._renew_pin_client()
            await self._build_in_thread()
        except Exception as exc:
            raise self._start_error(exc) from exc

    async def _renew_pin_client(self) -> None:
        """A fresh client for the rebuilt core's control server (same address, token): the old connections are dead."""
        old = self._pin_client
        if old is None:
            return
        self._pin_client = PinControlClient(self._pin_address, self._pin_token, engine=self.name)
        await old.aclose()

    async def _shut_down_llm(self, *, closing: bool = False) -> None:
        """Shut the current ``AsyncLLM`` down (its core may be dead already) and release its processes.

        ``closing``: a deliberate close, so requests in flight on a live core are aborted first.
        """
        llm, self._llm = self._llm, None
        children, self._children = self._children, None
        if llm is not None:
            with anyio.CancelScope(shield=True):
                if closing and not llm.errored:
                    await _quiesce(llm, tuple(self._in_flight))
                elif not self._in_flight:
                    await _stop_output_handler(llm)
                # shutdown() sends the core SIGTERM and joins it: in a thread, to keep the loop free.
                await anyio.to_thread.run_sync(functools.partial(llm.shutdown, timeout=_CORE_EXIT_GRACE_S))
            # AsyncLLM.__del__ shuts down once more.  When a traceback keeps the object alive until the
            # interpreter exits (SystemExit after a SIGTERM, a test's exception info), that second call runs
            # after vLLM's modules are torn down and prints a TypeError traceback.  It is shut down already.
            vars(llm)["shutdown"] = _shut_down_already
        if children is not None:
            children.release()

    async def _aclose(self) -> None:
        self._supervisor.down_reason = f"engine {self.name} is closed"
        with anyio.CancelScope(shield=True):
            await self._supervisor.stop()
            building, self._building = self._building, None
            if building is not None:
                # Starting, or restarting, when asked to close (a signal during start-up): end the build, stop
                # what it made.
                self._abort_build()
                await asyncio.wait({building})
                if not building.cancelled() and building.exception() is not None:
                    logger.debug("%s: build abandoned at close failed: %s", self.name, building.exception())
            await self._close_pins()
            await self._shut_down_llm(closing=True)

    @property
    def vllm(self) -> AsyncLLM:
        """The underlying ``AsyncLLM`` (vLLM's API; may change between releases)."""
        return self._require_llm()
