"""The systemd unit declares what we promise, and sd_notify speaks the protocol systemd expects."""

from __future__ import annotations

import asyncio
import os
import socket
from pathlib import Path

import pytest

from cryptotune_daemon.systemd_notify import SystemdNotifier

UNIT = Path(__file__).resolve().parents[2] / "systemd" / "cryptotuned.service"


def test_unit_declares_the_promised_settings() -> None:
    text = UNIT.read_text()
    for line in (
        "Type=notify",
        "WatchdogSec=",
        "Restart=on-failure",
        "User=cryptotune",
        "StateDirectory=",
        "RuntimeDirectory=",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "ProtectKernelTunables=yes",
        "RestrictAddressFamilies=",
        "DeviceAllow=char-nvidia",
        "KillMode=mixed",
    ):
        assert line in text, line
    assert "PrivateDevices" not in text


def test_notifier_sends_datagrams_and_pings_the_watchdog(tmp_path: Path) -> None:
    path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as receiver:
        receiver.bind(str(path))
        receiver.settimeout(5)
        notifier = SystemdNotifier(
            {"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "200000", "WATCHDOG_PID": str(os.getpid())}
        )
        assert notifier.enabled and notifier.watchdog_interval_s == pytest.approx(0.1)
        assert notifier.notify("READY=1")
        assert receiver.recv(100) == b"READY=1"

        async def run_watchdog() -> None:
            task = notifier.start_watchdog()
            await asyncio.sleep(0.25)
            await SystemdNotifier.stop_task(task)

        asyncio.run(run_watchdog())
        pings = [receiver.recv(100) for _ in range(2)]
        assert pings == [b"WATCHDOG=1", b"WATCHDOG=1"]


def test_notifier_is_a_no_op_outside_systemd() -> None:
    notifier = SystemdNotifier({})
    assert not notifier.enabled
    assert notifier.notify("READY=1") is False
    assert notifier.watchdog_interval_s == 0
    other_pid = SystemdNotifier({"NOTIFY_SOCKET": "/x", "WATCHDOG_USEC": "1000", "WATCHDOG_PID": "1"})
    assert other_pid.watchdog_interval_s == 0
