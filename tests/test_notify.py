"""cdnreq.notify against real AF_UNIX datagram sockets."""

from __future__ import annotations

import asyncio
import logging
import os
import select
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from cdnreq.notify import Notifier, watchdog_interval_s, watchdog_loop

DEADLINE_S = 5.0


@pytest.fixture
def receiver(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    """A datagram socket bound in tmp_path, named by $NOTIFY_SOCKET."""
    path = tmp_path / "notify"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(DEADLINE_S)
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    try:
        yield sock
    finally:
        sock.close()


@pytest.fixture
def abstract_receiver(monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    """A datagram socket in the abstract namespace, named ``@...`` by $NOTIFY_SOCKET."""
    name = f"cdnreq-test-{os.getpid()}-{uuid.uuid4().hex}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.settimeout(DEADLINE_S)
    monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
    try:
        yield sock
    finally:
        sock.close()


def receive(sock: socket.socket) -> str:
    return sock.recv(4096).decode()


def nothing_pending(sock: socket.socket) -> bool:
    """True if no datagram is queued; consumes one if there is."""
    readable, _, _ = select.select([sock], [], [], 0)
    if not readable:
        return True
    sock.recv(4096)
    return False


def test_path_socket_receives_each_notification_exactly(receiver):
    notifier = Notifier()
    assert notifier.enabled
    assert notifier.ready() is True
    assert receive(receiver) == "READY=1"
    assert notifier.status("tick 7: 3 requested") is True
    assert receive(receiver) == "STATUS=tick 7: 3 requested"
    assert notifier.watchdog() is True
    assert receive(receiver) == "WATCHDOG=1"
    assert notifier.stopping() is True
    assert receive(receiver) == "STOPPING=1"
    assert nothing_pending(receiver)
    notifier.close()


def test_abstract_socket_receives_notifications(abstract_receiver):
    notifier = Notifier()
    assert notifier.ready()
    assert receive(abstract_receiver) == "READY=1"
    assert notifier.watchdog()
    assert receive(abstract_receiver) == "WATCHDOG=1"
    assert notifier.status("ok")
    assert receive(abstract_receiver) == "STATUS=ok"


def test_send_puts_fields_in_one_datagram(receiver):
    notifier = Notifier()
    assert notifier.send(READY=1, STATUS="up\nand running")
    assert receive(receiver) == "READY=1\nSTATUS=up and running"
    assert notifier.send_raw("EXTEND_TIMEOUT_USEC=5000000")
    assert receive(receiver) == "EXTEND_TIMEOUT_USEC=5000000"
    assert notifier.reloading()
    lines = receive(receiver).split("\n")
    assert lines[0] == "RELOADING=1" and lines[1].startswith("MONOTONIC_USEC=")
    assert int(lines[1].split("=", 1)[1]) > 0
    assert nothing_pending(receiver)


def test_status_is_one_line_and_truncated(receiver):
    notifier = Notifier()
    notifier.status("line one\nline two\r\nthree")
    assert receive(receiver) == "STATUS=line one line two three"
    notifier.status("x" * 5000)
    text = receive(receiver)
    assert text.startswith("STATUS=x") and len(text) <= len("STATUS=") + 400


def test_without_notify_socket_everything_is_a_no_op(monkeypatch):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    notifier = Notifier()
    assert not notifier.enabled
    assert notifier.ready() is False
    assert notifier.status("x") is False
    assert notifier.watchdog() is False
    assert notifier.stopping() is False
    assert notifier.send_raw("READY=1") is False


def test_environment_is_read_at_construction(receiver, monkeypatch):
    notifier = Notifier()
    monkeypatch.delenv("NOTIFY_SOCKET")
    assert notifier.ready()
    assert receive(receiver) == "READY=1"
    assert Notifier().ready() is False


def test_unsupported_address_is_ignored(monkeypatch):
    monkeypatch.setenv("NOTIFY_SOCKET", "vsock:2:1234")
    assert Notifier().ready() is False


def test_missing_socket_does_not_raise_and_warns_once(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "gone"))
    notifier = Notifier()
    with caplog.at_level(logging.DEBUG, logger="cdnreq.notify"):
        assert notifier.ready() is False
        assert notifier.watchdog() is False
        assert notifier.status("x") is False
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1


def test_socket_that_comes_back_works_again(tmp_path, monkeypatch):
    path = tmp_path / "notify"
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    notifier = Notifier()
    assert notifier.ready() is False
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(DEADLINE_S)
    try:
        assert notifier.watchdog() is True
        assert receive(sock) == "WATCHDOG=1"
    finally:
        sock.close()


def test_full_receiver_does_not_block_or_raise(receiver):
    """A receiver that never reads: sends fail with EAGAIN instead of blocking."""
    notifier = Notifier()
    started = time.monotonic()
    results = [notifier.send_raw("STATUS=" + "x" * 1000) for _ in range(5000)]
    assert time.monotonic() - started < DEADLINE_S
    assert results[0] is True and results[-1] is False


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, None),
        ({"WATCHDOG_USEC": "10000000"}, 5.0),
        ({"WATCHDOG_USEC": "3000000", "WATCHDOG_PID": "{pid}"}, 1.5),
        ({"WATCHDOG_USEC": "3000000", "WATCHDOG_PID": "{other}"}, None),
        ({"WATCHDOG_USEC": "3000000", "WATCHDOG_PID": "nope"}, None),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "-5"}, None),
        ({"WATCHDOG_USEC": "ten"}, None),
        ({"WATCHDOG_USEC": ""}, None),
        ({"WATCHDOG_PID": "{pid}"}, None),
    ],
)
def test_watchdog_interval(env, expected, monkeypatch):
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    for key, text in env.items():
        monkeypatch.setenv(key, text.format(pid=os.getpid(), other=os.getpid() + 1))
    assert watchdog_interval_s() == expected


async def collect(sock: socket.socket, count: int) -> list[str]:
    """The next `count` datagrams, failing if they do not arrive within DEADLINE_S."""
    loop = asyncio.get_running_loop()
    sock.setblocking(False)
    received: list[str] = []
    async with asyncio.timeout(DEADLINE_S):
        while len(received) < count:
            received.append((await loop.sock_recv(sock, 4096)).decode())
    return received


async def test_watchdog_loop_pings_until_cancelled(receiver):
    notifier = Notifier()
    task = asyncio.create_task(watchdog_loop(notifier, 0.01, lambda: True))
    try:
        assert await collect(receiver, 2) == ["WATCHDOG=1", "WATCHDOG=1"]
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert task.cancelled()
    # Pings are sent synchronously, so everything the task sent is queued by now.
    while not nothing_pending(receiver):
        pass
    for _ in range(10):
        await asyncio.sleep(0)
    assert nothing_pending(receiver)


async def test_watchdog_loop_stops_pinging_while_not_alive(receiver):
    notifier = Notifier()
    state = {"alive": True, "checks": 0}

    def alive() -> bool:
        state["checks"] += 1
        return state["alive"]

    task = asyncio.create_task(watchdog_loop(notifier, 0.01, alive))
    try:
        assert await collect(receiver, 1) == ["WATCHDOG=1"]
        state["alive"] = False
        # Pings are sent right after the check, synchronously: those decided
        # while alive are already queued. Drop them, then watch three checks.
        while not nothing_pending(receiver):
            pass
        checks = state["checks"]
        async with asyncio.timeout(DEADLINE_S):
            while state["checks"] < checks + 3:
                await asyncio.sleep(0.005)
        assert nothing_pending(receiver)
        state["alive"] = True
        assert await collect(receiver, 1) == ["WATCHDOG=1"]
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_watchdog_loop_returns_at_once_without_socket(monkeypatch):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    async with asyncio.timeout(DEADLINE_S):
        await watchdog_loop(Notifier(), 0.01, lambda: True)


async def test_watchdog_loop_survives_a_failing_liveness_check(receiver):
    notifier = Notifier()
    calls = {"n": 0}

    def alive() -> bool:
        calls["n"] += 1
        if calls["n"] <= 3:
            raise RuntimeError("check broke")
        return True

    task = asyncio.create_task(watchdog_loop(notifier, 0.01, alive))
    try:
        assert await collect(receiver, 1) == ["WATCHDOG=1"]
        assert calls["n"] >= 4  # no ping for the three broken checks
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
