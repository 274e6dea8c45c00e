"""In-process vLLM engine: ``vllm.v1.engine.async_llm.AsyncLLM`` in this process.

The engine core still runs in a child process that vLLM spawns, which is why a
script that starts one needs an ``if __name__ == "__main__":`` guard.

This module and :mod:`._vllm_stats` are the only places that import vLLM's
Python API; that surface is kept small on purpose (vLLM's internals move
between releases) and every piece of it is exercised by the integration tests.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import tempfile
from collections.abc import AsyncGenerator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import anyio
import anyio.to_thread

from .._clock import now
from .._errors import EngineRequestError, EngineStartError, EngineUnavailableError
from .._models import resolve_model
from ._base import ChatPrompt, Completion, Engine, GenerateRequest, TokenDelta
from ._dtype import engine_build, resolve_dtype
from ._pin_control import CONFIG_KEY, PinControlClient
from ._pinned import PinControlled
from ._vllm_stats import SchedulerSnapshot, make_stat_logger_factory

if TYPE_CHECKING:
    from vllm.v1.engine.async_llm import AsyncLLM

__all__ = ["InProcessEngine"]


async def _stop_output_handler(llm: AsyncLLM) -> None:
    """Cancel ``llm``'s output-handler task before its engine core stops.

    vLLM 0.32's ``AsyncLLM.shutdown`` stops the engine core first and cancels
    its output handler after; the handler often reads the core's end in
    between and logs it as a crash ("AsyncLLM output_handler failed ...
    EngineDeadError", a traceback at every other exit of the demo).  With
    nothing in flight the handler has nothing left to deliver, so it goes
    first.  (With requests in flight vLLM's order stands: the handler's error
    is what fails their streams instead of leaving them waiting.)
    """
    handler = getattr(llm, "output_handler", None)
    if isinstance(handler, asyncio.Task) and not handler.done():
        handler.cancel()
        await asyncio.wait({handler})  # not awaited itself: its CancelledError is not ours


_engine_counter = 0


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
    ) -> None:
        self.model_path: Path = resolve_model(model)
        super().__init__(name or _next_name(), self.model_path.name)
        self._kv_cache_gib = kv_cache_gib
        #: The number format the engine runs in (``"auto"`` resolved for this machine).
        self.dtype = resolve_dtype(dtype)
        self._args: dict[str, Any] = {
            "model": str(self.model_path),
            "served_model_name": [self.model_path.name],
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
        self._llm: AsyncLLM | None = None
        self._snapshot = SchedulerSnapshot()

    async def _start(self) -> None:
        # vLLM on the CPU sizes its cache from this variable and refuses to
        # start without it on these machines; the engine-core child process
        # reads it when it is spawned, so set it just before.
        os.environ["VLLM_CPU_KVCACHE_SPACE"] = str(self._kv_cache_gib)
        if self._pins:
            self._open_pin_control()
        try:
            self._llm = await anyio.to_thread.run_sync(self._build)
        except Exception as exc:
            await self._close_pins()
            # vLLM's messages can run to pages (every supported architecture);
            # the whole text stays on the chained cause.
            detail = " ".join(str(exc).split())
            if len(detail) > 400:
                detail = detail[:400] + " ..."
            raise EngineStartError(f"in-process vLLM engine on {self.model_path} failed to start: {detail}") from exc

    def _open_pin_control(self) -> None:
        # The control server listens in the engine-core process, on a socket
        # in a directory only this user can enter, with a token as well.
        self._pin_dir = tempfile.mkdtemp(prefix="agentrt-pins-")
        address = f"unix:{self._pin_dir}/control.sock"
        token = secrets.token_urlsafe(24)
        extra = dict(self._args.get("additional_config") or {})
        extra[CONFIG_KEY] = {"listen": address, "token": token}
        self._args["additional_config"] = extra
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
        if self._llm is None:
            raise EngineUnavailableError(f"engine {self.name} is not started")
        if self._llm.errored:
            raise EngineUnavailableError(f"engine {self.name} is dead: {self._llm.dead_error}")
        return self._llm

    def _prompt_ids(self, llm: AsyncLLM, request: GenerateRequest) -> list[int]:
        if not isinstance(request.prompt, ChatPrompt):
            return list(request.prompt.token_ids)
        tokenizer = llm.get_tokenizer()
        try:
            ids = tokenizer.apply_chat_template(
                [dict(m) for m in request.prompt.messages], add_generation_prompt=True, tokenize=True
            )
        except Exception as exc:
            raise EngineRequestError(f"cannot render chat messages with {self.model}'s template: {exc}") from exc
        # transformers 5 returns a BatchEncoding-like mapping; 4.x a list.
        if isinstance(ids, Mapping):
            ids = cast(Any, ids)["input_ids"]
        return [int(i) for i in ids]

    async def _stream(self, request: GenerateRequest) -> AsyncGenerator[TokenDelta | Completion, None]:
        from vllm.exceptions import VLLMClientError
        from vllm.sampling_params import RequestOutputKind, SamplingParams, StructuredOutputsParams
        from vllm.v1.engine.exceptions import EngineDeadError

        llm = self._require_llm()
        prompt_ids = self._prompt_ids(llm, request)
        opts = request.sampling
        try:
            params = SamplingParams(
                max_tokens=opts.max_tokens,
                temperature=opts.temperature,
                top_p=opts.top_p,
                seed=opts.seed,
                stop=list(opts.stop) or None,
                ignore_eos=opts.ignore_eos,
                structured_outputs=(
                    StructuredOutputsParams(json=dict(opts.json_schema)) if opts.json_schema is not None else None
                ),
                extra_args=dict(request.metadata) or None,
                output_kind=RequestOutputKind.DELTA,
            )
        except (ValueError, TypeError) as exc:
            raise EngineRequestError(f"invalid sampling options: {exc}") from exc

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
            raise EngineRequestError(f"engine {self.name} rejected request {request.request_id!r}: {exc}") from exc

    async def _abort(self, request_id: str) -> None:
        if self._llm is not None:
            await self._llm.abort(request_id)

    async def _check_health(self) -> None:
        self._require_llm()

    def _available(self) -> bool:
        return self._llm is not None and not self._llm.errored

    async def _engine_stats(self) -> dict[str, Any]:
        return {**self._snapshot.as_stats(), **await self._pin_engine_stats()}

    def _load_figures(self) -> dict[str, Any]:
        snap = self._snapshot
        return {"waiting": snap.waiting, "running": snap.running, "kv_usage": snap.kv_usage, **self._pin_load_figures()}

    async def _aclose(self) -> None:
        llm, self._llm = self._llm, None
        with anyio.CancelScope(shield=True):
            await self._close_pins()
        if llm is None:
            return
        with anyio.CancelScope(shield=True):
            if not self._in_flight:
                await _stop_output_handler(llm)
            # shutdown() joins the engine-core process: keep the loop free.
            await anyio.to_thread.run_sync(llm.shutdown)

    @property
    def vllm(self) -> AsyncLLM:
        """The underlying ``AsyncLLM`` (vLLM's API; may change between releases)."""
        return self._require_llm()
