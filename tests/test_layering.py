"""The dependency rule, checked on the code: who may import whom.

- ``workflows`` imports nothing of ours; ``telemetry`` nothing of ours;
  ``toolbridge`` only ``telemetry``; ``runtime`` all three.
- The replay lab (``runtime.replay``) sits above the core: the core never
  imports it, and it (like the benchmarks) uses only public names.
- Importing the four packages loads no module of the lab (and no vLLM).
- The core's modules import one another without a circle (in functions and
  under ``TYPE_CHECKING`` too): a circle means two modules do one job.
- No module reaches into another package's or subpackage's private parts:
  a subpackage is used through its face (``from .._engines import Engine``,
  not ``from .._engines._base import Engine``), private names (``_x``) are
  not imported across packages, and a private attribute is read or set
  only by the module that defines it (``obj._x`` where no class of this
  module has ``_x``: the gateway once read ``ctx._cursor``).
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


def _modules(top: str, root: Path = ROOT) -> Iterator[tuple[Path, str]]:
    """(path, dotted package) of every module under ``root / top``; a package's ``__init__`` is in the package."""
    for path in sorted((root / top).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
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


# -- private reach-ins ------------------------------------------------------------------


def _private_name(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def _reach_in_imports(path: Path, package: str, root: Path, tops: tuple[str, ...]) -> Iterator[str]:
    """Imports in ``path`` of a private module below another package, or of private names across packages."""
    for line, module, names in _imports(path, package):
        if module.split(".")[0] not in tops:
            continue
        is_package = (root / Path(*module.split("."))).is_dir()
        target = module if is_package else module.rpartition(".")[0]  # the package the imported module is in
        own_or_above = package == target or package.startswith(target + ".")
        if not is_package and _private_name(module.rpartition(".")[2]) and not own_or_above:
            yield f"{line}: imports the private module {module} (import it through {target}'s face)"
        private_names = [n for n in names if _private_name(n)]
        if private_names and package != target:
            yield f"{line}: imports private names {private_names} from {module}"


def _defined_private_attributes(tree: ast.Module) -> set[str]:
    """Private names a module defines: its functions and classes, names it assigns, ``self._x``/``cls._x`` it sets."""
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            found.add(node.name)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            found.add(node.id)  # module globals, class attributes, dataclass fields
        elif isinstance(node, ast.alias):
            found.add((node.asname or node.name).split(".")[0])
        elif (
            isinstance(node, ast.Attribute)
            and isinstance(node.ctx, ast.Store)
            and isinstance(node.value, ast.Name)
            and node.value.id in ("self", "cls")
        ):
            found.add(node.attr)
    return {name for name in found if _private_name(name)}


def _reach_in_attributes(path: Path) -> Iterator[str]:
    """``obj._x`` (read or set) where ``obj`` is not ``self``, ``cls`` or ``super()`` and this module has no ``_x``."""
    tree = ast.parse(path.read_text(), str(path))
    own = _defined_private_attributes(tree)
    for node in ast.walk(tree):
        if not isinstance(node, ast.Attribute) or not _private_name(node.attr) or node.attr in own:
            continue
        receiver = node.value
        if isinstance(receiver, ast.Name) and receiver.id in ("self", "cls"):
            continue
        if isinstance(receiver, ast.Call) and isinstance(receiver.func, ast.Name) and receiver.func.id == "super":
            continue  # an override calling the method it overrides (the vLLM scheduler plug-in)
        yield f"{node.lineno}: uses {ast.unparse(node)}, private to another module"


def _reach_ins(root: Path, tops: tuple[str, ...]) -> list[str]:
    return [
        f"{path.relative_to(root)}:{problem}"
        for top in tops
        for path, package in _modules(top, root)
        for problem in [*_reach_in_imports(path, package, root, tops), *_reach_in_attributes(path)]
    ]


def test_no_module_reaches_into_another_packages_private_parts() -> None:
    bad = _reach_ins(ROOT, OURS)
    assert not bad, "\n".join(bad)


def test_the_reach_in_check_finds_planted_ones(tmp_path: Path) -> None:
    """The check above can fail: a small package with one reach-in of each kind, and fine uses beside them."""
    files = {
        "pkg/__init__.py": "from ._core import Context\n",
        "pkg/_core.py": "class Context:\n    def __init__(self):\n        self._cursor = 0\n",
        "pkg/_sub/__init__.py": "from ._impl import thing\n",
        "pkg/_sub/_impl.py": "thing = 1\n_secret = 2\n",
        "pkg/_sub/_friend.py": "from ._impl import _secret, thing\nfrom .._core import Context\n",
        "pkg/_user.py": (
            "from ._sub import thing\n"  # the face: fine
            "from ._sub._impl import thing as again\n"  # planted: a private module of a subpackage
            "from ._sub._friend import _secret\n"  # planted: a private module, and a private name
            "\n\ndef peek(ctx):\n"
            "    ctx._cursor += 1\n"  # planted: another module's private attribute
            "    return super()._private_hook()\n"  # an override's call: fine
        ),
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    found = _reach_ins(tmp_path, ("pkg",))
    assert [f.split(": ")[0] for f in found] == ["pkg/_user.py:2", "pkg/_user.py:3", "pkg/_user.py:3", "pkg/_user.py:7"]
    assert "private module pkg._sub._impl" in found[0] and "private module pkg._sub._friend" in found[1]
    assert "private names ['_secret']" in found[2] and "ctx._cursor" in found[3]


def _import_graph(top: str, root: Path = ROOT) -> dict[str, set[str]]:
    """Module -> the modules of ``top`` it imports (anywhere in it); the lab is left out."""
    modules = {}
    for path, package in _modules(top, root):
        parts = list(path.relative_to(root).with_suffix("").parts)
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        if not name.startswith(f"{top}.replay"):
            modules[name] = (path, package)
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, (path, package) in modules.items():
        for _, module, names in _imports(path, package):
            for target in (module, *(f"{module}.{n}" for n in names)):
                if target in modules and target != name:
                    graph[name].add(target)
    return graph


def _circles(graph: dict[str, set[str]]) -> list[str]:
    circles = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(name: str, path: list[str]) -> None:
        state[name] = 1
        for target in sorted(graph[name]):
            if state.get(target) == 1:
                circles.append(" -> ".join([*path[path.index(target) :], target]))
            elif target not in state:
                visit(target, [*path, target])
        state[name] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    return circles


def test_the_core_has_no_import_circle() -> None:
    circles = _circles(_import_graph("runtime"))
    assert not circles, "\n".join(circles)
