"""The CLI imports only what a command needs: help and version load neither gRPC nor rich, a command
loads the generated code of the one service it calls, and rich only when it draws."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import cryptotune
from tests.integration.conftest import RunningDaemon

PROBE = """
import json, sys
from cryptotune.cli.main import cli
try:
    cli({args!r}, prog_name="cryptotune")
except SystemExit:
    pass
print("MODULES:" + json.dumps(sorted(sys.modules)))
"""

COMMANDS = (
    "init-config",
    "validate-config",
    "list-gpus",
    "inspect-data",
    "train",
    "status",
    "watch",
    "jobs",
    "cancel",
    "logs",
    "export",
    "demo",
)
SERVICES = ("config", "data", "gpu", "job")


def loaded_by(*args: str) -> set[str]:
    """The modules loaded by one CLI invocation, run in a fresh interpreter."""
    completed = subprocess.run(  # noqa: PLW1510 - the output is asserted
        [sys.executable, "-c", PROBE.format(args=list(args))], capture_output=True, text=True, timeout=120
    )
    last = completed.stdout.strip().splitlines()[-1]
    assert last.startswith("MODULES:"), (completed.stdout, completed.stderr)
    return set(json.loads(last.removeprefix("MODULES:")))


def under(modules: set[str], *roots: str) -> set[str]:
    return {m for m in modules if any(m == r or m.startswith(r + ".") for r in roots)}


def service_modules(modules: set[str]) -> set[str]:
    return {s for s in SERVICES if f"cryptotune.proto.v1.{s}_pb2" in modules}


@pytest.mark.parametrize("args", [["--help"], ["--version"], *[[c, "--help"] for c in COMMANDS]])
def test_help_and_version_load_neither_grpc_nor_rich(args: list[str]) -> None:
    modules = loaded_by(*args)
    assert not under(modules, "grpc", "google.protobuf", "rich", "cryptotune.proto", "cryptotune.client")


def test_importing_the_package_loads_no_grpc() -> None:
    probe = "import sys, cryptotune; print(sorted(m for m in sys.modules if m.startswith(('grpc', 'rich'))))"
    completed = subprocess.run(  # noqa: PLW1510 - the output is asserted
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60
    )
    assert completed.stdout.strip() == "[]", completed.stderr


def test_every_export_resolves() -> None:
    for name in cryptotune.__all__:
        assert getattr(cryptotune, name).__name__ == name
    assert set(cryptotune.__all__) <= set(dir(cryptotune))
    with pytest.raises(AttributeError):
        _ = cryptotune.NoSuchName  # type: ignore[attr-defined]


def test_a_command_loads_only_its_service(daemon: RunningDaemon) -> None:
    address = ["--address", daemon.address, "--no-autostart"]
    drawn = loaded_by(*address, "list-gpus")
    assert service_modules(drawn) == {"gpu"}
    assert "rich.table" in drawn  # the GPU table is drawn…
    assert not under(drawn, "rich.progress", "rich.live")  # …but nothing live
    as_json = loaded_by(*address, "--json", "list-gpus")
    assert service_modules(as_json) == {"gpu"}
    assert not under(as_json, "rich")
    assert service_modules(loaded_by(*address, "--json", "jobs")) == {"job"}
