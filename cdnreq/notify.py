"""The systemd notification protocol (sd_notify), without a dependency.

systemd passes the address of a datagram socket in $NOTIFY_SOCKET; the
service sends it newline-separated ``KEY=value`` assignments: ``READY=1``
once serving, ``STATUS=...`` for `systemctl status`, ``STOPPING=1`` on the
way out and ``WATCHDOG=1`` at least every $WATCHDOG_USEC when the unit has
WatchdogSec=. Outside systemd nothing is set and every call is a no-op.

A broken notify socket must never take the daemon down: send errors are
swallowed, logged at warning level once, then at debug level.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Callable, Mapping

_log = logging.getLogger(__name__)

STATUS_MAX = 400


class Notifier:
    """Sends notifications to the socket named by $NOTIFY_SOCKET at construction."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        self.address: str | bytes | None = _address(env.get("NOTIFY_SOCKET", ""))
        self._socket: socket.socket | None = None
        self._warned = False

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send_raw(self, text: str) -> bool:
        """Send `text` as one datagram; True if the kernel took it."""
        if self.address is None:
            return False
        try:
            if self._socket is None:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                sock.setblocking(False)
                self._socket = sock
            self._socket.sendto(text.encode("utf-8", "replace"), self.address)
        except (OSError, ValueError) as exc:
            self._failed(exc)
            return False
        return True

    def send(self, **fields: object) -> bool:
        """Send ``KEY=value`` lines in one datagram (newlines in values become spaces)."""
        if not fields:
            return False
        lines = (f"{key}={_one_line(str(value))}" for key, value in fields.items())
        return self.send_raw("\n".join(lines))

    def ready(self) -> bool:
        return self.send(READY=1)

    def status(self, text: str) -> bool:
        return self.send(STATUS=_one_line(text)[:STATUS_MAX])

    def reloading(self) -> bool:
        """RELOADING=1 with the MONOTONIC_USEC Type=notify-reload asks for; send ready() after."""
        return self.send(RELOADING=1, MONOTONIC_USEC=time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000)

    def stopping(self) -> bool:
        return self.send(STOPPING=1)

    def watchdog(self) -> bool:
        return self.send(WATCHDOG=1)

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None

    def _failed(self, exc: BaseException) -> None:
        # A closed or replaced socket may work again with a fresh one.
        self.close()
        if self._warned:
            _log.debug("systemd notification not sent: %s", exc)
        else:
            self._warned = True
            _log.warning(
                "systemd notification to %r not sent: %s (further failures logged at debug level)",
                os.fsdecode(self.address) if self.address is not None else None,
                exc,
            )


def _address(value: str) -> str | bytes | None:
    if value.startswith("/"):
        return value
    if value.startswith("@") and len(value) > 1:
        return b"\0" + os.fsencode(value[1:])
    if value:
        _log.warning("NOTIFY_SOCKET=%r is not supported (not a path nor @abstract); ignored", value)
    return None


def _one_line(text: str) -> str:
    return text.replace("\r\n", " ").replace("\n", " ").replace("\r", " ")


def watchdog_interval_s(environ: Mapping[str, str] | None = None) -> float | None:
    """How often to send WATCHDOG=1: half of $WATCHDOG_USEC, or None.

    None when the watchdog is off, the value is not a positive integer, or
    $WATCHDOG_PID is set to another process (the variable was inherited).
    """
    env = os.environ if environ is None else environ
    pid = env.get("WATCHDOG_PID")
    if pid is not None and pid.strip() != "":
        try:
            if int(pid) != os.getpid():
                return None
        except ValueError:
            return None
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    if usec <= 0:
        return None
    return usec / 1_000_000 / 2


async def watchdog_loop(
    notifier: Notifier, interval_s: float, alive: Callable[[], bool]
) -> None:
    """Send WATCHDOG=1 every `interval_s` while `alive()`; runs until cancelled.

    A blocked event loop stops the pings by itself. `alive` covers the case
    the loop cannot see: a tick stuck on an await. While it returns False (or
    raises) no ping is sent, so systemd restarts the service when the
    watchdog period runs out; pings resume if it becomes True again first.
    """
    if not notifier.enabled or interval_s is None or interval_s <= 0:
        return
    healthy = True
    while True:
        try:
            ok = bool(alive())
        except Exception:  # noqa: BLE001 - a broken check must stop the pings, not the loop
            _log.exception("watchdog liveness check failed")
            ok = False
        if ok:
            notifier.watchdog()
        if ok != healthy:
            healthy = ok
            if ok:
                _log.warning("daemon alive again: systemd watchdog pings resumed")
            else:
                _log.error("daemon not alive: systemd watchdog pings stopped")
        await asyncio.sleep(interval_s)
