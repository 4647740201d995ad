"""Translation between domain objects and proto messages (the daemon half of the serde layer)."""

from __future__ import annotations

import json
import math
from typing import Any

from cryptotune.proto.v1 import common_pb2, config_pb2, data_pb2, gpu_pb2, job_pb2
from cryptotune_daemon.cluster.inventory import ClusterView
from cryptotune_daemon.gpus import GpuInfo, Recommendation
from cryptotune_daemon.jobs import chat_policy
from cryptotune_daemon.jobs.model import Job, JobEvent
from cryptotune_daemon.jobs.model_workers import ChatEvent, ChatPiece, ChatStatus, ExportStep
from cryptotune_daemon.jobs.serving import ServingCheck
from cryptotune_daemon.jobs.submission import SubmitRequest
from cryptotune_daemon.training.model_request import GenerateParams

# A config with tens of thousands of bad keys must not make a response too big for clients to read
# (gRPC clients refuse messages over 4 MiB by default).
MAX_ISSUES = 500


def _issues(found: list[Any], kind: str) -> list[common_pb2.Issue]:
    issues = [common_pb2.Issue(path=i.path, line=i.line or 0, message=i.message) for i in found[:MAX_ISSUES]]
    if len(found) > MAX_ISSUES:
        issues.append(
            common_pb2.Issue(
                message=f"… and {len(found) - MAX_ISSUES} more {kind} not listed; fix the ones above first"
            )
        )
    return issues


def config_report(report: Any) -> config_pb2.ValidateConfigResponse:
    """ConfigReport → ValidateConfigResponse (at most MAX_ISSUES errors and warnings listed, then a count)."""
    return config_pb2.ValidateConfigResponse(
        valid=report.valid,
        errors=_issues(report.errors, "errors"),
        warnings=_issues(report.warnings, "warnings"),
    )


def _gpu(g: GpuInfo, owner: str) -> gpu_pb2.Gpu:
    return gpu_pb2.Gpu(
        index=g.index,
        uuid=g.uuid,
        name=g.name,
        memory_total_mb=g.memory_total_mb,
        memory_used_mb=g.memory_used_mb,
        utilization_percent=g.utilization_percent,
        temperature_c=g.temperature_c,
        owner_job_id=owner,
    )


def gpus(
    gpu_list: list[GpuInfo],
    owners: dict[str, str],
    rec: Recommendation,
    note: str,
    cluster: ClusterView | None = None,
    ray_address: str = "",
) -> gpu_pb2.ListGpusResponse:
    """Inventory + recommendation (+ the Ray cluster's nodes when attached) → ListGpusResponse."""
    response = gpu_pb2.ListGpusResponse(
        gpus=[_gpu(g, owners.get(g.uuid, "")) for g in gpu_list],
        recommendation=gpu_pb2.Recommendation(
            model=rec.model,
            strategy=rec.strategy,
            world_size=rec.world_size,
            per_device_batch_size=rec.per_device_batch_size,
            gradient_accumulation_steps=rec.gradient_accumulation_steps,
            precision=rec.precision,
            gradient_checkpointing=rec.gradient_checkpointing,
            reason=rec.reason,
        ),
        note=note,
    )
    if cluster is not None:
        response.ray_address = ray_address
        response.cluster_note = cluster.note
        for node in cluster.nodes:
            response.nodes.append(
                gpu_pb2.ClusterNode(
                    node_id=node.node_id,
                    address=node.address,
                    hostname=node.hostname,
                    alive=node.alive,
                    # The local node's GPUs are the daemon's own: their owners are known by uuid.
                    gpus=[
                        _gpu(g, owners.get(g.uuid, "") if node.local and g.uuid else "") for g in node.gpus
                    ],
                    cpus=node.cpus,
                    local=node.local,
                    held_by=[
                        gpu_pb2.ClusterHold(job_id=h.job_id, gpus=h.gpus, cpus=h.cpus) for h in node.holds
                    ],
                )
            )
    return response


def _lengths(stats: dict[str, Any]) -> data_pb2.LengthStats:
    return data_pb2.LengthStats(**{k: int(stats.get(k, 0) or 0) for k in ("min", "p50", "p90", "p99", "max")})


def _record_issue(problem: Any) -> data_pb2.RecordIssue:
    return data_pb2.RecordIssue(
        line=problem.line, index=problem.index, field=problem.field, message=problem.message
    )


def inspection(report: Any) -> data_pb2.InspectDataResponse:
    """InspectionReport → InspectDataResponse."""
    return data_pb2.InspectDataResponse(
        format=report.format,
        source_format=report.source_format,
        records_total=report.records_total,
        records_valid=report.records_valid,
        records_invalid=report.records_invalid,
        errors=[_record_issue(e) for e in report.errors],
        warnings=[_record_issue(w) for w in report.warnings],
        difficulty_counts={str(k): int(v) for k, v in report.difficulty_counts.items()},
        with_thinking=report.with_thinking,
        crypto_terms_top=[
            data_pb2.TermCount(term=term, count=count) for term, count in report.crypto_terms_top
        ],
        duplicates=report.duplicates,
        token_lengths=_lengths(report.token_lengths),
        token_lengths_by_part={k: _lengths(v) for k, v in report.token_lengths_by_part.items()},
        over_max_seq_length=report.over_max_seq_length,
        over_max_seq_length_indices=list(report.over_max_seq_length_indices),
        max_seq_length=report.max_seq_length,
        tokenizer=report.tokenizer,
        samples=[
            data_pb2.DataSample(
                index=s["index"],
                line=s["line"],
                record_json=json.dumps(s["record"], ensure_ascii=False),
                rendered_text=s["rendered_text"],
                trained_text=s["trained_text"],
                tokens=s["tokens"],
            )
            for s in report.samples
        ],
    )


def finite(value: float | None) -> float:
    """A float for a proto field: None/NaN/inf become 0."""
    if value is None or not math.isfinite(value):
        return 0.0
    return float(value)


_STATE_TO_PROTO = {
    "queued": job_pb2.JOB_STATE_QUEUED,
    "running": job_pb2.JOB_STATE_RUNNING,
    "succeeded": job_pb2.JOB_STATE_SUCCEEDED,
    "failed": job_pb2.JOB_STATE_FAILED,
    "cancelled": job_pb2.JOB_STATE_CANCELLED,
    "cancelling": job_pb2.JOB_STATE_CANCELLING,
    "recovering": job_pb2.JOB_STATE_RECOVERING,
}


def job(value: Job) -> job_pb2.Job:
    """Domain Job → proto Job."""
    p = value.progress
    return job_pb2.Job(
        job_id=value.job_id,
        pipeline_id=value.pipeline_id,
        state=_STATE_TO_PROTO[value.state.value],
        stage=value.stage,
        stages=[
            job_pb2.StageStatus(name=s.name, state=s.state, seconds=finite(s.seconds)) for s in value.stages
        ],
        progress=job_pb2.Progress(
            step=p.step,
            total_steps=p.total_steps,
            epoch=finite(p.epoch),
            loss=finite(p.loss),
            learning_rate=finite(p.learning_rate),
            tokens_per_second=finite(p.tokens_per_second),
            eta_seconds=finite(p.eta_seconds),
            grad_norm=finite(p.grad_norm),
        ),
        output_dir=value.output_dir,
        failure_reason=value.failure_reason,
        created_at=value.created_at,
        updated_at=value.updated_at,
        dry_run=value.dry_run,
        resumed_from=value.resumed_from,
        plan_json=json.dumps(value.plan, ensure_ascii=False) if value.plan else "",
        device=value.device,
        waiting_for=value.waiting_for,
    )


def event(value: JobEvent) -> job_pb2.JobEvent:
    """Domain JobEvent → proto JobEvent."""
    return job_pb2.JobEvent(
        job_id=value.job_id,
        seq=value.seq,
        type=value.type,
        ts=value.ts,
        data_json=json.dumps(value.data, ensure_ascii=False, allow_nan=False, default=str)
        if _json_safe(value.data)
        else json.dumps(_sanitize(value.data), ensure_ascii=False, default=str),
    )


def _json_safe(data: Any) -> bool:
    try:
        json.dumps(data, allow_nan=False, default=str)
    except ValueError:
        return False
    return True


def _sanitize(data: Any) -> Any:
    if isinstance(data, float) and not math.isfinite(data):
        return None
    if isinstance(data, dict):
        return {k: _sanitize(v) for k, v in data.items()}
    if isinstance(data, list | tuple):
        return [_sanitize(v) for v in data]
    return data


def submit_request(request: job_pb2.SubmitJobRequest, *, remote: bool = False) -> SubmitRequest:
    """SubmitJobRequest → domain SubmitRequest (``remote``: the client came over TCP)."""
    return SubmitRequest(
        request_id=request.request_id,
        data_digest=request.data_digest,
        data_name=request.data_name,
        config_yaml=request.config_yaml,
        config_name=request.config_name,
        output_dir=request.output_dir,
        pipeline_id=request.pipeline_id,
        resume=request.resume,
        dry_run=request.dry_run,
        client_cwd=request.client_cwd,
        remote=remote,
    )


_CHAT_MODELS = {"tuned": job_pb2.CHAT_MODEL_TUNED, "base": job_pb2.CHAT_MODEL_BASE}
_CHANNELS = {"reasoning": job_pb2.CHANNEL_REASONING, "answer": job_pb2.CHANNEL_ANSWER}


def generate_params(request: job_pb2.GenerateRequest) -> GenerateParams:
    """GenerateRequest → checked GenerateParams (unset sampling fields take the model card's values)."""
    return chat_policy.generate_params(
        [(m.role, m.content) for m in request.messages],
        max_new_tokens=request.max_new_tokens,
        temperature=request.temperature if request.HasField("temperature") else None,
        top_p=request.top_p if request.HasField("top_p") else None,
        top_k=request.top_k if request.HasField("top_k") else None,
        seed=request.seed if request.HasField("seed") else None,
        compare=request.compare,
    )


def chat_chunk(event: ChatEvent) -> job_pb2.GenerateChunk:
    """A chat event → GenerateChunk."""
    if isinstance(event, ChatStatus):
        return job_pb2.GenerateChunk(
            status=job_pb2.GenerateStatus(state=event.state, message=event.message, device=event.device)
        )
    if isinstance(event, ChatPiece):
        return job_pb2.GenerateChunk(
            piece=job_pb2.GeneratePiece(
                model=_CHAT_MODELS[event.model], channel=_CHANNELS[event.channel], text=event.text
            )
        )
    return job_pb2.GenerateChunk(
        done=job_pb2.GenerateDone(
            model=_CHAT_MODELS[event.model],
            reasoning=event.reasoning,
            answer=event.answer,
            prompt_tokens=event.prompt_tokens,
            generated_tokens=event.generated_tokens,
            finish_reason=event.finish_reason,
        )
    )


def serving_check(check: ServingCheck) -> job_pb2.ExportChunk:
    """The vLLM serving check → the ExportChunk that carries it."""
    return job_pb2.ExportChunk(
        serving=job_pb2.ServingCheck(
            loadable=check.loadable,
            problems=check.problems,
            base_model=check.base_model,
            name=check.name,
            rank=check.rank,
            max_lora_rank=check.max_lora_rank,
        )
    )


def export_progress(step: ExportStep) -> job_pb2.ExportChunk:
    """Merged-export progress → the ExportChunk that carries it."""
    return job_pb2.ExportChunk(
        progress=job_pb2.ExportProgress(phase=step.phase, done=step.done, total=step.total)
    )
