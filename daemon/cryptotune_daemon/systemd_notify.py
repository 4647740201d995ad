"""sd_notify over $NOTIFY_SOCKET: READY, STOPPING, STATUS and watchdog pings.

Written by hand because the protocol is one datagram per message and the maintained bindings
(python-systemd) need libsystemd headers to build; ``sdnotify`` on PyPI is unmaintained since 2017.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket

log = logging.getLogger(__name__)


class SystemdNotifier:
    """Sends notifications to systemd when started as a ``Type=notify`` service; a no-op otherwise."""

    def __init__(self, environ: dict[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        raw = env.get("NOTIFY_SOCKET", "")
        # An abstract-namespace socket is written with a leading "@".
        self._address = "\0" + raw[1:] if raw.startswith("@") else raw
        watchdog_usec = env.get("WATCHDOG_USEC", "")
        watchdog_pid = env.get("WATCHDOG_PID", "")
        owned = not watchdog_pid or watchdog_pid == str(os.getpid())
        self.watchdog_interval_s = int(watchdog_usec) / 2e6 if watchdog_usec.isdigit() and owned else 0.0

    @property
    def enabled(self) -> bool:
        """Whether systemd asked for notifications."""
        return bool(self._address)

    def notify(self, message: str) -> bool:
        """Sends ``message`` (e.g. ``READY=1``); returns False when not under systemd or on error."""
        if not self._address:
            return False
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.connect(self._address)
                sock.sendall(message.encode())
        except OSError as error:
            log.warning("sd_notify failed: %s", error)
            return False
        return True

    async def watchdog_forever(self) -> None:
        """Pings the watchdog from the event loop, so a stuck loop gets the daemon restarted."""
        if self.watchdog_interval_s <= 0:
            return
        while True:
            self.notify("WATCHDOG=1")
            await asyncio.sleep(self.watchdog_interval_s)

    def start_watchdog(self) -> asyncio.Task[None] | None:
        """Starts the watchdog task when systemd configured one."""
        if self.watchdog_interval_s <= 0:
            return None
        return asyncio.get_running_loop().create_task(self.watchdog_forever(), name="sd-watchdog")

    @staticmethod
    async def stop_task(task: asyncio.Task[None] | None) -> None:
        """Cancels a watchdog task."""
        if task is None:
            return
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
