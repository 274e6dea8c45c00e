"""The pin bookkeeping and its control path, without vLLM: a PinTable behind a real control server."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from runtime import EngineRequestError, EngineUnavailableError
from runtime._engines._pin_control import PinControlClient, PinControlServer, control_settings
from runtime._engines._pin_table import PinTable


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def table() -> tuple[PinTable[str], Clock]:
    clock = Clock()
    return PinTable(clock), clock


def test_pressure_takes_the_least_valuable_pin_then_the_latest_program() -> None:
    pins, _ = table()
    for program in ("old", "mid", "new"):
        pins.seen(program)
    for program in ("new", "old", "mid"):  # parked in another order than seen
        pins.park(program, f"{program}-req", blocks=4, tokens=500, ttl_s=60)
    assert pins.set("mid", 60, 2.0)
    # old and new are worth 0; of the two, the program seen last goes first.
    assert pins.take_for_pressure(exclude=None) == "new-req"
    assert pins.take_for_pressure(exclude="old") == "mid-req"
    assert pins.take_for_pressure(exclude="old") is None
    assert pins.take_for_pressure(exclude=None) == "old-req"
    assert pins.pins_released_pressure == 3 and pins.stats()["pinned_programs"] == 0


def test_expiry_and_release_queue_the_parked_request_for_the_engine() -> None:
    pins, clock = table()
    pins.park("a", "a1", blocks=3, tokens=300, ttl_s=1.0)
    pins.park("b", "b1", blocks=2, tokens=200, ttl_s=10.0)
    clock.t += 2
    stats = pins.stats()
    assert stats["pins_expired"] == 1 and stats["pinned_blocks"] == 2 and stats["pinned_programs"] == 1
    assert not pins.set("a", 5, None)  # expired: nothing to change
    assert pins.release("b") and not pins.release("b")
    assert pins.take_released() == ["a1", "b1"] and pins.take_released() == []
    assert pins.pins_released == 1


def test_hard_pins_outlive_expiry_while_their_program_waits_and_the_latest_ending_goes_first() -> None:
    pins, clock = table()
    pins.park("a", "a1", blocks=3, tokens=300, ttl_s=1.0, hard=True)
    pins.park("b", "b1", blocks=3, tokens=300, ttl_s=1.0)  # soft: expires whatever waits
    pins.park("c", "c1", blocks=3, tokens=300, ttl_s=5.0, hard=True)
    clock.t += 2
    assert pins.take_released(waiting={"a", "b"}) == ["b1"]
    assert pins.stats()["pinned_programs"] == 2
    assert pins.take_latest_ending() == "c1"  # ends at 5 s, a at 1 s
    assert pins.take_released(waiting=()) == ["a1"] and pins.take_latest_ending() is None
    assert (pins.pins_expired, pins.pins_released_pressure) == (2, 1)


def test_set_moves_expiry_and_a_new_pin_replaces_the_old() -> None:
    pins, clock = table()
    pins.park("a", "a1", blocks=3, tokens=300, ttl_s=1.0)
    assert pins.set("a", 30, 1.5)
    clock.t += 10
    assert pins.stats()["pinned_programs"] == 1
    assert pins.park("a", "a2", blocks=5, tokens=600, ttl_s=1.0) == "a1"  # the caller frees it
    assert pins.stats()["pinned_blocks"] == 5 and pins.pins == 2


def test_hand_off_counts_a_hit_only_when_the_blocks_were_reused() -> None:
    pins, _ = table()
    pins.park("a", "a1", blocks=4, tokens=512, ttl_s=60)
    assert pins.hand_off("a", cached_tokens=512, block_size=128) == "a1"
    pins.park("b", "b1", blocks=4, tokens=512, ttl_s=60)
    assert pins.hand_off("b", cached_tokens=128, block_size=128) == "b1"  # a quarter: not a hit
    assert pins.hand_off("c", cached_tokens=0, block_size=128) is None
    assert (pins.pin_hits, pins.pins_released) == (1, 1)


def test_drop_and_take_all() -> None:
    pins, _ = table()
    pins.park("a", "a1", blocks=1, tokens=100, ttl_s=60)
    pins.park("b", "b1", blocks=1, tokens=100, ttl_s=60)
    assert pins.drop("a") == "a1" and pins.drop("a") is None
    assert pins.take_all() == ["b1"] and pins.stats()["pinned_programs"] == 0


def test_control_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AGENTRT_PIN_LISTEN", raising=False)
    monkeypatch.delenv("AGENTRT_PIN_TOKEN", raising=False)
    assert control_settings({}) is None
    assert control_settings({"agentrt_pins": {"listen": "unix:/x", "token": "t"}}) == ("unix:/x", "t")
    with pytest.raises(ValueError, match="no token"):
        control_settings({"agentrt_pins": {"listen": "127.0.0.1:1"}})
    monkeypatch.setenv("AGENTRT_PIN_LISTEN", "127.0.0.1:9")
    monkeypatch.setenv("AGENTRT_PIN_TOKEN", "secret")
    assert control_settings(None) == ("127.0.0.1:9", "secret")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _serve(kind: str, tmp_path: Path) -> Iterator[tuple[PinTable[str], str, str]]:
    pins: PinTable[str] = PinTable()
    pins.park("prog/1", "req", blocks=3, tokens=300, ttl_s=60)
    if kind == "unix":
        path = tmp_path / "control.sock"
        listen = address = f"unix:{path}"
    else:
        port = _free_port()
        listen, address = f"127.0.0.1:{port}", f"http://127.0.0.1:{port}"
    server = PinControlServer(pins, listen, "right-token", kv_blocks=40, block_size=16)
    server.start()
    try:
        yield pins, address, listen
    finally:
        server.stop()


@pytest.fixture(params=["unix", "tcp"])
def served(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[PinTable[str], str, str]]:
    """A table with one pin behind a running control server; yields (table, client address, listen address)."""
    yield from _serve(request.param, tmp_path)


@pytest.fixture
def served_tcp(tmp_path: Path) -> Iterator[tuple[PinTable[str], str, str]]:
    yield from _serve("tcp", tmp_path)


async def test_client_drives_the_table(served: tuple[PinTable[str], str, str]) -> None:
    pins, address, _ = served
    client = PinControlClient(address, "right-token", engine="e")
    try:
        assert await client.set_pin("prog/1", 30, 2.0)  # the id is quoted in the path
        stats = await client.stats()
        assert stats["pinned_programs"] == 1 and stats["kv_blocks"] == 40 and stats["block_size"] == 16
        assert client.last_stats is not None and client.last_stats["pinned_blocks"] == 3
        assert not await client.set_pin("nobody", 30, None)
        assert await client.release_pin("prog/1") and not await client.release_pin("prog/1")
        assert pins.take_released() == ["req"]
    finally:
        await client.aclose()


async def test_a_request_without_the_token_changes_nothing(served: tuple[PinTable[str], str, str]) -> None:
    pins, address, _ = served
    for token in ("wrong-token", ""):
        client = PinControlClient(address, token, engine="e")
        try:
            with pytest.raises(EngineRequestError, match="401"):
                await client.release_pin("prog/1")
            with pytest.raises(EngineRequestError, match="401"):
                await client.stats()
        finally:
            await client.aclose()
    if address.startswith("http"):
        async with (
            aiohttp.ClientSession() as session,  # no Authorization header at all
            session.delete(f"{address}/agentrt/v1/pins/prog%2F1") as response,
        ):
            assert response.status == 401
    assert pins.stats()["pinned_programs"] == 1 and pins.pins_released == 0


async def test_a_bad_body_is_refused(served_tcp: tuple[PinTable[str], str, str]) -> None:
    pins, address, _ = served_tcp
    headers = {"Authorization": "Bearer right-token"}
    async with aiohttp.ClientSession(headers=headers) as session:
        for body in ({"ttl_s": "soon"}, {}, {"ttl_s": float("inf")}, [1]):
            async with session.put(f"{address}/agentrt/v1/pins/prog%2F1", json=body) as response:
                assert response.status == 400, body
                assert "ttl_s" in (await response.json())["error"]
    assert pins.stats()["pinned_programs"] == 1


async def test_an_unreachable_control_path_is_unavailable(tmp_path: Path) -> None:
    client = PinControlClient(f"unix:{tmp_path}/none.sock", "t", engine="e")
    try:
        with pytest.raises(EngineUnavailableError, match="unreachable"):
            await client.stats()
    finally:
        await client.aclose()


def test_listening_on_a_bad_address_fails_at_start(tmp_path: Path) -> None:
    server = PinControlServer(PinTable(), f"unix:{tmp_path}/missing-dir/control.sock", "t", kv_blocks=1, block_size=16)
    with pytest.raises(OSError, match="cannot listen"):
        server.start()
