"""``SimEngine``: an :class:`~runtime.Engine` backed by the discrete-event simulator.

The engine runs one background task, the engine loop, that plans a step with
the :class:`~._scheduler.Scheduler`, sleeps the step's modelled duration in
loop time, applies the step and wakes the requests it advanced; it idles on
an event while nothing is queued.  Under :func:`runtime.replay.run_virtual`
the sleeps take no wall time, so hours of serving simulate in seconds; on a
normal loop the engine behaves like a (slow or fast) real one.

A stream yields one :class:`TokenDelta` with the first token and then the
:class:`Completion`, never one item per token: the simulator must stay cheap
per token.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass
from typing import Any

from runtime import (
    METADATA_PIN_MODE,
    METADATA_PREEMPT_RANK,
    PIN_MODE_CONTINUUM,
    CachedPrefix,
    Completion,
    Engine,
    EngineRequestError,
    EngineUnavailableError,
    GenerateRequest,
    PinStats,
    TokenDelta,
    TokenPrompt,
)

from ._cost import CostProfile
from ._host import HostTierMode
from ._scheduler import DecodeRun, QueueOrder, Scheduler, SimRequest, Step, output_ids

__all__ = ["SimEngine"]


def monotonic() -> float:
    """The running loop's clock, the one the runtime and every engine time by (virtual under run_virtual).

    Read directly from the loop rather than through ``anyio.current_time()``
    (the same clock on asyncio): the engine loop reads it several times per
    simulated step.
    """
    return asyncio.get_running_loop().time()


@dataclass(slots=True, eq=False)
class _Waiter:
    """Futures a stream waits on, resolved by the engine loop."""

    first_token: asyncio.Future[None]
    done: asyncio.Future[None]


class SimEngine(Engine):
    """A simulated vLLM engine: one model on one device, described by a cost profile.

    ``profile`` is a :class:`CostProfile`, the name of a bundled profile
    (``h100-llama3-8b``) or a path to a JSON profile.  ``kv_blocks``,
    ``max_num_seqs`` and ``max_num_batched_tokens`` override the profile's.
    ``queue_order`` orders the waiting queue: ``"priority"`` (lower ``priority``
    first, then arrival; vLLM's ``--scheduling-policy priority``) or
    ``"fcfs"``.  Generated token ids are pseudo-random in
    ``[first_token_id, vocab_size)``, fixed by ``seed`` and the request id.

    Only :class:`TokenPrompt` requests are accepted (there is no tokenizer).

    Engine control: the simulator pins (``supports_pins``).  A request whose
    metadata has ``program_id`` and ``pin_ttl_s`` (seconds) keeps its KV
    blocks pinned for that long after it finishes, for the program's next
    request; :meth:`~runtime.Engine.set_pin` moves a live pin's expiry or
    pins the blocks of the program's last finished request that the prefix
    cache still holds, and :meth:`~runtime.Engine.release_pin` lets go.
    Under memory pressure the least valuable pin (``set_pin``'s ``value``;
    a pin from metadata has none, which counts as 0) is released first, and
    among equal values the latest program's (the one whose first request
    reached this engine last).  A request with metadata ``pin_mode`` =
    ``"continuum"`` (the ``continuum`` policy's) switches the engine to
    Continuum's public scheduler for good (hard pins, job-level FCFS, the
    latest job preempted: :mod:`._continuum`), as vllm-continuum's
    ``--scheduling-policy continuum`` would at launch.
    :meth:`prefill_cost_s` prices a prefill with the profile.

    Cache contents: :meth:`~runtime.Engine.cached_prefix` reads the block
    manager's prefix-cache map (``reports_cached_prefix``), what a router
    following vLLM's KV events knows of a real engine.

    Host-memory KV tier (:mod:`._host`), off by default so that an engine
    built without it behaves exactly as before: ``host_tier="lru"`` stores
    every computed block to host memory (vLLM's ``OffloadingConnector``),
    ``host_tier="directed"`` only what :meth:`~runtime.Engine.offload` moves;
    in both, a waiting request loads from host memory the blocks that
    continue its GPU prefix hit instead of recomputing them, and
    :meth:`~runtime.Engine.prefetch` brings a program's context back.  The
    profile gives the sizes and bandwidths (``kv_bytes_per_token``,
    ``host_kv_bytes``, ``host_to_device_bytes_per_s``,
    ``device_to_host_bytes_per_s``); ``host_kv_bytes`` overrides the host
    memory's size.  ``supports_offload`` is true iff the tier is on.
    """

    @property
    def supports_pins(self) -> bool:
        return True

    @property
    def reports_cached_prefix(self) -> bool:
        return True

    @property
    def supports_offload(self) -> bool:
        return self.scheduler.host is not None

    def __init__(
        self,
        profile: CostProfile | str | os.PathLike[str],
        *,
        name: str = "sim-0",
        model: str | None = None,
        kv_blocks: int | None = None,
        max_num_seqs: int | None = None,
        max_num_batched_tokens: int | None = None,
        queue_order: QueueOrder = "priority",
        vocab_size: int = 32000,
        first_token_id: int = 3,
        seed: int = 0,
        host_tier: HostTierMode | None = None,
        host_kv_bytes: int | None = None,
    ) -> None:
        self.profile = profile if isinstance(profile, CostProfile) else CostProfile.load(profile)
        super().__init__(name, model or self.profile.model)
        if not 0 <= first_token_id < vocab_size:
            raise ValueError(f"need 0 <= first_token_id < vocab_size, got {first_token_id} and {vocab_size}")
        self.scheduler = Scheduler(
            self.profile,
            kv_blocks=kv_blocks,
            max_num_seqs=max_num_seqs,
            max_num_batched_tokens=max_num_batched_tokens,
            queue_order=queue_order,
            host_tier=host_tier,
            host_kv_bytes=host_kv_bytes,
        )
        self.vocab_size = vocab_size
        self.first_token_id = first_token_id
        self.seed = seed
        self._waiters: dict[str, _Waiter] = {}
        self._wake: asyncio.Event | None = None
        self._loop_task: asyncio.Task[None] | None = None
        self._failure: BaseException | None = None
        # The decode run in progress (see _run) and the future its sleep waits on.
        self._decode_run: DecodeRun | None = None
        self._run_wake: asyncio.Future[bool] | None = None

    # -- lifecycle ---------------------------------------------------------

    async def _start(self) -> None:
        self._wake = asyncio.Event()
        self._loop_task = asyncio.get_running_loop().create_task(self._run(), name=f"{self.name} engine loop")

    async def _aclose(self) -> None:
        task, self._loop_task = self._loop_task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for request_id in list(self._waiters):
            self._fail(request_id, EngineUnavailableError(f"engine {self.name} was closed"))

    async def _run(self) -> None:
        sched = self.scheduler
        assert self._wake is not None
        loop = asyncio.get_running_loop()
        try:
            while True:
                step = sched.schedule(monotonic())
                if step is None:
                    self._wake.clear()
                    event = sched.next_event()  # a copy from host memory a request waits for
                    if event == math.inf:
                        await self._wake.wait()
                    else:
                        timer = loop.call_at(event, self._wake.set)
                        try:
                            await self._wake.wait()
                        finally:
                            timer.cancel()
                    continue
                run = sched.decode_run(step, monotonic())
                if run is None:
                    await asyncio.sleep(step.duration)
                else:
                    # A run of identical decode steps: one sleep instead of one
                    # per step, woken early only by a request arriving or
                    # aborted (_interrupt), which applies the boundaries passed
                    # so far and cuts the run after the step in flight, so the
                    # newcomer is admitted at the boundary it would have been.
                    step = await self._decode(loop, run)
                result = sched.complete(step, monotonic())
                waiters = self._waiters
                for req in result.first_tokens:
                    w = waiters.get(req.request_id)
                    if w is not None and not w.first_token.done():
                        w.first_token.set_result(None)
                for req in result.finished:
                    w = waiters.get(req.request_id)
                    if w is not None and not w.done.done():
                        w.done.set_result(None)
        except Exception as exc:
            # A bug in the simulator: fail every request rather than hang them.
            self._failure = exc
            for request_id in list(self._waiters):
                self._fail(request_id, EngineUnavailableError(f"simulator {self.name} failed: {exc!r}"))
            raise

    async def _decode(self, loop: asyncio.AbstractEventLoop, run: DecodeRun) -> Step:
        """Sleep through a decode run; returns its last step (ended now), to complete as usual."""
        # Resolved True by the timer at the run's end, False by _interrupt.
        wake: asyncio.Future[bool] = loop.create_future()
        # call_at, not a relative sleep: the run's end times accumulate the
        # step durations exactly as the one-sleep-per-step loop's clock did.
        timer = loop.call_at(run.ends[-1], _resolve, wake, True)
        self._decode_run = run
        self._run_wake = wake
        try:
            elapsed = await wake
        finally:
            timer.cancel()
            self._decode_run = None
            self._run_wake = None
        if elapsed:  # the whole run
            self.scheduler.advance(run, run.ends[-2])
            return run.step()
        # Cut short: _interrupt applied the boundaries passed; wait for the step in flight.
        step = run.step()
        end = run.end
        if end > monotonic():
            done: asyncio.Future[bool] = loop.create_future()
            timer = loop.call_at(end, _resolve, done, True)
            try:
                await done
            finally:
                timer.cancel()
        return step

    def _catch_up(self) -> None:
        """Bring the scheduler's state up to now within a decode run, before anything reads or changes it."""
        run = self._decode_run
        if run is not None:
            self.scheduler.advance(run, monotonic())
        if self.scheduler.host is not None:
            self.scheduler.settle(monotonic())

    def _interrupt(self) -> None:
        """A request arrives or is aborted: the next plan must see it, so a decode run ends with its step in flight."""
        run = self._decode_run
        if run is not None:
            self.scheduler.advance(run, monotonic())
            run.cut()
            wake = self._run_wake
            if wake is not None and not wake.done():
                wake.set_result(False)

    def _fail(self, request_id: str, exc: BaseException) -> None:
        w = self._waiters.get(request_id)
        if w is None:
            return
        for fut in (w.first_token, w.done):
            if not fut.done():
                fut.set_exception(exc)
                # Retrieved by the stream; this keeps asyncio quiet if it never is.
                fut.exception()

    # -- requests ----------------------------------------------------------

    async def _stream(self, request: GenerateRequest) -> AsyncGenerator[TokenDelta | Completion, None]:
        if not isinstance(request.prompt, TokenPrompt):
            raise EngineRequestError(
                f"engine {self.name} is a simulator and has no tokenizer: send a TokenPrompt, not chat messages"
            )
        self._require_running()
        prompt = request.prompt.token_ids
        max_tokens = request.sampling.max_tokens
        meta = request.metadata
        ttl = meta.get("pin_ttl_s")
        program = meta.get("program_id")
        if ttl is not None and not isinstance(ttl, int | float):
            raise EngineRequestError(f"metadata pin_ttl_s must be a number of seconds, got {ttl!r}")
        mode = meta.get(METADATA_PIN_MODE)
        if mode is not None and mode != PIN_MODE_CONTINUUM:
            raise EngineRequestError(f"metadata pin_mode must be {PIN_MODE_CONTINUUM!r} or absent, got {mode!r}")
        rank = meta.get(METADATA_PREEMPT_RANK, 0)
        if not isinstance(rank, int) or isinstance(rank, bool):
            raise EngineRequestError(f"metadata {METADATA_PREEMPT_RANK} must be an int, got {rank!r}")
        tokens = list(prompt)
        tokens += output_ids(self.seed, request.request_id, max_tokens, self.first_token_id, self.vocab_size)
        started = monotonic()
        # The frontend and inter-process path (profile.request_latency_s):
        # half on the way in, half on the way out.
        half_latency = self.profile.request_latency_s / 2
        if half_latency:
            await asyncio.sleep(half_latency)
            self._require_running()
        req = SimRequest(
            request_id=request.request_id,
            prompt_len=len(prompt),
            tokens=tokens,
            max_tokens=max_tokens,
            arrival=started,
            priority=request.priority,
            program_id=None if program is None else str(program),
            pin_ttl_s=None if ttl is None else float(ttl),
            preempt_rank=rank,
        )
        self._interrupt()
        if mode is not None:
            self.scheduler.use_continuum()
        try:
            self.scheduler.add(req)
        except ValueError as exc:
            raise EngineRequestError(f"engine {self.name} rejected request {request.request_id!r}: {exc}") from exc
        loop = asyncio.get_running_loop()
        waiter = _Waiter(loop.create_future(), loop.create_future())
        self._waiters[request.request_id] = waiter
        assert self._wake is not None
        self._wake.set()
        try:
            await waiter.first_token
            assert req.first_token_time is not None
            await self._until(req.first_token_time + half_latency)
            first = req.tokens[req.prompt_len]
            yield TokenDelta("", (first,))
            await waiter.done
            out = tuple(req.output_token_ids)
            assert req.first_token_time is not None and req.finish_time is not None
            await self._until(req.finish_time + half_latency)
            yield Completion(
                request_id=request.request_id,
                engine=self.name,
                model=self.model,
                text="",
                token_ids=out,
                finish_reason="length",
                prompt_tokens=req.prompt_len,
                completion_tokens=len(out),
                cached_tokens=req.cached_tokens or 0,
                ttft_s=req.first_token_time + half_latency - started,
                e2e_s=req.finish_time + half_latency - started,
                queued_s=req.queued_s,
                prompt_token_ids=prompt,
            )
        finally:
            del self._waiters[request.request_id]
            if not req.finished:
                self._interrupt()
                if self.scheduler.abort(request.request_id):
                    self._wake.set()

    @staticmethod
    async def _until(when: float) -> None:
        delay = when - monotonic()
        if delay > 0:
            await asyncio.sleep(delay)

    async def _abort(self, request_id: str) -> None:
        self._interrupt()
        if self.scheduler.abort(request_id):
            self._fail(request_id, EngineRequestError(f"request {request_id!r} was aborted"))

    def _require_running(self) -> None:
        if self._loop_task is None or self._loop_task.done():
            detail = f": {self._failure!r}" if self._failure is not None else ""
            raise EngineUnavailableError(f"simulator {self.name} is not running{detail}")

    async def _check_health(self) -> None:
        self._require_running()

    def _available(self) -> bool:
        return self._loop_task is not None and not self._loop_task.done()

    async def _engine_stats(self) -> dict[str, Any]:
        pins = await self._pin_stats()  # first: it releases the pins that have expired by now
        figures = self._load_figures()
        del figures["kv_blocks"], figures["block_size"], figures["max_num_seqs"]  # load figures, not statistics
        sched = self.scheduler
        stats: dict[str, Any] = {
            **figures,
            "preemptions": sched.preemptions,
            "recomputed_tokens": sched.recomputed_tokens,
            "pins": pins.pins,
            "pin_hits": pins.pin_hits,
            "pins_expired": pins.pins_expired,
            "pins_released_pressure": pins.pins_released_pressure,
        }
        host = sched.host
        if host is not None:
            stats["bytes_offloaded"] = host.bytes_offloaded
            stats["bytes_loaded"] = host.bytes_loaded
            stats["host_hit_tokens"] = host.host_hit_tokens
        return stats

    def _load_figures(self) -> dict[str, Any]:
        self._catch_up()
        sched = self.scheduler
        kv = sched.kv
        return {
            "waiting": sched.num_waiting,
            "running": len(sched.running),
            "kv_usage": kv.num_used / kv.num_blocks,
            "pinned_blocks": kv.pinned_blocks,
            "kv_blocks": kv.num_blocks,
            "block_size": kv.block_size,
            "max_num_seqs": sched.max_num_seqs,
        }

    def _cached_prefix(self, token_ids: Sequence[int]) -> CachedPrefix:
        self._catch_up()
        blocks, prompt_blocks = self.scheduler.cached_prefix_blocks(token_ids)
        return CachedPrefix(blocks, prompt_blocks, self.scheduler.kv.block_size)

    def prefill_cost_s(self, tokens: int) -> float | None:
        """Seconds the profile gives a prefill of ``tokens`` tokens from an empty context.

        In chunks of the step's token budget (``max_num_batched_tokens``),
        each priced as the scheduler prices it, plus one step overhead per
        chunk; the request's own latency and any queueing are not included.
        """
        profile = self.profile
        budget = self.scheduler.max_num_batched_tokens
        total = 0.0
        done = 0
        while done < tokens:
            chunk = min(budget, tokens - done)
            total += profile.step_overhead_s + profile.prefill_chunk_time(done, chunk)
            done += chunk
        return total

    # -- engine control: pins ------------------------------------------------

    async def _set_pin(self, program_id: str, ttl_s: float, value: float | None) -> bool:
        # The plan in flight was made for the old expiries: cut it, as an arrival does.
        self._interrupt()
        pinned = self.scheduler.set_pin(program_id, monotonic() + ttl_s, value)
        if self._wake is not None:
            self._wake.set()
        return pinned

    async def _release_pin(self, program_id: str) -> bool:
        self._interrupt()
        released = self.scheduler.unpin(program_id)
        if released and self._wake is not None:
            self._wake.set()  # freed blocks may admit a waiting request
        return released

    # -- engine control: host-memory tier --------------------------------------

    async def _offload(self, program_id: str) -> bool:
        # Like a pin change: the plan in flight was made for the old blocks.
        self._interrupt()
        moved = self.scheduler.offload(program_id, monotonic())
        if self._wake is not None:
            self._wake.set()
        return moved

    async def _prefetch(self, program_id: str, ttl_s: float) -> bool:
        self._interrupt()
        started = self.scheduler.prefetch(program_id, ttl_s, monotonic())
        if self._wake is not None:
            self._wake.set()
        return started

    async def _pin_stats(self) -> PinStats:
        self._catch_up()
        kv = self.scheduler.kv
        kv.expire_pins(monotonic())
        return PinStats(
            pins=kv.pins,
            pin_hits=kv.pin_hits,
            pins_expired=kv.pins_expired,
            pins_released=kv.pins_released,
            pins_released_pressure=kv.pins_released_pressure,
            pinned_blocks=kv.pinned_blocks,
            pinned_programs=kv.num_pins,
        )


def _resolve(fut: asyncio.Future[bool], value: bool) -> None:
    if not fut.done():
        fut.set_result(value)
