"""``agentrt serve``: the OpenAI-compatible gateway on the command line.

agentrt serve [--model M | --engine URL ...] [--host H] [--port P] [--policy P]
              [--api-key KEY[=TENANT] ... | --api-keys-file FILE] [--max-in-flight N]

Starts the engines (in-process vLLM engines serving ``--model``, or the
running vLLM servers given by ``--engine``), then serves them until
SIGINT/SIGTERM.  See docs/gateway.md.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ._common import build_runtime, engine_options, traced
from ._quiet import started

__all__ = ["add_serve_command"]


def _api_key(text: str) -> tuple[str, str | None]:
    key, sep, tenant = text.partition("=")
    if not key or (sep and not tenant):
        raise argparse.ArgumentTypeError(f"--api-key expects KEY or KEY=TENANT, got {text!r}")
    return key, tenant or None


def add_serve_command(sub: Any, default_model: str) -> None:
    """Add ``serve`` to the ``agentrt`` subcommands."""
    from .._gateway import DEFAULT_IDLE_TIMEOUT_S, DEFAULT_MAX_TOKENS, DEFAULT_MIN_IDLE_TIMEOUT_S

    serve = sub.add_parser(
        "serve",
        help="serve the engines over the OpenAI API: unmodified agent clients get pins, urgency and routing",
    )
    engine_options(serve, default_model)
    serve.set_defaults(policy="agentrt")  # the gateway is for program-aware serving
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8000, help="port to listen on (default 8000; 0: any free port)")
    serve.add_argument("--served-model-name", help="the model id clients send (default: the model's name)")
    serve.add_argument(
        "--api-key",
        action="append",
        type=_api_key,
        metavar="KEY[=TENANT]",
        help="accept this bearer token (repeatable); TENANT names its tenant (default: 'default')",
    )
    serve.add_argument(
        "--api-keys-file",
        metavar="FILE",
        help='JSON file mapping keys to tenants: {"KEY": "alice", "KEY2": {"tenant": "bob", "max_concurrency": 8}}',
    )
    serve.add_argument(
        "--max-in-flight",
        type=int,
        help="requests let through to the engines at once; the rest wait, fairly across tenants (default: no bound)",
    )
    serve.add_argument(
        "--idle-timeout",
        type=float,
        default=DEFAULT_IDLE_TIMEOUT_S,
        metavar="SECONDS",
        help=(
            "the longest a session waits, idle, for its next request; each session's own timeout follows its "
            f"client's tools and pauses (default {DEFAULT_IDLE_TIMEOUT_S:g})"
        ),
    )
    serve.add_argument(
        "--min-idle-timeout",
        type=float,
        default=DEFAULT_MIN_IDLE_TIMEOUT_S,
        metavar="SECONDS",
        help=f"the shortest a session waits, idle (default {DEFAULT_MIN_IDLE_TIMEOUT_S:g}; = --idle-timeout: fixed)",
    )
    serve.add_argument(
        "--default-max-tokens",
        type=int,
        default=DEFAULT_MAX_TOKENS,
        help=f"max_tokens of chat requests that set none (default {DEFAULT_MAX_TOKENS})",
    )
    serve.add_argument(
        "--tool-format",
        choices=("auto", "native", "json"),
        default="auto",
        help="how tools reach the model: its chat template's native calls, agentrt's JSON protocol, or auto",
    )
    serve.add_argument("--tokenizer", metavar="DIR", help="tokenizer for /v1/completions string prompts")
    serve.add_argument(
        "--max-model-len", type=int, default=4096, help="context length of in-process engines (default 4096)"
    )
    serve.set_defaults(handler=traced(_serve))


def _api_keys(args: argparse.Namespace) -> dict[str, Any]:
    from .._gateway import Tenant, load_api_keys

    keys: dict[str, Tenant] = {}
    if args.api_keys_file:
        try:
            keys.update(load_api_keys(args.api_keys_file))
        except ValueError as exc:
            raise SystemExit(f"agentrt serve: {exc}") from None
    for key, tenant in args.api_key or ():
        keys[key] = Tenant(tenant or "default")
    return keys


async def _serve(args: argparse.Namespace) -> int:
    import anyio

    from .._gateway import Gateway

    keys = _api_keys(args)
    async with (
        started(build_runtime(args, max_model_len=args.max_model_len), verbose=args.verbose) as rt,
        Gateway(
            rt,
            host=args.host,
            port=args.port,
            model_name=args.served_model_name,
            api_keys=keys,
            max_in_flight=args.max_in_flight,
            idle_timeout_s=args.idle_timeout,
            min_idle_timeout_s=args.min_idle_timeout,
            default_max_tokens=args.default_max_tokens,
            tool_format=args.tool_format,
            tokenizer=args.tokenizer,
        ) as gateway,
    ):
        access = f"{len(keys)} API key(s)" if keys else "no API key (open)"
        print(
            f"agentrt serve: {gateway.url}/v1 serves {gateway.model_name!r} on {len(rt.engines)} engine(s), "
            f"policy {args.policy}, {access}; Ctrl-C stops",
            file=sys.stderr,
            flush=True,
        )
        await anyio.sleep_forever()
    return 0
