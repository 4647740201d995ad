"""The pre-flight's pieces: advice, the watchdog, the timeout setting (tests/integration/test_preflight.py
runs it across processes)."""

from __future__ import annotations

import threading

import pytest

from cryptotune_daemon.training.preflight import (
    DEFAULT_TIMEOUT_S,
    TIMEOUT_ENV,
    Watchdog,
    network_advice,
    preflight_timeout,
)


def test_gpu_advice_names_nccl_knobs() -> None:
    message = network_advice("cuda", "all-reduce", 60)
    assert "NCCL_SOCKET_IFNAME" in message and "NCCL_DEBUG=INFO" in message and "within 60 s" in message


def test_the_watchdog_fires_only_when_the_block_overruns() -> None:
    fired: list[str] = []
    done = threading.Event()

    def record(message: str) -> None:
        fired.append(message)
        done.set()

    with Watchdog(30, "too slow", record):
        pass
    with Watchdog(0.05, "too slow", record):
        assert done.wait(10)
    assert fired == ["too slow"]


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("", DEFAULT_TIMEOUT_S), ("7.5", 7.5), ("-1", DEFAULT_TIMEOUT_S), ("x", DEFAULT_TIMEOUT_S)],
)
def test_the_timeout_comes_from_the_environment(
    raw: str, expected: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(TIMEOUT_ENV, raw)
    assert preflight_timeout() == expected
