"""Default locations shared by the CLI, the SDK and the daemon."""

from __future__ import annotations

import os
from pathlib import Path

SOCKET_NAME = "cryptotuned.sock"
ADDRESS_ENV = "CRYPTOTUNE_ADDRESS"
TOKEN_ENV = "CRYPTOTUNE_TOKEN"
STATE_DIR_ENV = "CRYPTOTUNE_STATE_DIR"


def default_state_dir() -> Path:
    """``$CRYPTOTUNE_STATE_DIR``, else ``${XDG_STATE_HOME:-~/.local/state}/cryptotune``."""
    explicit = os.environ.get(STATE_DIR_ENV)
    if explicit:
        return Path(explicit).expanduser().resolve()
    xdg = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return (Path(xdg).expanduser() / "cryptotune").resolve()


def default_socket_path(state_dir: Path | None = None) -> Path:
    """The daemon's default unix socket: in the state dir, next to the job store.

    The state dir (not ``$XDG_RUNTIME_DIR``) is used so that a daemon started with
    ``--state-dir X`` and a client given the same ``$CRYPTOTUNE_STATE_DIR`` always agree.
    """
    return (state_dir or default_state_dir()) / SOCKET_NAME


def default_address() -> str:
    """``$CRYPTOTUNE_ADDRESS`` or the default unix socket as a gRPC target."""
    return os.environ.get(ADDRESS_ENV) or f"unix://{default_socket_path()}"


def is_default_address(address: str) -> bool:
    """Whether ``address`` is the local default one that the CLI may auto-start."""
    return address == f"unix://{default_socket_path()}"


def expand_home(value: str | os.PathLike[str]) -> Path:
    """``value`` with a leading ``~`` or ``~user`` expanded, as a shell would.

    Raises:
        InvalidArgument: ``~user`` names a user this machine does not have (``Path.expanduser`` would
            raise a bare RuntimeError).
    """
    path = Path(value)
    try:
        return path.expanduser()
    except RuntimeError:
        from cryptotune.errors import InvalidArgument

        head = path.parts[0] if path.parts else str(value)
        raise InvalidArgument(
            f"{value}: there is no user {head[1:]!r} on this machine to expand {head!r}; "
            "give the full path instead"
        ) from None
