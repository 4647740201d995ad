"""Turns a submit request into a validated job spec (policy checks live here, not in servicers)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from cryptotune_daemon.config import load_config
from cryptotune_daemon.config.strategies import refuse_unsupported
from cryptotune_daemon.config.system_paths import check_job_dirs, choose_output_dir
from cryptotune_daemon.errors import CryptotuneError, ErrorCode
from cryptotune_daemon.jobs.model import Job, JobState, generate_pipeline_id, validate_pipeline_id
from cryptotune_daemon.jobs.store import JobStore
from cryptotune_daemon.path_text import path_text, shown
from cryptotune_daemon.settings import DaemonSettings
from cryptotune_daemon.storage.blobs import BlobStore
from cryptotune_daemon.worker.spec import JobSpec, ResumeSpec
from cryptotune_daemon.worker.state import read_state

# ASCII digits only, and few of them: int() of a 5000-digit (or Arabic-Indic) step must never run.
_RESUME = re.compile(r"(?P<pipeline>[A-Za-z0-9._-]{1,64})(?:@(?P<step>[0-9]{1,12}))?")


@dataclass(frozen=True)
class SubmitRequest:
    """What a client asks for (already decoded from proto)."""

    request_id: str
    data_digest: str
    data_name: str
    config_yaml: str
    config_name: str
    output_dir: str
    pipeline_id: str
    resume: str
    dry_run: bool
    client_cwd: str = ""  # where relative config paths start (the client's working directory)
    remote: bool = False  # came over TCP: the client's directory is on another machine


@dataclass(frozen=True)
class PreparedJob:
    """A submission that passed every check, ready for the store."""

    pipeline_id: str
    output_dir: Path
    resumed_from: str
    spec: JobSpec


def _check_output_dir(raw: str, settings: DaemonSettings) -> Path:
    if not raw:
        raise CryptotuneError(
            ErrorCode.REQUEST_INVALID,
            "output_dir is required: give an absolute directory for the job's output",
        )
    path_text(raw, "output_dir", "give a plain absolute directory path")
    path = Path(raw)
    if not path.is_absolute():
        raise CryptotuneError(
            ErrorCode.REQUEST_INVALID,
            f"output_dir must be an absolute path, got {shown(raw)}; the daemon does not know the "
            "client's working directory",
        )
    try:
        resolved = path.resolve()
    except (OSError, RuntimeError) as error:  # RuntimeError: a symlink loop (Python < 3.13)
        raise CryptotuneError(
            ErrorCode.REQUEST_INVALID, f"output_dir {shown(raw)} cannot be resolved: {error}"
        ) from None
    roots = settings.output_roots()
    if not any(resolved == root or root in resolved.parents for root in roots):
        allowed = ", ".join(str(r) for r in roots)
        raise CryptotuneError(
            ErrorCode.PATH_NOT_ALLOWED,
            f"output dir {resolved} is outside the daemon's allowed roots ({allowed}); choose a directory "
            "under one of them or start cryptotuned with --allow-output-root",
        )
    try:
        not_a_dir = resolved.exists() and not resolved.is_dir()
    except OSError as error:
        raise CryptotuneError(
            ErrorCode.REQUEST_INVALID, f"output dir {resolved} cannot be used: {error.strerror}"
        ) from None
    if not_a_dir:
        raise CryptotuneError(
            ErrorCode.REQUEST_INVALID,
            f"output dir {resolved} exists and is not a directory; choose a directory path",
        )
    return resolved


def _pipeline_in_dir(output_dir: Path) -> str | None:
    state = read_state(output_dir)
    return state.pipeline_id if state is not None and state.pipeline_id else None


def _resolve_resume(resume: str, store: JobStore) -> tuple[Job, int | None]:
    match = _RESUME.fullmatch(resume)
    if not match:
        raise CryptotuneError(
            ErrorCode.REQUEST_INVALID,
            f"--resume takes PIPELINE_ID or PIPELINE_ID@STEP (a pipeline id of 1 to 64 characters from "
            f"A-Z a-z 0-9 . _ -, and a checkpoint step number), got {shown(resume)}",
        )
    previous = store.get(match.group("pipeline"))
    step = int(match.group("step")) if match.group("step") else None
    if not previous.is_terminal:
        raise CryptotuneError(
            ErrorCode.JOB_STATE_CONFLICT,
            f"pipeline {previous.pipeline_id} is still {previous.state.value} (job {previous.job_id}); "
            "cancel it or wait for it to end before resuming",
        )
    if previous.state == JobState.SUCCEEDED and not previous.dry_run and step is None:
        raise CryptotuneError(
            ErrorCode.RESUME_REFUSED,
            f"pipeline {previous.pipeline_id} already completed; its adapter is in {previous.output_dir}. "
            "Resume a specific checkpoint with --resume ID@STEP, or start a new pipeline",
        )
    return previous, step


def prepare(
    request: SubmitRequest,
    *,
    settings: DaemonSettings,
    store: JobStore,
    blobs: BlobStore,
    gpu_count: int,
) -> PreparedJob:
    """Validates a submission and builds the worker's spec.

    Raises:
        CryptotuneError: with a code the catalog maps to INVALID_ARGUMENT, NOT_FOUND,
            ALREADY_EXISTS, FAILED_PRECONDITION or PERMISSION_DENIED, and a message saying how to fix it.
    """
    if not request.request_id or len(request.request_id) > 128:
        raise CryptotuneError(ErrorCode.REQUEST_INVALID, "request_id must be 1–128 characters")
    blob = blobs.get(request.data_digest)
    config = load_config(
        request.config_yaml, request.config_name or "config.yaml", gpu_count=gpu_count or None
    )
    if config.model.trust_remote_code and not settings.allow_remote_code:
        raise CryptotuneError(
            ErrorCode.REMOTE_CODE_REFUSED,
            "model.trust_remote_code is true, but this daemon was not started with --allow-remote-code; "
            "Qwen3 needs no remote code: set it to false",
        )
    refuse_unsupported(config.parallel.strategy)
    nodes = config.parallel.nodes
    world_size = config.parallel.world_size if config.parallel.enable_distributed else 1
    if nodes > 1:
        if settings.ray_address is None:
            raise CryptotuneError(
                ErrorCode.CONFIG_INVALID,
                f"parallel.nodes is {nodes}, but this daemon is not attached to a Ray cluster: start "
                "cryptotuned with --ray-address ADDRESS (auto: the cluster this machine belongs to; see "
                "docs/multi-node.md), or set parallel.nodes: 1 to train on this machine",
            )
    elif config.parallel.strategy == "auto" and gpu_count > 1 and config.parallel.enable_distributed:
        world_size = gpu_count
    if nodes == 1 and gpu_count and world_size > gpu_count:
        raise CryptotuneError(
            ErrorCode.CONFIG_INVALID,
            f"parallel.world_size is {world_size} but the daemon's machine has {gpu_count} GPU(s); set "
            f"world_size to at most {gpu_count}, or spread the ranks over several machines with "
            "parallel.nodes on a daemon attached to a Ray cluster (cryptotuned --ray-address)",
        )

    resume_spec: ResumeSpec | None = None
    resumed_from = ""
    if request.resume:
        previous, step = _resolve_resume(request.resume, store)
        if request.pipeline_id and request.pipeline_id != previous.pipeline_id:
            raise CryptotuneError(
                ErrorCode.REQUEST_INVALID,
                f"--pipeline-id {request.pipeline_id} differs from the resumed pipeline "
                f"{previous.pipeline_id}; drop --pipeline-id when resuming",
            )
        pipeline_id = previous.pipeline_id
        output_dir = Path(previous.output_dir)
        resumed_from = request.resume
        resume_spec = ResumeSpec(output_dir=output_dir, step=step)
    else:
        pipeline_id = (
            validate_pipeline_id(request.pipeline_id) if request.pipeline_id else generate_pipeline_id()
        )
        choice = choose_output_dir(
            request.output_dir, config.system.output_dir, request.client_cwd, remote=request.remote
        )
        output_dir = _check_output_dir(choice.path, settings)
        owner = _pipeline_in_dir(output_dir)
        if owner and owner != pipeline_id:
            raise CryptotuneError(
                ErrorCode.JOB_STATE_CONFLICT,
                f"output dir {output_dir} already holds pipeline {owner}; choose another --output-dir, "
                f"or continue that pipeline with --resume {owner}",
            )
    check_job_dirs(output_dir, config.system.logging_dir, config.system.cache_dir, settings.output_roots())
    for job in store.list_nonterminal():
        if Path(job.output_dir) == output_dir and job.request_id != request.request_id:
            raise CryptotuneError(
                ErrorCode.JOB_STATE_CONFLICT,
                f"job {job.job_id} (pipeline {job.pipeline_id}) is {job.state.value} in {output_dir}; "
                "wait for it, cancel it, or choose another --output-dir",
            )
    spec = JobSpec(
        job_id="",  # the store assigns it; the launch fills it in
        pipeline_id=pipeline_id,
        data_path=blob.path,
        data_digest=blob.digest,
        data_name=request.data_name or blob.digest[:12],
        config_yaml=request.config_yaml,
        config_name=request.config_name or "config.yaml",
        output_dir=output_dir,
        state_dir=settings.state_dir,
        dry_run=request.dry_run,
        resume=resume_spec,
        world_size=world_size,
        nodes=nodes,
        allow_remote_code=settings.allow_remote_code,
        fault_injection=settings.faults,
    )
    return PreparedJob(pipeline_id=pipeline_id, output_dir=output_dir, resumed_from=resumed_from, spec=spec)
