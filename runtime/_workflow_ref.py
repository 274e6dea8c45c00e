"""Where a workflow's function lives, written down and read back (``agentrt run`` targets, journal records).

A reference is ``module:attribute`` for a module that can be imported by
name, or ``path/to/file.py:attribute`` for a script (``__main__``, or a file
loaded by ``agentrt run path/to/file.py:wf``).
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import os
import sys
from pathlib import Path
from typing import Any

from workflows import Workflow

__all__ = ["load_workflow", "workflow_ref"]


def workflow_ref(workflow: Workflow[..., Any]) -> str | None:
    """A reference :func:`load_workflow` can import ``workflow`` from; None for one defined inside a function."""
    fn = workflow.fn
    qualname = getattr(fn, "__qualname__", "")
    if not qualname or "<locals>" in qualname:
        return None
    module_name = getattr(fn, "__module__", None) or "__main__"
    module = sys.modules.get(module_name)
    if module_name != "__main__" and "." not in module_name:
        # A top-level module is importable by name only if it is on the path (not merely loaded from a file).
        if importlib.machinery.PathFinder.find_spec(module_name) is not None:
            return f"{module_name}:{qualname}"
    elif module_name != "__main__":
        return f"{module_name}:{qualname}"
    path = getattr(module, "__file__", None)
    return f"{Path(path).resolve()}:{qualname}" if path else None


def load_workflow(target: str) -> Workflow[..., Any]:
    """The workflow at ``target`` (``module:attribute`` or ``path/to/file.py:attribute``).

    Raises ``LookupError`` (no such module, file or attribute) or
    ``TypeError`` (not a ``@workflow``) with a message that says which.
    """
    module_name, sep, attr = target.rpartition(":")
    if not sep or not module_name or not attr:
        raise LookupError(f"expected MODULE:WORKFLOW (or path/to/file.py:WORKFLOW), got {target!r}")
    if module_name.endswith(".py") or os.sep in module_name:
        path = Path(module_name).resolve()
        if not path.is_file():
            raise LookupError(f"no such file {path}")
        loaded = next((m for m in list(sys.modules.values()) if getattr(m, "__file__", None) == str(path)), None)
        if loaded is None:
            spec = importlib.util.spec_from_file_location(path.stem, path)
            assert spec is not None and spec.loader is not None
            loaded = importlib.util.module_from_spec(spec)
            sys.modules[path.stem] = loaded
            spec.loader.exec_module(loaded)
        module = loaded
    else:
        if os.getcwd() not in sys.path:
            sys.path.insert(0, os.getcwd())
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise LookupError(f"cannot import {module_name!r}: {exc}") from exc
    found: Any = module
    for part in attr.split("."):
        try:
            found = getattr(found, part)
        except AttributeError:
            raise LookupError(f"module {module_name!r} has no attribute {attr!r}") from None
    if not isinstance(found, Workflow):
        raise TypeError(f"{target} is not a @workflow (got {type(found).__name__})")
    return found
