"""Handing a job to a warm worker: the message, the descriptors that travel with it, the decision."""

from __future__ import annotations

import fcntl
import os
import socket
from pathlib import Path

import pytest

from cryptotune_daemon.jobs.warm_pool import may_use_warm_worker, warm_environment
from cryptotune_daemon.worker.handover import Handover, receive_handover, send_handover


def test_only_single_process_jobs_of_a_daemon_with_warm_workers_start_warm() -> None:
    assert may_use_warm_worker(1, 1)
    assert may_use_warm_worker(1, 3)
    assert not may_use_warm_worker(2, 1), "torchrun jobs start cold"
    assert not may_use_warm_worker(1, 0), "--warm-workers 0 turns them off"


def test_the_warm_environment_creates_no_cuda_context_before_the_job() -> None:
    env = warm_environment({"PATH": "/bin"})
    assert env["PYTORCH_NVML_BASED_CUDA_CHECK"] == "1"
    assert env["PYTHONUNBUFFERED"] == "1"
    assert env["PATH"] == "/bin"


def test_the_job_lock_and_log_travel_with_the_handover(tmp_path: Path) -> None:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    lock_path, log_path = tmp_path / "worker.lock", tmp_path / "worker.log"
    lock_fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(lock_fd, fcntl.LOCK_SH)
    log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    sent = Handover(
        spec_path=tmp_path / "spec.json", job_dir=tmp_path, env={"CRYPTOTUNE_JOB_DIR": str(tmp_path)}
    )
    send_handover(ours, sent, lock_fd, log_fd)
    os.close(lock_fd)  # the daemon lets go of its copies: the lock stays held through the worker's
    os.close(log_fd)
    received = receive_handover(theirs)
    assert received is not None
    assert received.handover == sent
    probe = os.open(lock_path, os.O_RDWR)
    with pytest.raises(BlockingIOError):
        fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)
    os.write(received.log_fd, b"line\n")
    assert log_path.read_text() == "line\n"
    os.close(received.lock_fd)
    os.close(received.log_fd)
    fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)  # free once the worker's copy is gone
    os.close(probe)
    ours.close()
    theirs.close()


def test_a_closed_daemon_end_means_no_job(tmp_path: Path) -> None:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    ours.close()
    assert receive_handover(theirs) is None
    theirs.close()


def test_a_handover_without_its_descriptors_is_refused() -> None:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    ours.send(b'{"spec_path": "/s", "job_dir": "/d", "env": {}}')
    with pytest.raises(ValueError, match="descriptors"):
        receive_handover(theirs)
    ours.close()
    theirs.close()
