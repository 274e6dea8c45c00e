"""The child side of an isolated tool call; run as a script, stdlib only.

Protocol on stdin: a 4-byte big-endian length and a JSON header
(``sys_path``, ``rlimits``), then a length and a pickle of
``(function, kwargs, is_async)``.  The parent writes the pickle only after it
has moved this process into the call's cgroup, so no tool code (not even a
module imported while unpickling) runs outside it.  The answer, a pickle of
``("ok", value, rusage)`` or ``("error", type_name, message, traceback, rusage, kind)``,
goes to the original stdout; the tool's own prints go to stderr.
"""

import json
import os
import pickle
import resource
import struct
import sys
import traceback
from typing import BinaryIO


def read_frame(stream: BinaryIO) -> bytes:
    head = stream.read(4)
    if len(head) < 4:
        sys.exit(3)
    (size,) = struct.unpack(">I", head)
    data = stream.read(size)
    if len(data) < size:
        sys.exit(3)
    return data


def mapped_bytes() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    return 0


def apply_rlimits(rlimits: dict[str, int]) -> None:
    for name, value in rlimits.items():
        if name == "RLIMIT_AS":
            # The interpreter already maps tens of MB; the limit is on top of that.
            value += mapped_bytes()
        # RLIMIT_CPU: SIGXCPU at the soft limit (reported as a timeout), SIGKILL a second later.
        hard = value + 1 if name == "RLIMIT_CPU" else value
        resource.setrlimit(getattr(resource, name), (value, hard))


def usage() -> dict[str, float]:
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu_s = me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime
    # ru_maxrss is KiB on Linux.
    return {"cpu_s": cpu_s, "max_rss_bytes": max(me.ru_maxrss, kids.ru_maxrss) * 1024.0}


def main() -> None:
    stdin = sys.stdin.buffer
    answer = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # prints of the tool go to stderr, not into the answer
    sys.stdout = sys.stderr
    header = json.loads(read_frame(stdin))
    sys.path[:] = header["sys_path"]
    apply_rlimits(header.get("rlimits", {}))
    try:
        fn, kwargs, is_async = pickle.loads(read_frame(stdin))
        if is_async:
            import asyncio

            value = asyncio.run(fn(**kwargs))
        else:
            value = fn(**kwargs)
        try:
            data = pickle.dumps(("ok", value, usage()))
        except Exception as exc:
            data = pickle.dumps(
                ("error", "UnpicklableResult", f"the result cannot be pickled: {exc}", "", usage(), None)
            )
    except MemoryError:
        data = pickle.dumps(("error", "MemoryError", "out of memory", "", usage(), None))
    except BaseException as exc:  # the child reports everything, SystemExit included
        kind = getattr(exc, "error_kind", None)  # e.g. "exit" from a shell tool's non-zero status
        # Sent as a plain str (str.__str__ drops a subclass such as
        # toolbridge.ErrorKind, whatever its __str__ says), anything else as
        # None: the answer must unpickle in the parent without the tool's classes.
        kind = str.__str__(kind) if isinstance(kind, str) else None
        data = pickle.dumps(("error", type(exc).__name__, str(exc), traceback.format_exc(limit=8), usage(), kind))
    answer.write(data)
    answer.flush()


if __name__ == "__main__":
    main()
