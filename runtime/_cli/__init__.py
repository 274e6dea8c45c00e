"""The ``agentrt`` command line.

agentrt demo                       an agent with tools answers a question on the demo model
agentrt run MODULE:WORKFLOW ...    run any workflow once and print its result (journaled)
agentrt resume ID                  finish a journaled program: its journaled steps are not redone
agentrt runs [show ID | prune]     the programs in the journal
agentrt serve [--model M | --engine URL ...]   the OpenAI-compatible gateway
agentrt models prepare|list        build the local models (no hub access)

demo and run export OpenTelemetry traces when OTEL_EXPORTER_OTLP_ENDPOINT is
set, and write them as OTLP/JSON (loadable in Jaeger's UI) with --traces-out.
Commands that start engines show agentrt's own lines; ``-v`` shows vLLM's
too (:mod:`._quiet`).

One module per command group, each adding its subcommand to the parser that
:mod:`._main` assembles: :mod:`._demo` (with the demo's workflow in
:mod:`._demo_agent`), :mod:`._run` (run, resume), :mod:`._runs`,
:mod:`._serve`, :mod:`._models`.  What several share is in :mod:`._common`
(engine flags, the handler wrapper, the runtime they build), :mod:`._report`
(the text report of a program) and :mod:`._quiet`; none of them imports
:mod:`._main`.

Other packages add subcommands through the entry-point group
``agentrt.commands``: each entry point is a function that takes the
subparsers object, adds its commands, and sets ``handler`` on each (a
function of the parsed arguments returning the exit code).  The replay lab
(:mod:`runtime.replay`) registers ``replay``, ``calibrate``, ``workload`` and
``bench`` that way; the core does not import it.
"""

from __future__ import annotations

from ._main import COMMANDS_ENTRY_POINT_GROUP, main

__all__ = ["COMMANDS_ENTRY_POINT_GROUP", "main"]
