"""**Pure**: do a node's cryptotune, torch and Python versions match the daemon's?

Every rank must run what the daemon runs: a mismatch fails the job at start, naming the node and
the versions (a minimal version; the cluster work of issue 13 may extend it).
"""

from __future__ import annotations

import importlib.metadata
import platform
from collections.abc import Mapping

# The components whose versions must be equal on every node, in the order messages name them.
COMPONENTS = ("cryptotune", "torch", "python")


def local_versions() -> dict[str, str]:
    """This interpreter's versions of :data:`COMPONENTS` (read from metadata: torch is not imported)."""
    found = {"python": platform.python_version()}
    for package in ("cryptotune", "torch"):
        try:
            found[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            found[package] = "not installed"
    return found


def describe_version_mismatch(expected: Mapping[str, str], found: Mapping[str, str], node: str) -> str | None:
    """Why ``node`` cannot run a rank (its versions differ from the daemon's), or None when they match."""
    differ = [
        f"{name} {found.get(name, 'unknown')} (the daemon has {expected[name]})"
        for name in COMPONENTS
        if name in expected and found.get(name) != expected[name]
    ]
    if not differ:
        return None
    return (
        f"node {node} runs {', '.join(differ)}; install the daemon's versions on every node of the Ray "
        "cluster (the same cryptotune, torch and Python)"
    )
