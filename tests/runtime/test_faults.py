"""Faults on the LLM-call and tool paths, with real parts: killed servers, timeouts, cancellation.

The fast tests run a stand-in HTTP server (health probes), scripted engines and real tool
processes in real cgroups.  The tests marked ``server`` share one pool for the module: a real
``vllm serve`` (:class:`ServerEngine`) and an in-process engine on the tiny model, under the
``agentrt`` policy (with a cold-start pin long enough to outlive any test, so that only the
runtime's clean-up can release it).  They run in file order: the timeout and cancellation tests
first, then the server is killed twice (once alone, waited out through its restart; once beside
the in-process engine, and the module closes while it restarts).
"""

from __future__ import annotations

import logging
import os
import signal
import socket
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import psutil  # type: ignore[import-untyped]
import pytest
import pytest_asyncio
from aiohttp import web

from runtime import (
    AgentrtPolicy,
    EngineUnavailableError,
    InProcessEngine,
    LLMCallStarted,
    ProgramCancelledError,
    ProgramHandle,
    RemoteEngine,
    Runtime,
    ServerEngine,
    TokenGenerated,
)
from runtime.testing import ScriptedEngine
from tests.runtime._helpers import engine_core_processes, poll_until, wait_until_idle
from toolbridge import Limits, SandboxDriver, Tool, sandbox_driver, tool
from workflows import Context, StepFailed, ToolCall, step, workflow

#: Context of the pool's engines (the tiny model has 32,768 positions): room for a
#: request that decodes for far longer than any check below waits (16,000 tokens
#: took over 45 s on a fast CPU), so one that was not aborted is still running then.
MAX_MODEL_LEN = 16384
LONG_TOKENS = 16000
#: Output tokens of the programs in flight when a server is killed (its engine stopped
#: beforehand, so none finishes first; their retries decode all of them).
KILL_TOKENS = 256
#: Retry rounds of those programs: enough backoff (0.5 s doubling, at most 10 s each)
#: to wait out a restart of `vllm serve` on a loaded 2-core machine.
RESTART_RETRIES = 40


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


# -- health probes against a stand-in server ---------------------------------


@dataclass
class StandIn:
    """A stand-in for ``vllm serve`` with a /health that answers ``health_status``."""

    url: str
    health_status: int = 200


@pytest_asyncio.fixture
async def stand_in() -> AsyncIterator[StandIn]:
    server = StandIn("")

    async def models(_: web.Request) -> web.Response:
        return web.json_response({"data": [{"id": "stand-in"}]})

    async def health(_: web.Request) -> web.Response:
        return web.Response(status=server.health_status, text="" if server.health_status == 200 else "engine dead")

    app = web.Application()
    app.router.add_get("/v1/models", models)
    app.router.add_get("/health", health)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    server.url = f"http://127.0.0.1:{port}"
    try:
        yield server
    finally:
        await runner.cleanup()


async def test_a_remote_engine_that_fails_its_probe_leaves_dispatch(stand_in: StandIn) -> None:
    engine = RemoteEngine(stand_in.url, connect_timeout_s=5)
    async with engine:
        assert engine.available
        stand_in.health_status = 503
        with pytest.raises(EngineUnavailableError, match="503"):
            await engine.check_health()
        assert not engine.available  # until a check passes again
        stand_in.health_status = 200
        await engine.check_health()
        assert engine.available


async def test_the_health_monitor_notices_a_dead_server_with_no_call_in_flight(
    stand_in: StandIn, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="runtime.health")
    engine = RemoteEngine(stand_in.url, connect_timeout_s=5, name="stand-in")

    async def available_is(value: bool) -> bool:
        return engine.available is value

    async with Runtime([engine], health_interval_s=0.05):
        stand_in.health_status = 500
        await poll_until(lambda: available_is(False))
        await anyio.sleep(0.2)  # several more failed probes: still one log line
        stand_in.health_status = 200
        await poll_until(lambda: available_is(True))
    messages = [r.getMessage() for r in caplog.records if r.name == "runtime.health"]
    assert len(messages) == 2, messages
    assert "stand-in failed its health check" in messages[0] and "engine dead" in messages[0]
    assert "no new calls go to it" in messages[0]
    assert "stand-in is healthy again" in messages[1]


# -- isolated tools: timeouts and cancellation leave no process, no cgroup ----


def hang_tool(limits: Limits) -> Tool:
    """A process-isolated tool that writes its pid to ``pid_file``, then sleeps for ten minutes.

    Made inside a function so that cloudpickle sends it by value: the child does not import
    this test module (and the runtime with it) under the tool's memory limit.
    """

    def hang(pid_file: str) -> str:
        """Write this process's pid to pid_file, then sleep."""
        import os
        import time

        with open(pid_file + ".tmp", "w") as f:
            f.write(str(os.getpid()))
        os.rename(pid_file + ".tmp", pid_file)  # whole, or not there
        time.sleep(600)
        return "woke up"

    return tool(name="hang", limits=limits, isolation="process")(hang)


HANG = hang_tool(Limits(memory="128M", pids=16))
HANG_3S = hang_tool(Limits(memory="128M", pids=16, timeout_s=3))


def call_dirs(driver: SandboxDriver) -> list[Path]:
    """Cgroup directories of this process's tool calls that still exist ([] on the rlimit backend)."""
    if driver.name == "rlimit":
        return []
    bases = list(getattr(driver, "bases", {}).values()) or [driver.base]  # type: ignore[attr-defined]
    prefix = f"{os.getpid()}-"
    return [d for base in bases for d in base.iterdir() if d.is_dir() and d.name.startswith(prefix)]


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


async def tool_pid(pid_file: Path) -> int:
    """The pid the hanging tool wrote, once it runs."""

    path = anyio.Path(pid_file)
    await poll_until(path.exists, timeout_s=60)
    return int(await path.read_text())


@workflow
async def timed_out_tool(ctx: Context, pid_file: str) -> str | None:
    message = await ctx.call_tool(ToolCall("call-1", "hang", {"pid_file": pid_file}), [HANG_3S])
    return message.error_kind


@step(timeout_s=5)
async def tool_step(ctx: Context, pid_file: str) -> str:
    message = await ctx.call_tool(ToolCall("call-1", "hang", {"pid_file": pid_file}), [HANG])
    return message.content


@workflow
async def tool_in_a_timed_step(ctx: Context, pid_file: str) -> str:
    return await tool_step(ctx, pid_file)


async def test_a_timed_out_isolated_tool_leaves_no_process_or_cgroup(tmp_path: Path) -> None:
    driver = sandbox_driver()
    pid_file = tmp_path / "tool.pid"
    async with Runtime([ScriptedEngine()]) as rt:
        assert await rt.run(timed_out_tool, pid_file=str(pid_file)) == "timeout"
    assert not alive(int(pid_file.read_text()))
    assert call_dirs(driver) == []


async def test_a_step_timeout_during_an_isolated_tool_leaves_no_process_or_cgroup(tmp_path: Path) -> None:
    driver = sandbox_driver()
    pid_file = tmp_path / "tool.pid"
    async with Runtime([ScriptedEngine()]) as rt:
        handle = rt.submit(tool_in_a_timed_step, pid_file=str(pid_file))
        pid = await tool_pid(pid_file)
        assert alive(pid)
        if driver.name != "rlimit":
            assert call_dirs(driver), "the call runs in its own cgroup"
        with pytest.raises(StepFailed) as info:
            await handle
    assert isinstance(info.value.__cause__, TimeoutError)
    assert not alive(pid)
    assert call_dirs(driver) == []


# -- a pool of real engines ----------------------------------------------------


@dataclass
class Pool:
    rt: Runtime
    server: ServerEngine
    local: InProcessEngine
    server_pids: list[int] = field(default_factory=list)

    @property
    def engines(self) -> tuple[ServerEngine, InProcessEngine]:
        return self.server, self.local


def group_members(pgids: set[int]) -> list[int]:
    """Live processes in any of the process groups ``pgids``."""
    members = []
    for proc in psutil.process_iter(["status"]):
        try:
            if os.getpgid(proc.pid) in pgids and proc.info["status"] != psutil.STATUS_ZOMBIE:
                members.append(proc.pid)
        except (ProcessLookupError, psutil.NoSuchProcess):
            continue
    return members


@pytest_asyncio.fixture(scope="module")
async def pool(tiny_model: Path) -> AsyncIterator[Pool]:
    before = {p.pid for p in engine_core_processes()}
    server = ServerEngine(
        tiny_model,
        name="server",
        max_model_len=MAX_MODEL_LEN,
        startup_timeout_s=600,
        # On 2 loaded cores a control request can wait for seconds (see test_remote_engine.py).
        connect_timeout_s=60,
    )
    local = InProcessEngine(tiny_model, name="local", max_model_len=MAX_MODEL_LEN, engine_args={"enforce_eager": True})
    # The cold-start pin of a tool lasts ten minutes: gone afterwards only if the runtime releases it.
    policy = AgentrtPolicy(default_ttl_s=600.0)
    async with Runtime([server, local], policy=policy) as rt:
        assert server.pid is not None
        the_pool = Pool(rt, server, local, [server.pid])
        yield the_pool
        if server.pid is not None:
            the_pool.server_pids.append(server.pid)
    # No engine process outlives the runtime, even one closed while its server restarts.
    pgids = set(the_pool.server_pids)

    async def all_gone() -> bool:
        return not group_members(pgids) and all(p.pid in before for p in engine_core_processes())

    await poll_until(all_gone, timeout_s=60)


async def nothing_left(pool: Pool) -> None:
    """No request in flight, none in vLLM's scheduler, no pin, on any engine of the pool."""
    for engine in pool.engines:
        assert engine.in_flight == 0, engine.name
        await wait_until_idle(engine)

        async def unpinned(engine: Any = engine) -> bool:
            return (await engine.pin_stats()).pinned_programs == 0

        await poll_until(unpinned)


@workflow
async def long_call(ctx: Context, timeout_s: float | None = None) -> str:
    reply = await ctx.llm(
        [{"role": "user", "content": "go on"}], max_tokens=LONG_TOKENS, ignore_eos=True, timeout_s=timeout_s
    )
    return reply.text


@step(timeout_s=3)
async def long_step(ctx: Context) -> str:
    reply = await ctx.llm([{"role": "user", "content": "and on"}], max_tokens=LONG_TOKENS, ignore_eos=True)
    return reply.text


@workflow
async def long_call_in_a_step(ctx: Context) -> str:
    return await long_step(ctx)


@workflow
async def call_then_tool(ctx: Context, pid_file: str) -> str:
    await ctx.llm([{"role": "user", "content": "use the tool"}], max_tokens=4)
    message = await ctx.call_tool(ToolCall("call-1", "hang", {"pid_file": pid_file}), [HANG])
    return message.content


async def count_tokens(handle: ProgramHandle[Any], counts: dict[str, int]) -> None:
    async for event in handle.events():
        if isinstance(event, TokenGenerated):
            counts[handle.id] = counts.get(handle.id, 0) + 1


@pytest.mark.engine
@pytest.mark.server
async def test_an_llm_call_timeout_raises_and_aborts_the_request(pool: Pool) -> None:
    tokens: dict[str, int] = {}
    async with anyio.create_task_group() as tg:
        handles = [pool.rt.submit(long_call, timeout_s=4.0) for _ in range(2)]
        for handle in handles:
            tg.start_soon(count_tokens, handle, tokens)
        for handle in handles:
            with pytest.raises(TimeoutError) as info:
                await handle
            (node,) = handle.program.nodes.values()
            message = str(info.value)
            assert handle.id in message and node.id in message and "bound of 4.0 s" in message
    # At least one request was running in the engine when its bound ended it (on a loaded machine the
    # second may still have been queued behind the first).
    assert any(tokens.get(h.id) for h in handles), "no request ran in the engine before the bound ended it"
    await nothing_left(pool)


@pytest.mark.engine
@pytest.mark.server
async def test_a_step_timeout_and_a_cancel_leave_no_request_behind(pool: Pool) -> None:
    tokens: dict[str, int] = {}
    async with anyio.create_task_group() as tg:
        timed = pool.rt.submit(long_call_in_a_step)
        tg.start_soon(count_tokens, timed, tokens)
        with pytest.raises(StepFailed) as info:
            await timed
        assert isinstance(info.value.__cause__, TimeoutError) and tokens.get(timed.id)
        cancelled = pool.rt.submit(long_call)
        async for event in cancelled.events():
            if isinstance(event, TokenGenerated):
                cancelled.cancel()
                break
        with pytest.raises(ProgramCancelledError):
            await cancelled
    await nothing_left(pool)


@pytest.mark.engine
@pytest.mark.server
async def test_a_cancel_during_an_isolated_tool_releases_pin_process_and_cgroup(pool: Pool, tmp_path: Path) -> None:
    driver = sandbox_driver()
    pid_file = tmp_path / "tool.pid"
    handle = pool.rt.submit(call_then_tool, pid_file=str(pid_file))
    pid = await tool_pid(pid_file)
    llm_node = next(n for n in handle.program.nodes.values() if n.kind == "llm")
    engine = pool.rt.engines[[e.name for e in pool.rt.engines].index(str(llm_node.engine))]

    async def pinned() -> bool:
        return (await engine.pin_stats()).pinned_programs == 1

    await poll_until(pinned)  # the policy pinned the program's KV blocks for its tool
    assert alive(pid)
    if driver.name != "rlimit":
        assert call_dirs(driver), "the call runs in its own cgroup"
    handle.cancel()
    with pytest.raises(ProgramCancelledError):
        await handle
    assert not alive(pid)
    assert call_dirs(driver) == []
    await nothing_left(pool)


class Watch:
    """What one program's events say: the engines its LLM call started on, and tokens received."""

    def __init__(self, handle: ProgramHandle[Any]) -> None:
        self.handle = handle
        self.started_on: list[str] = []
        self.tokens = 0

    async def run(self) -> None:
        async for event in self.handle.events():
            if isinstance(event, LLMCallStarted):
                self.started_on.append(event.engine)
            elif isinstance(event, TokenGenerated):
                self.tokens += 1


@workflow
async def talk(ctx: Context, topic: str) -> str:
    reply = await ctx.llm(
        [{"role": "user", "content": f"Tell me about {topic}"}],
        max_tokens=KILL_TOKENS,
        ignore_eos=True,
        retries=RESTART_RETRIES,
    )
    assert reply.usage.completion_tokens == KILL_TOKENS
    return reply.engine


async def kill_server_mid_run(pool: Pool, tg: anyio.abc.TaskGroup, *, after_start: Callable[[], None]) -> list[Watch]:
    """Three programs on the server (the in-process engine drained), then SIGKILL to its group.

    The server's engine processes are stopped (SIGSTOP) before the programs
    start, so no call can finish before the kill, however far this process
    lags behind the server (on a loaded 2-core machine a client once read its
    first token only after the server had written every one).  The API server
    keeps answering, so the calls reach it.  The kill follows the first call
    sent to the server; the watches run in ``tg``; ``after_start`` runs just
    before the kill.  :func:`cut_off` tells which calls it cut off.
    """
    server = pool.server

    async def server_serves() -> bool:
        return server.available and (await server.stats()).healthy

    await poll_until(server_serves, timeout_s=600)  # a restart of an earlier test may still be under way
    pid = server.pid
    assert pid is not None
    engine_processes = psutil.Process(pid).children(recursive=True)
    assert engine_processes, "vllm serve has no engine process"
    for process in engine_processes:
        process.send_signal(signal.SIGSTOP)
    pool.local.drain()
    watches = [Watch(pool.rt.submit(talk, topic=f"topic {i}")) for i in range(3)]
    for watch in watches:
        tg.start_soon(watch.run)

    async def one_sent() -> bool:
        return any(w.started_on for w in watches)

    await poll_until(one_sent, timeout_s=300)
    # Every call that started, started on the server (the in-process engine is drained).
    assert all(w.started_on in ([], [server.name]) for w in watches)
    after_start()
    os.killpg(pid, signal.SIGKILL)  # the API server and its stopped engine processes
    return watches


def cut_off(watches: list[Watch]) -> list[Watch]:
    """The programs whose call the kill cut off: those that needed a second attempt."""
    found = [w for w in watches if only_node(w).attempts >= 2]
    assert found, "the kill cut no call off"
    return found


def only_node(watch: Watch) -> Any:
    (node,) = watch.handle.program.nodes.values()
    return node


async def results(watches: list[Watch]) -> list[str]:
    with anyio.fail_after(900):  # hang guard: a restart on a loaded machine, then the calls
        return [await w.handle for w in watches]


@pytest.mark.engine
@pytest.mark.server
async def test_programs_complete_after_their_only_server_restarts(pool: Pool) -> None:
    server = pool.server
    restarts = server.restarts
    try:
        async with anyio.create_task_group() as tg:
            watches = await kill_server_mid_run(pool, tg, after_start=lambda: None)
            served_by = await results(watches)
    finally:
        pool.local.undrain()
    assert served_by == [server.name] * 3  # the retries waited for the restarted server
    assert server.restarts > restarts and server.pid is not None
    pool.server_pids.append(server.pid)
    for watch in cut_off(watches):
        assert set(watch.started_on) == {server.name}
        assert only_node(watch).attributes["retry_wait_s"] > 0


@pytest.mark.engine
@pytest.mark.server
async def test_programs_fail_over_when_a_server_of_the_pool_is_killed(pool: Pool) -> None:
    server, local = pool.server, pool.local
    taken_out = anyio.Event()

    async def server_out() -> bool:
        return not server.available

    async def watch_dispatch() -> None:
        await poll_until(server_out, timeout_s=60)
        taken_out.set()

    async with anyio.create_task_group() as tg:
        watches = await kill_server_mid_run(pool, tg, after_start=local.undrain)
        # With no call left on it, the health monitor takes the dead server out of dispatch.  Watched from
        # the kill on: the server restarts meanwhile and may be back before the programs end.
        tg.start_soon(watch_dispatch)
        # Every program completes; those not yet streaming at the kill may still have been admitted to the
        # server before its death was noticed, or after its restart.
        assert set(await results(watches)) <= {local.name, server.name}
    assert taken_out.is_set()
    for watch in cut_off(watches):
        # The call the kill cut off went to the engine it had not tried, at once.
        assert watch.started_on[:2] == [server.name, local.name]
        assert "retry_wait_s" not in only_node(watch).attributes
