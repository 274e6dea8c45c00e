"""The pin control path: a small authenticated HTTP service in the engine-core process, and its client.

The scheduler plug-in (:mod:`._pin_scheduler`) runs :class:`PinControlServer`
on a thread of its own, so the runtime can set, change and release a pin
after the request has finished, and read the pin statistics, whatever the
engine kind: in-process engines listen on a Unix socket in a private
directory, servers on a TCP port.  Every request must carry the shared token
(``Authorization: Bearer <token>``); one without it gets 401 and changes
nothing.

Endpoints (JSON):

- ``GET /agentrt/v1/pins``: the statistics (see :class:`~runtime.PinStats`) and ``kv_blocks`` and ``block_size``;
- ``PUT /agentrt/v1/pins/{program_id}`` with ``{"ttl_s": float, "value": float | null}``:
  ``{"pinned": bool, ...statistics}``;
- ``DELETE /agentrt/v1/pins/{program_id}``: ``{"released": bool, ...statistics}``.

Configuration (read in the engine-core process, first match wins): the
``agentrt_pins`` mapping of vLLM's ``additional_config`` (keys ``listen`` and
``token``), then the environment (``AGENTRT_PIN_LISTEN``,
``AGENTRT_PIN_TOKEN``).  ``listen`` is ``unix:/path`` or ``host:port``.
Without ``listen`` the plug-in still pins what requests ask for
(``pin_ttl_s``) but offers no control path.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import math
import os
import threading
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

import aiohttp
from aiohttp import web

from .._errors import EngineRequestError, EngineUnavailableError
from ._pin_table import PinTable

__all__ = [
    "ENV_LISTEN",
    "ENV_TOKEN",
    "PinControlClient",
    "PinControlServer",
    "control_settings",
]

logger = logging.getLogger("runtime.pins")

ENV_LISTEN = "AGENTRT_PIN_LISTEN"
ENV_TOKEN = "AGENTRT_PIN_TOKEN"
CONFIG_KEY = "agentrt_pins"
_PREFIX = "/agentrt/v1/pins"


def control_settings(additional_config: Any) -> tuple[str, str] | None:
    """The control server's ``(listen, token)`` from vLLM's ``additional_config`` or the environment.

    ``None`` when no ``listen`` address is configured; raises ``ValueError``
    when one is but no token is (a control path without a token would let
    anyone on the network drive the engine's memory).
    """
    section = additional_config.get(CONFIG_KEY) if isinstance(additional_config, Mapping) else None
    section = section if isinstance(section, Mapping) else {}
    listen = section.get("listen") or os.environ.get(ENV_LISTEN)
    if not listen:
        return None
    token = section.get("token") or os.environ.get(ENV_TOKEN)
    if not token:
        raise ValueError(
            f"agentrt pin control is set to listen on {listen!r} but has no token: "
            f"set {ENV_TOKEN} (or additional_config {CONFIG_KEY}.token)"
        )
    return str(listen), str(token)


class PinControlServer:
    """Serves the control endpoints for one :class:`PinTable` on a daemon thread with its own event loop."""

    def __init__(self, table: PinTable[Any], listen: str, token: str, *, kv_blocks: int, block_size: int) -> None:
        self._table = table
        self._listen = listen
        self._token = token.encode()
        self._kv_blocks = kv_blocks
        self._block_size = block_size
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    def start(self) -> None:
        """Listen now; raises ``OSError`` (address in use, bad path) here rather than on the thread."""
        self._thread = threading.Thread(target=self._serve, name="agentrt-pin-control", daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._error is not None:
            raise OSError(f"agentrt pin control cannot listen on {self._listen}: {self._error}") from self._error
        logger.info("agentrt pin control listening on %s", self._listen)

    def stop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None or not loop.is_running():
            return
        asyncio.run_coroutine_threadsafe(self._shutdown(), loop).result(timeout=5)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=5)

    # -- the thread -------------------------------------------------------------

    def _serve(self) -> None:
        loop = self._loop = asyncio.new_event_loop()
        try:
            loop.run_until_complete(self._open())
        except BaseException as exc:  # reported to start()
            self._error = exc
            self._ready.set()
            loop.close()
            return
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            loop.close()

    async def _open(self) -> None:
        app = web.Application(middlewares=[self._authenticate])
        app.router.add_get(_PREFIX, self._get_stats)
        app.router.add_put(_PREFIX + "/{program_id}", self._put_pin)
        app.router.add_delete(_PREFIX + "/{program_id}", self._delete_pin)
        runner = self._runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site: web.BaseSite
        if self._listen.startswith("unix:"):
            site = web.UnixSite(runner, self._listen.removeprefix("unix:"))
        else:
            host, _, port = self._listen.rpartition(":")
            site = web.TCPSite(runner, host.strip("[]") or "127.0.0.1", int(port))
        await site.start()

    async def _shutdown(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    # -- handlers ---------------------------------------------------------------

    @web.middleware
    async def _authenticate(self, request: web.Request, handler: Any) -> web.StreamResponse:
        given = request.headers.get("Authorization", "").removeprefix("Bearer ").encode()
        if not hmac.compare_digest(given, self._token):
            return web.json_response({"error": "missing or wrong agentrt pin-control token"}, status=401)
        response: web.StreamResponse = await handler(request)
        return response

    def _stats(self) -> dict[str, Any]:
        return {**self._table.stats(), "kv_blocks": self._kv_blocks, "block_size": self._block_size}

    async def _get_stats(self, request: web.Request) -> web.Response:
        return web.json_response(self._stats())

    async def _put_pin(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
            ttl_s = float(body["ttl_s"])
            value = body.get("value")
            value = None if value is None else float(value)
            if not math.isfinite(ttl_s) or (value is not None and not math.isfinite(value)):
                raise ValueError("ttl_s and value must be finite numbers")
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            return web.json_response(
                {"error": f'expected {{"ttl_s": seconds, "value": number|null}}: {exc}'}, status=400
            )
        pinned = self._table.set(request.match_info["program_id"], ttl_s, value)
        return web.json_response({"pinned": pinned, **self._stats()})

    async def _delete_pin(self, request: web.Request) -> web.Response:
        released = self._table.release(request.match_info["program_id"])
        return web.json_response({"released": released, **self._stats()})


class PinControlClient:
    """The runtime's side of the control path, for one engine; keeps the latest statistics it was sent.

    ``address`` is ``unix:/path`` or an ``http://host:port`` URL.  Errors:
    :class:`~runtime.EngineUnavailableError` when the control server cannot
    be reached, :class:`~runtime.EngineRequestError` when it refuses (a
    wrong token, a bad request).
    """

    def __init__(self, address: str, token: str, *, engine: str, timeout_s: float = 10.0) -> None:
        self.address = address
        self._token = token
        self._engine = engine
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session: aiohttp.ClientSession | None = None
        #: The statistics of the last answer (``None`` before the first).
        self.last_stats: dict[str, Any] | None = None

    def _base_url(self) -> str:
        return "http://localhost" if self.address.startswith("unix:") else self.address.rstrip("/")

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = (
                aiohttp.UnixConnector(path=self.address.removeprefix("unix:"))
                if self.address.startswith("unix:")
                else None
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                timeout=self._timeout,
                headers={"Authorization": f"Bearer {self._token}"},
            )
        return self._session

    async def _call(self, method: str, path: str, body: Mapping[str, Any] | None = None) -> dict[str, Any]:
        url = self._base_url() + _PREFIX + path
        try:
            async with self._open().request(method, url, json=body) as response:
                try:
                    answer = await response.json(content_type=None)
                except (ValueError, aiohttp.ContentTypeError):
                    answer = {"error": (await response.text())[:200]}
                if response.status != 200:
                    raise EngineRequestError(
                        f"engine {self._engine}: pin control at {self.address} refused {method} {path or '/'} "
                        f"({response.status}): {answer.get('error', answer)}"
                    )
        except (aiohttp.ClientConnectionError, TimeoutError, OSError) as exc:
            raise EngineUnavailableError(
                f"engine {self._engine}: pin control at {self.address} unreachable: {exc or type(exc).__name__}"
            ) from exc
        self.last_stats = answer
        return dict(answer)

    async def set_pin(self, program_id: str, ttl_s: float, value: float | None) -> bool:
        answer = await self._call("PUT", "/" + quote(program_id, safe=""), {"ttl_s": ttl_s, "value": value})
        return bool(answer["pinned"])

    async def release_pin(self, program_id: str) -> bool:
        answer = await self._call("DELETE", "/" + quote(program_id, safe=""))
        return bool(answer["released"])

    async def stats(self) -> dict[str, Any]:
        return await self._call("GET", "")

    async def aclose(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()
