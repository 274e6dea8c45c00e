"""The OpenAI-compatible gateway (``agentrt serve``): HTTP clients' requests as programs of a Runtime.

``_app`` (the aiohttp server, :class:`Gateway`), ``_protocol`` (the OpenAI
wire format), ``_session_keys`` (which program a request joins),
``_sessions`` (a program driven by requests), ``_calls`` (a request's LLM
call), ``_tenants`` (API keys, fair admission), ``_metrics`` (Prometheus).
The public names are re-exported by :mod:`runtime`, loaded on first use
(importing ``runtime`` does not load the web server).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import load_on_first_use

if TYPE_CHECKING:
    from ._app import DEFAULT_IDLE_TIMEOUT_S, DEFAULT_MAX_TOKENS, DEFAULT_MIN_IDLE_TIMEOUT_S, Gateway
    from ._tenants import Tenant, load_api_keys

__all__ = [
    "DEFAULT_IDLE_TIMEOUT_S",
    "DEFAULT_MAX_TOKENS",
    "DEFAULT_MIN_IDLE_TIMEOUT_S",
    "Gateway",
    "Tenant",
    "load_api_keys",
]

# The gateway loads on first use: importing `runtime` must not import the web server (aiohttp).
__getattr__ = load_on_first_use(
    __name__,
    {
        "DEFAULT_IDLE_TIMEOUT_S": "._app",
        "DEFAULT_MAX_TOKENS": "._app",
        "DEFAULT_MIN_IDLE_TIMEOUT_S": "._app",
        "Gateway": "._app",
        "Tenant": "._tenants",
        "load_api_keys": "._tenants",
    },
)
