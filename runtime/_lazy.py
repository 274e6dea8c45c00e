"""Names a package loads on first use (a PEP 562 module ``__getattr__``), so that importing the package stays light.

The engine backends import vLLM or aiohttp, the gateway the web server.
Their subpackages' faces (:mod:`runtime._engines`, :mod:`runtime._gateway`)
name the module each such name comes from; :mod:`runtime` names only the
faces, so one map says where each lives.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["load_on_first_use"]


def load_on_first_use(package: str, sources: Mapping[str, str], *, shown_in: str | None = None) -> Callable[[str], Any]:
    """A module ``__getattr__`` for ``package`` that imports each name of ``sources`` when it is first asked for.

    ``sources`` maps a name to the module it comes from, relative to
    ``package`` (``"._inprocess"``, or a subpackage's face: ``"._engines"``).
    The object is then kept in ``package``, so each is imported once.
    ``shown_in`` rewrites the object's ``__module__`` to that public module, as
    the package does for the names it imports at once (tracebacks and
    ``repr`` show ``runtime.InProcessEngine``).
    """
    where = dict(sources)

    def __getattr__(name: str) -> Any:
        source = where.get(name)
        if source is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        obj = getattr(importlib.import_module(source, package), name)
        if shown_in is not None:
            obj.__module__ = shown_in
        setattr(sys.modules[package], name, obj)
        return obj

    return __getattr__
