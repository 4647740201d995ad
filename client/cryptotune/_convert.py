"""Proto messages → SDK dataclasses (the client half of the serde layer)."""

from __future__ import annotations

import functools
import json
from typing import TYPE_CHECKING, Any

from cryptotune import types as t
from cryptotune._lazy import LazyModule

if TYPE_CHECKING:
    from cryptotune.proto.v1 import common_pb2, data_pb2, gpu_pb2, job_pb2
else:  # converting one service's replies imports only that service's generated code
    job_pb2 = LazyModule("cryptotune.proto.v1.job_pb2")


@functools.cache
def _states() -> dict[int, t.JobState]:
    return {
        job_pb2.JOB_STATE_QUEUED: t.JobState.QUEUED,
        job_pb2.JOB_STATE_RUNNING: t.JobState.RUNNING,
        job_pb2.JOB_STATE_SUCCEEDED: t.JobState.SUCCEEDED,
        job_pb2.JOB_STATE_FAILED: t.JobState.FAILED,
        job_pb2.JOB_STATE_CANCELLED: t.JobState.CANCELLED,
        job_pb2.JOB_STATE_CANCELLING: t.JobState.CANCELLING,
        job_pb2.JOB_STATE_RECOVERING: t.JobState.RECOVERING,
    }


def config_issue(issue: common_pb2.Issue) -> t.ConfigIssue:
    return t.ConfigIssue(path=issue.path, line=issue.line or None, message=issue.message)


def _gpu(g: gpu_pb2.Gpu) -> t.GpuInfo:
    return t.GpuInfo(
        index=g.index,
        uuid=g.uuid,
        name=g.name,
        memory_total_mb=g.memory_total_mb,
        memory_used_mb=g.memory_used_mb,
        utilization_percent=g.utilization_percent,
        temperature_c=g.temperature_c,
        owner_job_id=g.owner_job_id,
    )


def _cluster_node(n: gpu_pb2.ClusterNode) -> t.ClusterNode:
    return t.ClusterNode(
        node_id=n.node_id,
        address=n.address,
        hostname=n.hostname,
        alive=n.alive,
        gpus=[_gpu(g) for g in n.gpus],
        cpus=n.cpus,
        local=n.local,
        held_by=[t.ClusterHold(job_id=h.job_id, gpus=h.gpus, cpus=h.cpus) for h in n.held_by],
    )


def gpu_list(msg: gpu_pb2.ListGpusResponse) -> t.GpuList:
    rec = msg.recommendation
    attached = bool(msg.ray_address)
    return t.GpuList(
        gpus=[_gpu(g) for g in msg.gpus],
        recommendation=t.Recommendation(
            model=rec.model,
            strategy=rec.strategy,
            world_size=rec.world_size,
            per_device_batch_size=rec.per_device_batch_size,
            gradient_accumulation_steps=rec.gradient_accumulation_steps,
            precision=rec.precision,
            gradient_checkpointing=rec.gradient_checkpointing,
            reason=rec.reason,
        ),
        note=msg.note,
        nodes=[_cluster_node(n) for n in msg.nodes] if attached else None,
        ray_address=msg.ray_address,
        cluster_note=msg.cluster_note,
    )


def _lengths(msg: data_pb2.LengthStats) -> t.LengthStats:
    return t.LengthStats(min=msg.min, p50=msg.p50, p90=msg.p90, p99=msg.p99, max=msg.max)


def _record_issue(msg: data_pb2.RecordIssue) -> t.RecordIssue:
    return t.RecordIssue(line=msg.line, index=msg.index, field=msg.field, message=msg.message)


def inspection(msg: data_pb2.InspectDataResponse) -> t.DataInspection:
    return t.DataInspection(
        format=msg.format,
        source_format=msg.source_format,
        records_total=msg.records_total,
        records_valid=msg.records_valid,
        records_invalid=msg.records_invalid,
        errors=[_record_issue(e) for e in msg.errors],
        warnings=[_record_issue(w) for w in msg.warnings],
        difficulty_counts=dict(sorted(msg.difficulty_counts.items())),
        with_thinking=msg.with_thinking,
        crypto_terms_top=[(c.term, c.count) for c in msg.crypto_terms_top],
        duplicates=msg.duplicates,
        token_lengths=_lengths(msg.token_lengths),
        token_lengths_by_part={k: _lengths(v) for k, v in sorted(msg.token_lengths_by_part.items())},
        over_max_seq_length=msg.over_max_seq_length,
        over_max_seq_length_indices=list(msg.over_max_seq_length_indices),
        max_seq_length=msg.max_seq_length,
        tokenizer=msg.tokenizer,
        samples=[
            t.DataSample(
                index=s.index,
                line=s.line,
                record=_json_object(s.record_json),
                rendered_text=s.rendered_text,
                trained_text=s.trained_text,
                tokens=s.tokens,
            )
            for s in msg.samples
        ],
    )


def _json_object(text: str) -> dict[str, Any]:
    if not text:
        return {}
    value = json.loads(text)
    return value if isinstance(value, dict) else {"value": value}


def _optional(value: float, present: bool) -> float | None:
    return value if present else None


def job(msg: job_pb2.Job) -> t.Job:
    p = msg.progress
    started = p.step > 0
    return t.Job(
        job_id=msg.job_id,
        pipeline_id=msg.pipeline_id,
        state=_states().get(msg.state, t.JobState.UNKNOWN),
        stage=msg.stage,
        stages=[
            t.StageStatus(name=s.name, state=t.StageState.parse(s.state), seconds=s.seconds)
            for s in msg.stages
        ],
        progress=t.Progress(
            step=p.step,
            total_steps=p.total_steps,
            epoch=p.epoch,
            loss=_optional(p.loss, started),
            learning_rate=_optional(p.learning_rate, started),
            tokens_per_second=_optional(p.tokens_per_second, started),
            eta_seconds=_optional(p.eta_seconds, started),
        ),
        output_dir=msg.output_dir,
        failure_reason=msg.failure_reason,
        created_at=msg.created_at,
        updated_at=msg.updated_at,
        dry_run=msg.dry_run,
        resumed_from=msg.resumed_from,
        plan=_json_object(msg.plan_json) if msg.plan_json else None,
        device=msg.device,
        waiting_for=msg.waiting_for,
    )


def event(msg: job_pb2.JobEvent) -> t.JobEvent:
    return t.JobEvent(
        job_id=msg.job_id, seq=msg.seq, type=msg.type, ts=msg.ts, data=_json_object(msg.data_json)
    )


@functools.cache
def _chat_models() -> dict[int, str]:  # a function: the job stubs load only when a chat is converted
    return {job_pb2.CHAT_MODEL_TUNED: "tuned", job_pb2.CHAT_MODEL_BASE: "base"}


@functools.cache
def _channels() -> dict[int, str]:
    return {job_pb2.CHANNEL_REASONING: "reasoning", job_pb2.CHANNEL_ANSWER: "answer"}


def chat_event(msg: job_pb2.GenerateChunk) -> t.ChatEvent | None:
    """A GenerateChunk as a typed chat event (None for a kind this client does not know)."""
    kind = msg.WhichOneof("kind")
    if kind == "status":
        return t.ChatStatus(state=msg.status.state, message=msg.status.message, device=msg.status.device)
    if kind == "piece":
        return t.ChatPiece(
            model=_chat_models().get(msg.piece.model, "tuned"),
            channel=_channels().get(msg.piece.channel, "answer"),
            text=msg.piece.text,
        )
    if kind == "done":
        return t.ChatDone(
            model=_chat_models().get(msg.done.model, "tuned"),
            reasoning=msg.done.reasoning,
            answer=msg.done.answer,
            prompt_tokens=msg.done.prompt_tokens,
            generated_tokens=msg.done.generated_tokens,
            finish_reason=msg.done.finish_reason,
        )
    return None


def serving_check(msg: job_pb2.ServingCheck) -> t.ServingCheck:
    """The daemon's vLLM serving check."""
    return t.ServingCheck(
        loadable=msg.loadable,
        problems=list(msg.problems),
        base_model=msg.base_model,
        name=msg.name,
        rank=msg.rank,
        max_lora_rank=msg.max_lora_rank,
    )
