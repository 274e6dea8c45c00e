"""Each package's public surface: everything in __all__ exists and shows its public module."""

from __future__ import annotations

import importlib

import pytest


@pytest.mark.parametrize("package", ["runtime", "runtime.replay", "workflows", "toolbridge", "telemetry"])
def test_all_names_resolve_and_are_sorted(package: str) -> None:
    module = importlib.import_module(package)
    names = list(module.__all__)
    for name in names:
        obj = getattr(module, name)
        if isinstance(obj, type):
            assert obj.__module__ == package, f"{package}.{name} shows module {obj.__module__}"
    assert module.__doc__ and "Layering" in module.__doc__
