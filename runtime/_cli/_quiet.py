"""What a command prints of vLLM: agentrt's own lines by default, vLLM's too with ``-v``.

Starting an in-process engine makes vLLM, torch and Triton write a few dozen
lines to stderr (platform notes, deprecations, a NUMA note from C++, a
progress bar), in this process and in the engine-core and worker processes
vLLM spawns.  Much of it is written before vLLM configures its logging, or
by native code, so no logging setting reaches it all.  Two layers:

- :func:`quiet_vllm`, for every command: the environment vLLM and torch read
  (``VLLM_LOGGING_LEVEL=ERROR``, ``TORCH_CPP_LOG_LEVEL=ERROR``,
  ``TQDM_DISABLE``), inherited by the processes they spawn, and this
  process's ``vllm`` logger and warning filters.  Variables the user set
  win.  vLLM's errors still show.
- :func:`started`, around a runtime's start: file descriptor 2, this
  process's and so that of every process started meanwhile (the engines'),
  goes to a log file while the engines start.  If the start fails, the
  log's last lines are shown above the error, with the file's path; if it
  succeeds, whatever the engine processes write later (an error, a crash's
  traceback) is copied to stderr as it comes, and the file is removed when
  the command ends.  Python warnings in the engine processes are ignored
  (``PYTHONWARNINGS``, set while they start).

With ``-v`` neither applies: vLLM logs at its own default level.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import tempfile
import threading
import warnings
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .._runtime import Runtime

__all__ = ["StartupLog", "quiet_vllm", "started", "summary"]

#: Lines of the start-up log shown when the start fails (its last ones, tracebacks without their frames).
TAIL_LINES = 40
#: The prefix of a vLLM log line: ``(EngineCore pid=42) ERROR 12-07 05:46:05 [core.py:1510] ``.
_VLLM_PREFIX = re.compile(r"^(\(\S+ pid=\d+\) )?(DEBUG|INFO|WARNING|ERROR|CRITICAL) \d\d-\d\d [\d:]+ \[[^\]]*\] ?")
#: Seconds between looks for what the engine processes wrote after the start.
_FOLLOW_S = 0.2


def quiet_vllm(verbose: bool) -> None:
    """Set up this process (and what it will spawn) to show vLLM's errors only, unless ``verbose``."""
    # stdout carries results (`agentrt run` prints JSON): vLLM logs go to stderr.
    os.environ.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")
    if verbose:
        return
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")
    os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "ERROR")  # c10's "[W ...] Warning: ..." lines
    os.environ.setdefault("TQDM_DISABLE", "1")
    # vLLM configures its logger when an engine is built; lines logged at import come before that.
    with contextlib.suppress(ValueError):  # a level vLLM does not know either: vLLM says so when it starts
        logging.getLogger("vllm").setLevel(os.environ["VLLM_LOGGING_LEVEL"].upper())
    warnings.filterwarnings("ignore", module=r"(vllm|torch|triton)(\.|$)")


@contextlib.asynccontextmanager
async def started(runtime: Runtime, *, verbose: bool) -> AsyncIterator[Runtime]:
    """``async with runtime``, with the engines' start-up output in a :class:`StartupLog` unless ``verbose``."""
    if verbose:
        async with runtime as rt:
            yield rt
        return
    async with contextlib.AsyncExitStack() as stack:
        log = StartupLog()
        stack.callback(log.close)  # after the runtime closed: its engine processes' last words are copied
        with log.capturing():
            rt = await stack.enter_async_context(runtime)
        yield rt


def summary(lines: list[str]) -> list[str]:
    """``lines`` of a log without the frames of its tracebacks: the messages and exceptions, the causes among them.

    A frame (``File "...", line N, in f``, its source line, its ``^^^`` marks)
    is indented, after vLLM's prefix if it has one; ``Traceback (most recent
    call last):`` heads frames only.
    """
    kept = []
    for line in lines:
        prefix = _VLLM_PREFIX.match(line)
        message = line[prefix.end() :] if prefix else line
        if message.startswith((" ", "\t")) or message.startswith("Traceback (most recent call last)") or not message:
            continue
        kept.append(line)
    return kept


class StartupLog:
    """File descriptor 2 into a log file while engines start; afterwards what their processes add, to stderr."""

    def __init__(self) -> None:
        fd, name = tempfile.mkstemp(prefix="agentrt-engines-", suffix=".log")
        self.path = Path(name)
        self._fd = fd
        self._stderr: int | None = None  # this process's own stderr while fd 2 is the log
        self._follower: threading.Thread | None = None
        self._stop = threading.Event()
        self._keep = False

    @contextlib.contextmanager
    def capturing(self) -> Iterator[None]:
        """Within: fd 2 is the log.  On an error the log's tail is shown and the file kept."""
        sys.stderr.flush()
        self._stderr = os.dup(2)
        # Python warnings of the engine processes: the environment is what a spawned process inherits.
        warn_options = os.environ.get("PYTHONWARNINGS")
        os.environ["PYTHONWARNINGS"] = "ignore"
        os.dup2(self._fd, 2)
        try:
            yield
        except Exception:
            self._restore(warn_options)
            self._keep = True
            self._show_tail()
            raise
        except BaseException:  # cancelled (a signal): the start was not what failed
            self._restore(warn_options)
            raise
        self._restore(warn_options)
        self._follow(os.lseek(self._fd, 0, os.SEEK_END))

    def _restore(self, warn_options: str | None) -> None:
        sys.stderr.flush()
        assert self._stderr is not None
        os.dup2(self._stderr, 2)
        if warn_options is None:
            os.environ.pop("PYTHONWARNINGS", None)
        else:
            os.environ["PYTHONWARNINGS"] = warn_options

    def _show_tail(self) -> None:
        lines = self.path.read_text(errors="replace").splitlines()
        shown = summary(lines)[-TAIL_LINES:]
        if not shown:
            return
        print(
            f"agentrt: what vLLM wrote while the engines started (its last {len(shown)} lines, tracebacks without "
            f"their frames; all {len(lines)} in {self.path}):",
            file=sys.stderr,
        )
        print("\n".join(f"  {line}" for line in shown), file=sys.stderr, flush=True)

    def _follow(self, offset: int) -> None:
        """Copy what is written to the log from ``offset`` on to stderr, until :meth:`close`."""

        def run() -> None:
            position = offset
            while True:
                stopping = self._stop.wait(_FOLLOW_S)
                position = self._copy_from(position)
                if stopping:
                    return

        self._follower = threading.Thread(target=run, name="agentrt engine output", daemon=True)
        self._follower.start()

    def _copy_from(self, position: int) -> int:
        while chunk := os.pread(self._fd, 1 << 16, position):
            os.write(2, chunk)
            position += len(chunk)
        return position

    def close(self) -> None:
        """Copy the last of the engine processes' output, stop following; remove the file unless kept."""
        self._stop.set()
        if self._follower is not None:
            self._follower.join()
        if self._stderr is not None:
            os.close(self._stderr)
            self._stderr = None
        os.close(self._fd)
        if not self._keep:
            self.path.unlink(missing_ok=True)
