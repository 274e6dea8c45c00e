"""The cgroup v2 backend against a fake cgroup tree in a temporary directory.

The fake tree is plain files: the test plays the kernel's part (accounting
files, emptying cgroup.procs after cgroup.kill).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import anyio
import pytest

from toolbridge import CgroupV2Driver, Limits, select_driver


def _fake_root(tmp_path: Path, controllers: str = "cpuset cpu io memory pids") -> Path:
    (tmp_path / "cgroup.controllers").write_text(controllers + "\n")
    (tmp_path / "cgroup.subtree_control").write_text("")
    (tmp_path / "cgroup.procs").write_text("")
    return tmp_path


def test_limits_are_written(tmp_path: Path) -> None:
    driver = CgroupV2Driver(_fake_root(tmp_path))
    assert (tmp_path / "cgroup.subtree_control").read_text() == "+memory +cpu +pids"
    assert (tmp_path / "agentrt" / "cgroup.subtree_control").read_text() == "+memory +cpu +pids"
    sandbox = driver.create("call", Limits(memory="64M", memory_high="48M", cpu=0.5, pids=32, timeout_s=10))
    d = tmp_path / "agentrt" / "call"
    assert (d / "memory.max").read_text() == str(64 << 20)
    assert (d / "memory.high").read_text() == str(48 << 20)
    assert (d / "cpu.max").read_text() == "50000 100000"
    assert (d / "pids.max").read_text() == "32"
    sandbox.attach(4242)
    assert (d / "cgroup.procs").read_text() == "4242"
    assert sandbox.pids() == [4242]


def test_unlimited_writes_nothing(tmp_path: Path) -> None:
    driver = CgroupV2Driver(_fake_root(tmp_path))
    driver.create("free", Limits())
    assert sorted(p.name for p in (tmp_path / "agentrt" / "free").iterdir()) == []


def test_stats_from_accounting_files(tmp_path: Path) -> None:
    driver = CgroupV2Driver(_fake_root(tmp_path))
    sandbox = driver.create("call", Limits(memory="64M"))
    d = tmp_path / "agentrt" / "call"
    (d / "memory.peak").write_text("67108864\n")
    (d / "memory.events").write_text("low 0\nhigh 12\nmax 40\noom 1\noom_kill 1\noom_group_kill 0\n")
    (d / "pids.events").write_text("max 3\n")
    (d / "cpu.stat").write_text("usage_usec 1500000\nuser_usec 1000000\nsystem_usec 500000\n")
    stats = sandbox.stats()
    assert stats.peak_memory_bytes == 64 << 20 and stats.oom_killed and stats.pids_limited
    assert stats.cpu_s == pytest.approx(1.5)
    quiet = driver.create("quiet", Limits())
    assert quiet.stats().peak_memory_bytes is None and not quiet.stats().oom_killed


def test_missing_controllers_refused(tmp_path: Path) -> None:
    with pytest.raises(OSError, match="controllers"):
        CgroupV2Driver(_fake_root(tmp_path, controllers="cpu io"))


def test_selected_when_unified_hierarchy_has_memory(tmp_path: Path) -> None:
    _fake_root(tmp_path)
    assert select_driver(mount=tmp_path).name == "cgroup2"
    assert select_driver("rlimit").name == "rlimit"
    with pytest.raises(ValueError, match="unknown sandbox backend"):
        select_driver("cgroup3")


async def test_kill_uses_cgroup_kill_and_remove_deletes(tmp_path: Path) -> None:
    driver = CgroupV2Driver(_fake_root(tmp_path))
    sandbox = driver.create("call", Limits())
    d = tmp_path / "agentrt" / "call"
    (d / "cgroup.kill").write_text("0")
    victim = subprocess.Popen(["sleep", "60"])  # noqa: ASYNC220 - a plain child to kill, started once
    try:
        sandbox.attach(victim.pid)

        async def kernel() -> None:
            # What the kernel does on "1" > cgroup.kill: kill the tree, empty cgroup.procs.
            while (d / "cgroup.kill").read_text() != "1":  # noqa: ASYNC110 - polling a file, not an event
                await anyio.sleep(0.001)
            victim.kill()
            (d / "cgroup.procs").write_text("")

        async with anyio.create_task_group() as tg:
            tg.start_soon(kernel)
            with anyio.fail_after(2):
                await sandbox.kill()
        assert victim.wait(timeout=5) != 0
    finally:
        victim.kill()
        victim.wait()
    for f in d.iterdir():  # a real cgroupfs directory is removable with its control files
        f.unlink()
    await sandbox.remove()
    assert not d.exists()
    driver.close()
    assert not (tmp_path / "agentrt").exists() or list((tmp_path / "agentrt").iterdir())


def test_stale_call_cgroups_of_dead_runtimes_are_swept(tmp_path: Path) -> None:
    _fake_root(tmp_path)
    stale = tmp_path / "agentrt" / "999999999-1-crunch"  # pid beyond pid_max: never alive
    stale.mkdir(parents=True)
    live = tmp_path / "agentrt" / "1-1-init"  # pid 1 is alive
    live.mkdir()
    CgroupV2Driver(tmp_path)
    assert not stale.exists() and live.exists()
