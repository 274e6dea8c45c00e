"""Choosing a sandbox backend by name: ``cgroup2|cgroup1|rlimit``, with ``v2``/``v1`` as aliases."""

from __future__ import annotations

from pathlib import Path

import pytest

from toolbridge import CgroupV2Driver, RlimitDriver, select_driver


def _fake_v2_root(tmp_path: Path) -> Path:
    """A cgroup v2 root as plain files (see test_cgroup_v2.py)."""
    (tmp_path / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")
    (tmp_path / "cgroup.subtree_control").write_text("")
    (tmp_path / "cgroup.procs").write_text("")
    return tmp_path


def _outcome(name: str, mount: Path = Path("/sys/fs/cgroup")) -> tuple[object, str]:
    """What ``select_driver(name)`` gives on this host: the backend built, or the OSError it raised."""
    try:
        driver = select_driver(name, mount=mount)
    except OSError as exc:
        return OSError, str(exc)
    return type(driver), driver.describe()


def test_v2_alias_on_a_fake_tree(tmp_path: Path) -> None:
    root = _fake_v2_root(tmp_path)
    assert isinstance(select_driver("v2", mount=root), CgroupV2Driver)
    assert _outcome("v2", root) == _outcome("cgroup2", root)


@pytest.mark.parametrize(("alias", "name"), [("v1", "cgroup1"), ("v2", "cgroup2")])
def test_aliases_on_this_host(alias: str, name: str) -> None:
    # This host has cgroup v1 only: v1 builds the v1 backend (or fails alike
    # where it is not writable), v2 raises the same OSError as cgroup2.
    assert _outcome(alias) == _outcome(name)


def test_environment_names(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    root = _fake_v2_root(tmp_path)
    monkeypatch.setenv("AGENTRT_SANDBOX", "v2")
    assert select_driver(mount=root).name == "cgroup2"
    monkeypatch.setenv("AGENTRT_SANDBOX", "rlimit")
    assert isinstance(select_driver(mount=root), RlimitDriver)


def test_unknown_name_lists_the_names() -> None:
    with pytest.raises(ValueError, match=r"'v3'; use cgroup2 \(v2\), cgroup1 \(v1\) or rlimit"):
        select_driver("v3")
