"""Every node of a job must run the daemon's cryptotune, torch and Python: compare and explain.

Ranks receive pickled specs and tensors and run the same training code as a local job, so a node
with another torch (or cryptotune) could train differently or fail obscurely mid-run. We install
the same versions on every node (no Ray ``runtime_env``: a multi-GB torch shipped per job is slow
and hides which versions run where); a mismatch fails the job at start, naming the node.
"""

from __future__ import annotations

import platform
from importlib import metadata

# What must match, in the order a message names them. Python is compared by major.minor (pickles
# and Ray itself need that); cryptotune and torch exactly (a CUDA build suffix included).
CHECKED = ("cryptotune", "torch", "python")
_LABELS = {"cryptotune": "cryptotune", "torch": "torch", "python": "Python"}
UNKNOWN = "not installed"


def _package_version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return UNKNOWN


def local_versions() -> dict[str, str]:
    """This process's cryptotune, torch and Python versions (torch is not imported to learn it)."""
    from cryptotune_daemon import __version__

    return {
        "cryptotune": __version__,
        "torch": _package_version("torch"),
        "python": platform.python_version(),
    }


def _comparable(name: str, version: str) -> str:
    if name == "python":
        return ".".join(version.split(".")[:2])
    return version


def node_label(address: str, node_id: str = "") -> str:
    """How messages name a node: ``10.0.0.7 (ray node ab12cd34…)``."""
    if not node_id:
        return address or "an unknown node"
    short = node_id[:8] + ("…" if len(node_id) > 8 else "")
    return f"{address} (ray node {short})" if address else f"ray node {short}"


def describe_version_mismatch(expected: dict[str, str], found: dict[str, str], node: str) -> str | None:
    """Why ``node`` cannot run the daemon's job, or None when its versions match.

    Args:
        expected: the daemon's :func:`local_versions`.
        found: the node's :func:`local_versions` (a missing key counts as not installed).
        node: the node as messages name it (:func:`node_label`).
    """
    differences = []
    for name in CHECKED:
        want, have = expected.get(name, UNKNOWN), found.get(name, UNKNOWN)
        if _comparable(name, want) != _comparable(name, have):
            differences.append((_LABELS[name], have, want))
    if not differences:
        return None
    runs = " and ".join(f"{label} {have}" for label, have, _ in differences)
    daemon = " and ".join(f"{label} {want}" for label, _, want in differences)
    return (
        f"node {node} runs {runs}, the daemon {daemon}; install the daemon's versions on that node "
        "(the same cryptotune, torch and Python; see docs/multi-node.md), or ship them with a Ray "
        "runtime_env, then submit the job again"
    )
