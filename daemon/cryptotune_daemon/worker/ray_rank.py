"""One rank of a job on Ray: the actor that runs the ordinary worker in a node-local scratch dir.

The job driver (``worker/ray_driver.py``) creates one :class:`RankProcess` actor per placement-group
bundle. The actor receives the job spec and the files the rank needs (the data; on a resume, the
output dir's checkpoints and pipeline state) through Ray's object store, writes them into a scratch
dir on its node, and starts ``python -m cryptotune_daemon.worker --spec …`` there with torchrun's
environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``). The rank is
given no path outside its scratch dir. Rank 0's actor hands what its worker writes (event lines, log
lines, output files, complete checkpoints) back to the driver in :meth:`RankProcess.poll`.

The worker process dies with its actor: it is started with ``PR_SET_PDEATHSIG`` (SIGKILL when the
actor's process goes, e.g. ``ray.kill`` or a lost node) in a process group of its own, which
:meth:`RankProcess.stop` ends. No Ray import here: the driver wraps the class with ``ray.remote``.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from cryptotune_daemon.cluster.versions import local_versions
from cryptotune_daemon.layout import CHECKPOINT_MANIFEST, CHECKPOINTS_DIR, EVENTS_FILE, WORKER_LOG

_PR_SET_PDEATHSIG = 1
STOP_GRACE_S = 5.0  # within the daemon's 10 s before it SIGKILLs the driver
LOG_TAIL_BYTES = 8000  # of a failed rank's own log, copied into the job's log
DATA_DIR = "data"
OUTPUT_DIR = "output"
STATE_DIR = "state"
SPEC_NAME = "spec.json"
_TMP_PREFIX = ".tmp-"
# Output files whose text may name the output dir: translated between the rank's and the daemon's.
_TEXT_SUFFIXES = (".json", ".jsonl", ".yaml", ".md", ".txt", ".log")


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() == 1:  # the actor died before prctl: follow it now
        os._exit(1)


def rank_spec(spec: dict[str, Any], scratch: Path, data_name: str) -> dict[str, Any]:
    """The job spec as the rank sees it: every path inside its scratch dir."""
    output = scratch / OUTPUT_DIR
    local = dict(spec)
    local.update(
        data_path=str(scratch / DATA_DIR / data_name),
        output_dir=str(output),
        state_dir=str(scratch / STATE_DIR),
        events_path=str(scratch / EVENTS_FILE),
    )
    if isinstance(spec.get("resume"), dict):
        local["resume"] = {**spec["resume"], "output_dir": str(output)}
    return local


class RankProcess:
    """The actor of one rank: a scratch dir, the worker process in it, and what it wrote."""

    def __init__(self, job_id: str, rank: int) -> None:
        self.job_id = job_id
        self.rank = rank
        self.scratch = Path(tempfile.mkdtemp(prefix=f"cryptotune-{job_id}-rank{rank}-"))
        self.process: subprocess.Popen[bytes] | None = None
        self._events_offset = 0
        self._log_offset = 0
        self._sent: dict[str, tuple[int, int]] = {}
        self._origin = b""  # the job's output dir on the daemon's machine

    def describe(self) -> dict[str, Any]:
        """This rank's node (id and address), the actor's pid and the node's versions."""
        import ray

        return {
            "node_id": ray.get_runtime_context().get_node_id(),
            "address": ray.util.get_node_ip_address(),  # type: ignore[no-untyped-call]
            "actor_pid": os.getpid(),
            "versions": local_versions(),
            "scratch": str(self.scratch),
        }

    def free_port(self) -> int:
        """A free TCP port on this node for torch.distributed's rendezvous (rank 0)."""
        with socket.socket() as sock:
            sock.bind(("", 0))
            return int(sock.getsockname()[1])

    def start(self, files: dict[str, bytes], spec: dict[str, Any], env: dict[str, str]) -> int:
        """Writes the rank's files, then starts its worker; returns the worker's pid."""
        self._origin = str(spec["output_dir"]).encode()
        for relative, content in files.items():
            target = self.scratch / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            translate = relative.startswith(f"{OUTPUT_DIR}/") and _is_text(relative)
            target.write_bytes(content.replace(self._origin, self._local) if translate else content)
        data_name = Path(str(spec["data_path"])).name
        spec_path = self.scratch / SPEC_NAME
        spec_path.write_text(json.dumps(rank_spec(spec, self.scratch, data_name), ensure_ascii=False))
        (self.scratch / OUTPUT_DIR).mkdir(exist_ok=True)
        with (self.scratch / WORKER_LOG).open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "cryptotune_daemon.worker", "--spec", str(spec_path)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.scratch,
                env={**os.environ, **env},
                start_new_session=True,
                preexec_fn=_die_with_parent,  # noqa: PLW1509 - prctl must run in the child
            )
        return self.process.pid

    def status(self) -> int | None:
        """The worker's exit code (negative: killed by that signal); None while it runs."""
        return None if self.process is None else self.process.poll()

    def log_tail(self, limit: int = LOG_TAIL_BYTES) -> str:
        """The end of this rank's worker log: how a rank other than 0 failed (only rank 0's log is
        mirrored into the job's)."""
        path = self.scratch / WORKER_LOG
        try:
            size = path.stat().st_size
            with path.open("rb") as handle:
                handle.seek(max(size - limit, 0))
                tail = handle.read()
        except OSError:
            return ""
        return tail.replace(self._local, self._origin).decode("utf-8", errors="replace")

    def poll(self) -> dict[str, Any]:
        """What the worker wrote since the last call (rank 0): the driver mirrors it.

        Event lines are read before the files, so every file an event names is sent with it or
        before; a checkpoint is sent whole once its directory exists (the worker renames it into
        place complete). Returns ``exit`` (see :meth:`status`, read first so that a final call sends
        everything), ``events`` and ``log`` (new bytes), ``files`` (relative path → bytes, changed
        output files), ``checkpoints`` (directory → its files) and ``present`` (the checkpoint
        directories that exist now).
        """
        exit_code = self.status()
        events, self._events_offset = _read_lines(self.scratch / EVENTS_FILE, self._events_offset)
        log, self._log_offset = _read_new(self.scratch / WORKER_LOG, self._log_offset)
        output = self.scratch / OUTPUT_DIR
        files: dict[str, bytes] = {}
        checkpoints: dict[str, dict[str, bytes]] = {}
        present: list[str] = []
        checkpoint_root = output / CHECKPOINTS_DIR
        for path in sorted(output.rglob("*")) if output.is_dir() else []:
            relative = path.relative_to(output)
            if any(part.startswith(_TMP_PREFIX) for part in relative.parts) or not path.is_file():
                continue
            if checkpoint_root in path.parents:
                continue
            self._send_if_changed(path, str(relative), files)
        for directory in sorted(checkpoint_root.iterdir()) if checkpoint_root.is_dir() else []:
            manifest = directory / CHECKPOINT_MANIFEST
            if directory.name.startswith(_TMP_PREFIX) or not manifest.is_file():
                continue
            present.append(directory.name)
            key = f"{CHECKPOINTS_DIR}/{directory.name}"
            with contextlib.suppress(OSError):
                stat = manifest.stat()
                if self._sent.get(key) == (stat.st_size, stat.st_mtime_ns):
                    continue
                checkpoints[directory.name] = {
                    str(p.relative_to(directory)): p.read_bytes() for p in directory.rglob("*") if p.is_file()
                }
                self._sent[key] = (stat.st_size, stat.st_mtime_ns)
        return {
            "exit": exit_code,
            "events": events.replace(self._local, self._origin),
            "log": log.replace(self._local, self._origin),
            "files": {
                k: v.replace(self._local, self._origin) if _is_text(k) else v for k, v in files.items()
            },
            "checkpoints": checkpoints,
            "present": present,
        }

    @property
    def _local(self) -> bytes:
        """The rank's output dir, as it appears in what its worker writes."""
        return str(self.scratch / OUTPUT_DIR).encode()

    def _send_if_changed(self, path: Path, relative: str, files: dict[str, bytes]) -> None:
        try:
            before = path.stat()
            signature = (before.st_size, before.st_mtime_ns)
            if self._sent.get(relative) == signature:
                return
            files[relative] = path.read_bytes()
            after = path.stat()
        except OSError:
            return
        if (after.st_size, after.st_mtime_ns) == signature:
            self._sent[relative] = signature  # else it was being written: send it again next time

    def stop(self, grace_s: float = STOP_GRACE_S) -> int | None:
        """Ends the worker's process group (SIGTERM, SIGKILL after ``grace_s``) and removes the scratch
        dir; returns the worker's exit code."""
        try:
            return self._end_process(grace_s)
        finally:
            self.cleanup()

    def _end_process(self, grace_s: float) -> int | None:
        process = self.process
        if process is None:
            return None
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGTERM)
            deadline = time.monotonic() + grace_s
            while process.poll() is None and time.monotonic() < deadline:
                time.sleep(0.1)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)  # and whatever it started
        return process.wait()

    def cleanup(self) -> None:
        """Removes the scratch dir (:meth:`stop` does it too)."""
        shutil.rmtree(self.scratch, ignore_errors=True)


def _is_text(relative: str) -> bool:
    """Whether an output file outside the checkpoints may name the output dir (checkpoints are
    hashed in their manifest: they travel byte for byte)."""
    return relative.endswith(_TEXT_SUFFIXES) and f"/{CHECKPOINTS_DIR}/" not in f"/{relative}"


def _read_new(path: Path, offset: int) -> tuple[bytes, int]:
    try:
        with path.open("rb") as handle:
            handle.seek(offset)
            chunk = handle.read()
    except FileNotFoundError:
        return b"", offset
    return chunk, offset + len(chunk)


def _read_lines(path: Path, offset: int) -> tuple[bytes, int]:
    """Complete lines appended since ``offset`` (a partial last line waits for the next call)."""
    chunk, _ = _read_new(path, offset)
    end = chunk.rfind(b"\n")
    if end < 0:
        return b"", offset
    return chunk[: end + 1], offset + end + 1
