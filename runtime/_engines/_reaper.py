"""The reaper: no engine process outlives the runtime process that started it, even after ``kill -9``.

An engine's processes are not all ours to wait for.  vLLM's ``AsyncLLM``
forks an engine-core process (which may start workers of its own; those
watch the core, but the core does not watch us), and a
:class:`~runtime.ServerEngine` runs ``vllm serve`` in a session of its own.
When the runtime process is killed outright, nothing of it runs to stop
them: they keep their memory and spin a core until someone kills them by
hand.

So each runtime OS process has one small watchdog child, the *reaper*,
started on the first engine start.  The runtime tells it, over a pipe, which
pids to guard; the reaper follows their descendants (psutil, every second)
and, once the runtime process is gone, however it went (it looks every
:data:`TICK_S` seconds), sends SIGTERM to every guarded process tree (and
process group, for a server), SIGKILL to what is left after
:data:`TERM_GRACE_S` seconds, and exits.  Engines release their pids when
they close cleanly.

Why this design:

- It needs no cooperation from the engine processes, so it covers vLLM's
  engine core and ``vllm serve`` alike, and keeps vLLM internals out: an
  in-process engine's pids are the new children of this process that appear
  while ``AsyncLLM`` is built (:class:`NewChildren`; two engines building at
  once may both guard each other's core, which is harmless).
- ``PR_SET_PDEATHSIG`` on the engine core would not do: it fires when the
  parent *thread* exits, and the core is forked from the worker thread that
  builds the engine.  The reaper instead watches its parent *process*: the
  pipe reaching end-of-file, or its parent pid changing (the pipe alone is
  not enough, as vLLM forks the engine core, which inherits the pipe's write
  end and so keeps it open after we die).
- The reaper is a fresh interpreter started with ``posix_spawn`` (no fork of
  a threaded process, no re-import of the user's ``__main__`` as
  multiprocessing would) running this file, which imports only the standard
  library and psutil.  It runs in a session of its own and ignores SIGINT,
  so a Ctrl-C or a signal to the runtime's process group, which may kill the
  runtime, does not kill its reaper with it.
- A guarded pid is checked against its process's creation time, so a pid
  the system reuses after the process exited is never signalled.

What it does not cover: a SIGKILL of the reaper itself (the runtime starts a
new one the next time it guards a pid); processes that leave the guarded
trees between two ticks by double-forking.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import signal
import sys
import threading
import time
from collections import Counter
from types import TracebackType
from typing import Any

__all__ = ["TERM_GRACE_S", "TICK_S", "NewChildren", "Reaper", "reaper"]

logger = logging.getLogger(__name__)

#: Seconds between the reaper's looks at its parent and at the guarded trees.
TICK_S = 0.25
#: Seconds between the reaper's looks for new descendants of the guarded processes.
_FOLLOW_S = 1.0
#: Seconds guarded processes get to exit after SIGTERM before SIGKILL.
TERM_GRACE_S = 5.0
#: Seconds to wait for processes to vanish after SIGKILL.
_KILL_WAIT_S = 2.0
#: Seconds between looks for new children while an engine is built.
_CHILD_POLL_S = 0.2


class Reaper:
    """This process's side of the reaper: guard and release pids; the reaper child starts on the first guard.

    Thread-safe.  Each pid is counted: guarding it twice needs two releases
    (two engines building at once may both see one engine core appear).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[int] = Counter()
        self._groups: set[int] = set()
        self._owner = os.getpid()
        self._pipe: int | None = None
        self._child: int | None = None

    @property
    def pid(self) -> int | None:
        """The reaper process's pid, ``None`` before the first guard."""
        return self._child

    def guard(self, pid: int, *, group: bool = False) -> None:
        """Have ``pid`` and its descendants (and, with ``group``, its process group) killed if this process dies."""
        with self._lock:
            self._counts[pid] += 1
            if group:
                self._groups.add(pid)
            if self._counts[pid] == 1:
                self._send(f"guard {pid} {int(group)}\n")

    def release(self, pid: int) -> None:
        """Undo one :meth:`guard` of ``pid`` (its processes ended cleanly); unknown pids are ignored."""
        with self._lock:
            if self._counts[pid] <= 0:
                return
            self._counts[pid] -= 1
            if self._counts[pid] == 0:
                del self._counts[pid]
                self._groups.discard(pid)
                if self._pipe is not None:
                    self._send(f"release {pid}\n")

    def start(self) -> None:
        """Start the reaper process now if it is not running (else the first :meth:`guard` does)."""
        with self._lock:
            if self._pipe is None:
                self._send("")

    def _send(self, line: str) -> None:
        try:
            if self._pipe is None:
                self._spawn()
                line = self._all_guarded()
            assert self._pipe is not None
            try:
                os.write(self._pipe, line.encode())
            except OSError as exc:
                # The reaper died (killed by hand?): start another and tell it everything guarded now.
                logger.warning("engine process reaper (pid %s) is gone (%s); starting a new one", self._child, exc)
                self._forget_child()
                self._spawn()
                assert self._pipe is not None
                os.write(self._pipe, self._all_guarded().encode())
        except OSError as exc:
            # Engines still run without it; only a kill -9 of this process would leave their processes behind.
            logger.warning(
                "cannot run the engine process reaper (%s): engine processes outlive this process if it is killed",
                exc,
            )
            self._forget_child()

    def _all_guarded(self) -> str:
        return "".join(f"guard {p} {int(p in self._groups)}\n" for p in self._counts)

    def _spawn(self) -> None:
        read_end, write_end = os.pipe()  # both close-on-exec; the child gets the read end as its stdin
        try:
            self._child = os.posix_spawn(
                sys.executable,
                [sys.executable, "-P", os.path.abspath(__file__), str(os.getpid())],
                os.environ,
                file_actions=[
                    (os.POSIX_SPAWN_DUP2, read_end, 0),
                    (os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0),
                ],
                setsid=True,
            )
        except BaseException:
            os.close(write_end)
            raise
        finally:
            os.close(read_end)
        self._pipe = write_end
        logger.debug("engine process reaper started (pid %d)", self._child)

    def _forget_child(self) -> None:
        if self._pipe is not None:
            with contextlib.suppress(OSError):
                os.close(self._pipe)
            self._pipe = None
        if self._child is not None:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(self._child, os.WNOHANG)  # no zombie left behind
            self._child = None


_reaper: Reaper | None = None
_reaper_lock = threading.Lock()


def reaper() -> Reaper:
    """This OS process's :class:`Reaper` (a forked child gets its own, not its parent's)."""
    global _reaper
    with _reaper_lock:
        if _reaper is None or _reaper._owner != os.getpid():
            _reaper = Reaper()
        return _reaper


class NewChildren:
    """Guards every new child process of this process that appears while the ``with`` block runs.

    For code that starts processes we have no handle on (``AsyncLLM``
    forks its engine core): each new child is guarded as soon as it is seen
    (within :data:`_CHILD_POLL_S` seconds), so a ``kill -9`` during the
    minute a build may take leaves nothing behind either.  :attr:`pids` holds
    them afterwards; :meth:`release` hands them back.  A child started
    meanwhile by other code of this process is guarded too: it would not
    outlive the runtime either.
    """

    def __init__(self, reaper_: Reaper | None = None) -> None:
        self._reaper = reaper_ or reaper()
        self.pids: set[int] = set()
        self._before: set[int] = set()
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None

    def __enter__(self) -> NewChildren:
        self._reaper.start()  # before the snapshot: the reaper is a child of ours, and not one to guard
        self._before = _child_pids()
        self._watcher = threading.Thread(target=self._watch, name="agentrt new-children watch", daemon=True)
        self._watcher.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        if self._watcher is not None:
            self._watcher.join()
        self._look()

    def _watch(self) -> None:
        while not self._stop.wait(_CHILD_POLL_S):
            self._look()

    def _look(self) -> None:
        for pid in _child_pids() - self._before - self.pids - {self._reaper.pid}:
            self.pids.add(pid)
            self._reaper.guard(pid)

    def release(self) -> None:
        """Release every pid guarded here (their processes ended cleanly)."""
        for pid in self.pids:
            self._reaper.release(pid)
        self.pids = set()


def _child_pids() -> set[int]:
    import psutil

    return {p.pid for p in psutil.Process().children()}


# -- the reaper process -------------------------------------------------------------


class _Guarded:
    """One guarded pid in the reaper: its process (pinned to its creation time) and the descendants seen."""

    def __init__(self, process: Any, group: bool) -> None:
        self.process = process
        self.group = group
        self.descendants: dict[int, Any] = {}

    def follow(self) -> None:
        import psutil

        with contextlib.suppress(psutil.Error):
            if self.process.is_running():
                for child in self.process.children(recursive=True):
                    self.descendants.setdefault(child.pid, child)
        self.descendants = {pid: p for pid, p in self.descendants.items() if _alive(p)}


def _alive(process: Any) -> bool:
    import psutil

    try:
        # is_running() also says False for a pid reused by another process.
        return bool(process.is_running()) and process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _serve(parent: int) -> None:
    """The reaper's loop: read guard/release lines on stdin until the parent is gone, then kill the guarded trees."""
    import psutil

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    guarded: dict[int, _Guarded] = {}
    pending = b""

    def apply(line: bytes) -> None:
        verb, _, rest = line.decode().partition(" ")
        if verb == "guard":
            pid_text, _, group = rest.partition(" ")
            pid = int(pid_text)
            if pid == os.getpid():
                return
            with contextlib.suppress(psutil.Error):  # already gone
                guarded[pid] = _Guarded(psutil.Process(pid), group.strip() == "1")
        elif verb == "release":
            guarded.pop(int(rest), None)

    def read_lines(timeout_s: float) -> bool:
        """Apply what the parent wrote; False at end-of-file."""
        nonlocal pending
        ready, _, _ = select.select([0], [], [], timeout_s)
        if not ready:
            return True
        data = os.read(0, 65536)
        if not data:
            return False
        *lines, pending = (pending + data).split(b"\n")
        for line in lines:
            if line:
                apply(line)
        return True

    followed = 0.0
    while os.getppid() == parent and read_lines(TICK_S):
        # Following the trees reads all of /proc: once a second is enough for processes that live for minutes.
        if time.monotonic() - followed >= _FOLLOW_S:
            followed = time.monotonic()
            for entry in guarded.values():
                entry.follow()
    # What the parent wrote just before it died is still in the pipe (unless at end-of-file).
    while select.select([0], [], [], 0)[0] and read_lines(0):
        pass
    _reap(list(guarded.values()))


def _reap(guarded: list[_Guarded]) -> None:
    import psutil

    for entry in guarded:
        entry.follow()
    victims = {}
    for entry in guarded:
        if _alive(entry.process):
            victims[entry.process.pid] = entry.process
        victims.update(entry.descendants)
    groups = [entry.process.pid for entry in guarded if entry.group]
    if not victims:
        return
    print(
        f"agentrt reaper: the runtime process is gone; stopping its engine processes {sorted(victims)}",
        file=sys.stderr,
        flush=True,
    )
    for sig, wait_s in ((signal.SIGTERM, TERM_GRACE_S), (signal.SIGKILL, _KILL_WAIT_S)):
        for process in victims.values():
            with contextlib.suppress(psutil.Error):
                process.send_signal(sig)
        for pgid in groups:
            # Only a group that one of our verified processes still belongs to (pgids are pids, reusable).
            if any(_in_group(p, pgid) for p in victims.values()):
                with contextlib.suppress(OSError):
                    os.killpg(pgid, sig)
        _, alive = psutil.wait_procs(list(victims.values()), timeout=wait_s)
        victims = {p.pid: p for p in alive if _alive(p)}
        if not victims:
            return
    print(f"agentrt reaper: processes {sorted(victims)} survive SIGKILL", file=sys.stderr, flush=True)


def _in_group(process: Any, pgid: int) -> bool:
    try:
        return _alive(process) and os.getpgid(process.pid) == pgid
    except OSError:
        return False


if __name__ == "__main__":
    _serve(int(sys.argv[1]))
