"""Starts a user daemon in the background when nothing answers at the default local address.

Like the Gradle and Bazel daemons: the first command pays the start-up, later ones reuse it.
A lock file makes concurrent CLI invocations start at most one daemon.
"""

from __future__ import annotations

import fcntl
import importlib.util
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from cryptotune.errors import DaemonUnavailable
from cryptotune.paths import default_state_dir, is_default_address

START_TIMEOUT_S = 90.0


def daemon_command(state_dir: Path, address: str) -> list[str]:
    """The command line that starts a user daemon on ``address``."""
    import shutil  # not at the top: every CLI command imports this module, few start a daemon

    executable = shutil.which("cryptotuned")
    sibling = Path(sys.executable).with_name("cryptotuned")
    if sibling.exists():
        executable = str(sibling)
    base = [executable] if executable else [sys.executable, "-m", "cryptotune_daemon.main"]
    return [*base, "--state-dir", str(state_dir), "--listen", address]


# The daemon's own modules ship in every wheel; its heavy dependencies come only with [daemon].
_DAEMON_MODULES = (
    "cryptotune_daemon",
    "torch",
    "transformers",
    "peft",
    "grpc_reflection",
    "yaml",
    "pydantic",
)


def daemon_installed() -> bool:
    """Whether this environment can run ``cryptotuned`` (the ``[daemon]`` extra is installed)."""
    return all(importlib.util.find_spec(name) is not None for name in _DAEMON_MODULES)


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def unreachable_message(address: str) -> str:
    """How to start a daemon by hand for an explicit address."""
    return (
        f"no cryptotune daemon answers at {address}. Start one with 'cryptotuned --listen {address}' "
        "(or drop --address to use the local user daemon), then retry."
    )


def ensure_daemon(
    address: str,
    ping: Callable[[], bool],
    *,
    autostart: bool,
    announce: Callable[[str], None],
) -> None:
    """Makes sure a daemon answers at ``address``, starting a user daemon if allowed.

    Args:
        address: the target address.
        ping: returns True when a daemon answers.
        autostart: False for ``--no-autostart``.
        announce: prints a one-line notice for the user (to stderr).

    Raises:
        DaemonUnavailable: nothing answers and no daemon may or could be started.
    """
    if ping():
        return
    if not is_default_address(address):
        raise DaemonUnavailable(unreachable_message(address))
    if not autostart:
        raise DaemonUnavailable(
            f"no cryptotune daemon answers at {address} and --no-autostart is set. Start one with "
            f"'cryptotuned' (or 'cryptotuned --listen {address}')."
        )
    if not daemon_installed():
        raise DaemonUnavailable(
            f"no cryptotune daemon answers at {address}, and this machine has only the thin client. "
            "Install the daemon with: pip install 'cryptotune[daemon]', or point --address / "
            "$CRYPTOTUNE_ADDRESS at a running daemon."
        )
    state_dir = default_state_dir()
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    log_path = state_dir / "cryptotuned.log"
    with (state_dir / "autostart.lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if ping():  # another CLI started it while we waited for the lock
            return
        with log_path.open("ab") as log:
            process = subprocess.Popen(
                daemon_command(state_dir, address),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,  # outlives this CLI and its terminal
                close_fds=True,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        announce(f"Started a cryptotune daemon in the background (pid {process.pid}, log: {log_path}).")
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if ping():
                return
            if process.poll() is not None:
                raise DaemonUnavailable(
                    f"the background daemon exited with code {process.returncode} while starting. "
                    f"Last lines of {log_path}:\n{_tail(log_path)}"
                )
            time.sleep(0.2)
        raise DaemonUnavailable(
            f"the background daemon (pid {process.pid}) did not answer within {START_TIMEOUT_S:.0f} s; "
            f"see {log_path}"
        )
