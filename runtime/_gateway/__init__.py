"""The OpenAI-compatible gateway (``agentrt serve``): HTTP clients' requests as programs of a Runtime.

``_app`` (the aiohttp server, :class:`Gateway`), ``_protocol`` (the OpenAI
wire format), ``_session_keys`` (which program a request joins),
``_sessions`` (a program driven by requests), ``_calls`` (a request's LLM
call), ``_tenants`` (API keys, fair admission), ``_metrics`` (Prometheus).
The public names are re-exported by :mod:`runtime`, loaded on first use
(importing ``runtime`` does not load the web server).
"""
