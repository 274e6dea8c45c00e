"""The dependency rule, checked on the code: who may import whom.

- ``workflows`` imports nothing of ours; ``telemetry`` nothing of ours;
  ``toolbridge`` only ``telemetry``; ``runtime`` all three.
- The replay lab (``runtime.replay``) sits above the core: the core never
  imports it, and it (like the benchmarks) uses only public names.
- Importing the four packages loads no module of the lab (and no vLLM).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
OURS = ("runtime", "workflows", "toolbridge", "telemetry")


def _imports(path: Path, package: str) -> Iterator[tuple[int, str, list[str]]]:
    """(line, absolute module, imported names) of every import in ``path`` (``package``: its dotted package)."""
    tree = ast.parse(path.read_text(), str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name, []
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            yield node.lineno, module, [a.name for a in node.names]


def _modules(top: str) -> Iterator[tuple[Path, str]]:
    for path in sorted((ROOT / top).rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        package = ".".join(parts if parts[-1] == "__init__" else parts[:-1]).removesuffix(".__init__")
        yield path, package


def _is_private(module: str, names: list[str]) -> bool:
    parts = module.split(".")
    return any(p.startswith("_") for p in parts) or any(n.startswith("_") for n in names)


@pytest.mark.parametrize(
    ("package", "allowed"),
    [("workflows", set()), ("telemetry", set()), ("toolbridge", {"toolbridge", "telemetry"})],
)
def test_lower_packages_import_only_what_the_rule_allows(package: str, allowed: set[str]) -> None:
    allowed = allowed | {package}
    bad = [
        f"{path.relative_to(ROOT)}:{line} imports {module}"
        for path, pkg in _modules(package)
        for line, module, _ in _imports(path, pkg)
        if module.split(".")[0] in OURS and module.split(".")[0] not in allowed
    ]
    assert not bad, "\n".join(bad)


def test_the_core_never_imports_the_lab() -> None:
    bad = [
        f"{path.relative_to(ROOT)}:{line} imports {module}"
        for path, pkg in _modules("runtime")
        if not pkg.startswith("runtime.replay")
        for line, module, _ in _imports(path, pkg)
        if module == "runtime.replay" or module.startswith("runtime.replay.")
    ]
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("where", ["runtime/replay", "benchmarks"])
def test_the_lab_and_the_benchmarks_use_only_public_names(where: str) -> None:
    top, _, sub = where.partition("/")
    bad = []
    for path, pkg in _modules(top):
        if sub and not pkg.startswith(f"{top}.{sub}"):
            continue
        for line, module, names in _imports(path, pkg):
            if module.split(".")[0] not in OURS:
                continue
            inside_lab = module.startswith("runtime.replay") and pkg.startswith("runtime.replay")
            if not inside_lab and _is_private(module, names):
                bad.append(f"{path.relative_to(ROOT)}:{line} imports {module} {names}")
    assert not bad, "\n".join(bad)


def test_importing_the_packages_loads_no_lab_module_and_no_vllm() -> None:
    code = (
        "import sys, runtime, workflows, toolbridge, telemetry; "
        "print(sorted(m for m in sys.modules if m.startswith('runtime.replay') or m.split('.')[0] == 'vllm'))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"
