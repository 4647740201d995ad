"""Durable job and event store on SQLite: compare-and-set transitions with gap-free event sequences."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import replace
from pathlib import Path
from types import TracebackType
from typing import Any

from cryptotune_daemon.errors import CryptotuneError, ErrorCode
from cryptotune_daemon.jobs.model import (
    TERMINAL_STATES,
    Job,
    JobEvent,
    JobState,
    Progress,
    StageStatus,
    generate_job_id,
    generate_pipeline_id,
    initial_stages,
    sources_of,
    validate_pipeline_id,
)
from cryptotune_daemon.worker.ray_placement import WAITING_EVENT

SCHEMA_VERSION = 2

# Index i holds the script that upgrades a database from user_version i to i + 1.
_MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE jobs (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        job_id TEXT NOT NULL UNIQUE,
        pipeline_id TEXT NOT NULL,
        request_id TEXT NOT NULL UNIQUE,
        state TEXT NOT NULL,
        stage TEXT NOT NULL DEFAULT '',
        stages_json TEXT NOT NULL,
        progress_json TEXT NOT NULL,
        output_dir TEXT NOT NULL,
        failure_reason TEXT NOT NULL DEFAULT '',
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        dry_run INTEGER NOT NULL,
        resumed_from TEXT NOT NULL DEFAULT '',
        plan_json TEXT,
        device TEXT NOT NULL DEFAULT '',
        spec_json TEXT NOT NULL,
        worker_pid INTEGER,
        worker_started_at REAL,
        events_offset INTEGER NOT NULL DEFAULT 0,
        retries INTEGER NOT NULL DEFAULT 0,
        gpu_uuids_json TEXT NOT NULL DEFAULT '[]'
    );
    CREATE INDEX jobs_by_pipeline ON jobs (pipeline_id, id);
    CREATE INDEX jobs_by_state ON jobs (state, id);
    CREATE TABLE events (
        job_id TEXT NOT NULL REFERENCES jobs (job_id),
        seq INTEGER NOT NULL,
        type TEXT NOT NULL,
        ts REAL NOT NULL,
        data_json TEXT NOT NULL,
        PRIMARY KEY (job_id, seq)
    ) WITHOUT ROWID;
    """,
    # v2: what a queued job waits for (the newest ``waiting`` event of a Ray job's driver).
    """
    ALTER TABLE jobs ADD COLUMN waiting_for TEXT NOT NULL DEFAULT '';
    """,
)
assert len(_MIGRATIONS) == SCHEMA_VERSION

_JOB_COLUMNS = (
    "job_id, pipeline_id, request_id, state, stage, stages_json, progress_json, output_dir, "
    "failure_reason, created_at, updated_at, dry_run, resumed_from, plan_json, device, spec_json, "
    "worker_pid, worker_started_at, events_offset, retries, gpu_uuids_json, waiting_for"
)

_BUSY_TIMEOUT_MS = 10_000
_DEFAULT_LIST_LIMIT = 50
_NONTERMINAL_VALUES = tuple(s.value for s in JobState if s not in TERMINAL_STATES)
_TERMINAL_VALUES = frozenset(s.value for s in TERMINAL_STATES)

# "state" events are the audit trail of the compare-and-set; only transition() may write them.
_RESERVED_EVENT_TYPES = frozenset({"state"})

# Primary result codes (extended codes carry them in the low byte).
_RESOURCE_ERROR_CODES = frozenset({sqlite3.SQLITE_FULL, sqlite3.SQLITE_IOERR})
_RESOURCE_ERROR_MESSAGES = ("database or disk is full", "disk i/o error")


def _is_resource_error(exc: sqlite3.Error) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    if isinstance(code, int) and (code & 0xFF) in _RESOURCE_ERROR_CODES:
        return True
    text = str(exc).lower()
    return any(message in text for message in _RESOURCE_ERROR_MESSAGES)


def _dumps(value: Any, what: str) -> str:
    try:
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    except (TypeError, ValueError) as exc:
        raise CryptotuneError(ErrorCode.REQUEST_INVALID, f"{what} is not JSON-serialisable: {exc}") from exc


def _not_found(ref: str) -> CryptotuneError:
    return CryptotuneError(ErrorCode.JOB_NOT_FOUND, f"no job or pipeline named {ref!r}")


def _stages_to_json(stages: Sequence[StageStatus]) -> str:
    return _dumps([{"name": s.name, "state": s.state, "seconds": s.seconds} for s in stages], "stages")


def _stages_from_json(text: str) -> tuple[StageStatus, ...]:
    return tuple(StageStatus(str(s["name"]), str(s["state"]), float(s["seconds"])) for s in json.loads(text))


def _row_to_job(row: sqlite3.Row) -> Job:
    plan_json = row["plan_json"]
    return Job(
        job_id=row["job_id"],
        pipeline_id=row["pipeline_id"],
        request_id=row["request_id"],
        state=JobState(row["state"]),
        stage=row["stage"],
        stages=_stages_from_json(row["stages_json"]),
        progress=Progress(**json.loads(row["progress_json"])),
        output_dir=row["output_dir"],
        failure_reason=row["failure_reason"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        dry_run=bool(row["dry_run"]),
        resumed_from=row["resumed_from"],
        plan=json.loads(plan_json) if plan_json is not None else None,
        device=row["device"],
        spec=json.loads(row["spec_json"]),
        worker_pid=row["worker_pid"],
        worker_started_at=row["worker_started_at"],
        events_offset=row["events_offset"],
        retries=row["retries"],
        gpu_uuids=tuple(json.loads(row["gpu_uuids_json"])),
        waiting_for=row["waiting_for"],
    )


def _row_to_event(row: sqlite3.Row) -> JobEvent:
    return JobEvent(
        job_id=row["job_id"],
        seq=row["seq"],
        type=row["type"],
        ts=row["ts"],
        data=json.loads(row["data_json"]),
    )


def _set_stage(
    stages: tuple[StageStatus, ...], name: str, state: str, seconds: float | None = None
) -> tuple[StageStatus, ...]:
    return tuple(
        replace(s, state=state, seconds=s.seconds if seconds is None else seconds) if s.name == name else s
        for s in stages
    )


def fold_event(job: Job, event_type: str, data: dict[str, Any]) -> Job:
    """Apply one event to a job's summary.

    Data contracts (other types, and unknown stage names, leave the summary unchanged):

    - ``stage_started`` ``{"stage": X}``: ``stage`` becomes X, X becomes running.
    - ``stage_completed`` ``{"stage": X, "seconds": S}``: X becomes done, taking S seconds.
    - ``stage_skipped`` ``{"stage": X}``: X becomes skipped.
    - ``failed`` ``{"stage": X?}``: X (default: the current stage) becomes failed.
    - ``progress`` ``{step, total_steps, epoch, loss, ...}``: the numeric fields present are updated.
    - ``plan`` ``{...}``: the event's data is the plan.
    - ``waiting`` ``{"message": M}``: the job (queued) waits for M; leaving QUEUED clears it.

    Args:
        job: the summary before the event.
        event_type: the event's type.
        data: the event's payload.

    Returns:
        The summary after the event.
    """
    if event_type in {"stage_started", "stage_completed", "stage_skipped", "failed"}:
        name = data.get("stage", job.stage if event_type == "failed" else None)
        if not isinstance(name, str) or job.stage_status(name) is None:
            return job
        if event_type == "stage_started":
            return replace(job, stage=name, stages=_set_stage(job.stages, name, "running"))
        if event_type == "stage_completed":
            raw = data.get("seconds")
            seconds = float(raw) if isinstance(raw, int | float) and not isinstance(raw, bool) else None
            return replace(job, stages=_set_stage(job.stages, name, "done", seconds))
        if event_type == "stage_skipped":
            return replace(job, stages=_set_stage(job.stages, name, "skipped"))
        return replace(job, stages=_set_stage(job.stages, name, "failed"))
    if event_type == "progress":
        return replace(job, progress=job.progress.merged(data))
    if event_type == "plan":
        return replace(job, plan=dict(data))
    if event_type == WAITING_EVENT and job.state is JobState.QUEUED:
        return replace(job, waiting_for=str(data.get("message", "")))
    return job


class JobStore:
    """Jobs and their event logs in one SQLite database (WAL mode, fsync on every commit).

    One connection serves every caller behind a lock, so the store may be used from the
    asyncio loop and from worker threads alike (each call blocks for at most one small
    transaction). Writes run as ``BEGIN IMMEDIATE`` transactions, so a second process on
    the same file would also be serialised rather than interleaved.

    Events of a terminal job are refused with ``JOB_STATE_CONFLICT``: the supervisor must
    ingest the worker's remaining events before it moves the job to a terminal state, or
    put final details into that transition's ``data``.

    Full-disk and I/O errors surface as ``CryptotuneError(RESOURCE_EXHAUSTED)`` after the
    transaction has been rolled back, so the database stays as it was before the call.
    """

    def __init__(self, path: Path) -> None:
        """Open (creating or upgrading when needed) the store at ``path``.

        Args:
            path: the database file; its parent directory is created when missing.

        Raises:
            CryptotuneError: RESOURCE_EXHAUSTED when the disk is full, INTERNAL when the file
                is not a cryptotune database or was written by a newer version.
        """
        self.path = Path(path)
        self._lock = threading.Lock()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            # isolation_level=None: transactions are begun explicitly, never implicitly by the module.
            self._conn = sqlite3.connect(
                str(self.path), isolation_level=None, check_same_thread=False, timeout=_BUSY_TIMEOUT_MS / 1000
            )
        except sqlite3.Error as exc:
            raise self._translate(exc, "open the job database") from exc
        self._conn.row_factory = sqlite3.Row
        try:
            self._conn.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS}")
            mode = self._conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise CryptotuneError(
                    ErrorCode.INTERNAL, f"{self.path}: SQLite refused WAL mode (got {mode!r})"
                )
            # FULL: a committed transition must survive a power cut, not just a process crash.
            self._conn.execute("PRAGMA synchronous = FULL")
            self._conn.execute("PRAGMA foreign_keys = ON")
            self._migrate()
        except sqlite3.Error as exc:
            self._conn.close()
            raise self._translate(exc, "open the job database") from exc
        except CryptotuneError:
            self._conn.close()
            raise

    # -- lifecycle -------------------------------------------------------------------------------------

    def close(self) -> None:
        """Close the database; further calls on this store fail."""
        with self._lock:
            self._conn.close()

    def __enter__(self) -> JobStore:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _migrate(self) -> None:
        version = int(self._conn.execute("PRAGMA user_version").fetchone()[0])
        if version > SCHEMA_VERSION:
            raise CryptotuneError(
                ErrorCode.INTERNAL,
                f"{self.path} uses job-store schema v{version}, newer than this daemon's v{SCHEMA_VERSION}; "
                "upgrade cryptotune or point the daemon at another state directory",
            )
        if version == SCHEMA_VERSION:
            return
        with self._write():
            # Re-read inside the write lock: another process may have migrated meanwhile.
            version = int(self._conn.execute("PRAGMA user_version").fetchone()[0])
            for script in _MIGRATIONS[version:]:
                for statement in script.split(";"):
                    if statement.strip():
                        self._conn.execute(statement)
            self._conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    # -- transactions ----------------------------------------------------------------------------------

    def _translate(self, exc: sqlite3.Error, action: str) -> CryptotuneError:
        if _is_resource_error(exc):
            return CryptotuneError(
                ErrorCode.RESOURCE_EXHAUSTED,
                f"could not {action}: the daemon's state disk is full or failing ({exc}); "
                f"free space under {self.path.parent} and retry",
            )
        if isinstance(exc, sqlite3.DatabaseError) and "not a database" in str(exc).lower():
            return CryptotuneError(ErrorCode.INTERNAL, f"{self.path} is not a cryptotune job database: {exc}")
        return CryptotuneError(ErrorCode.INTERNAL, f"job database error while trying to {action}: {exc}")

    @contextmanager
    def _write(self, action: str = "update the job database") -> Iterator[sqlite3.Connection]:
        """Run the block as one write transaction; callers must already hold ``self._lock``."""
        conn = self._conn
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise self._translate(exc, action) from exc
        try:
            yield conn
            conn.execute("COMMIT")
        except BaseException as exc:
            # SQLite may already have rolled back on its own (e.g. after SQLITE_FULL).
            if conn.in_transaction:
                with suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            if isinstance(exc, sqlite3.Error):
                raise self._translate(exc, action) from exc
            raise

    def _read(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        with self._lock:
            try:
                return self._conn.execute(sql, params).fetchall()
            except sqlite3.Error as exc:
                raise self._translate(exc, "read the job database") from exc

    # -- helpers that run inside a transaction ---------------------------------------------------------

    def _load(self, conn: sqlite3.Connection, job_id: str) -> Job:
        row = conn.execute(f"SELECT {_JOB_COLUMNS} FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
        if row is None:
            raise _not_found(job_id)
        return _row_to_job(row)

    def _save_summary(self, conn: sqlite3.Connection, job: Job, now: float) -> None:
        conn.execute(
            "UPDATE jobs SET stage = ?, stages_json = ?, progress_json = ?, plan_json = ?, waiting_for = ?, "
            "updated_at = ? WHERE job_id = ?",
            (
                job.stage,
                _stages_to_json(job.stages),
                _dumps(job.progress.to_dict(), "progress"),
                None if job.plan is None else _dumps(job.plan, "plan"),
                job.waiting_for,
                now,
                job.job_id,
            ),
        )

    def _insert_events(
        self, conn: sqlite3.Connection, job_id: str, events: Iterable[tuple[str, dict[str, Any], float]]
    ) -> list[JobEvent]:
        # The next seq is read inside the same write transaction, so it is gap-free and never reused.
        last = int(
            conn.execute("SELECT COALESCE(MAX(seq), 0) FROM events WHERE job_id = ?", (job_id,)).fetchone()[0]
        )
        written: list[JobEvent] = []
        for event_type, data, ts in events:
            last += 1
            conn.execute(
                "INSERT INTO events (job_id, seq, type, ts, data_json) VALUES (?, ?, ?, ?, ?)",
                (job_id, last, event_type, ts, _dumps(data, f"data of event {event_type!r}")),
            )
            written.append(JobEvent(job_id=job_id, seq=last, type=event_type, ts=ts, data=data))
        return written

    def _append_folded(
        self, conn: sqlite3.Connection, job_id: str, events: Sequence[tuple[str, dict[str, Any], float]]
    ) -> list[JobEvent]:
        job = self._load(conn, job_id)
        if job.is_terminal:
            raise CryptotuneError(
                ErrorCode.JOB_STATE_CONFLICT,
                f"job {job_id} is {job.state.value}; its event log is closed",
            )
        for event_type, data, _ in events:
            if not isinstance(event_type, str) or not event_type:
                raise CryptotuneError(ErrorCode.REQUEST_INVALID, "event type must be a non-empty string")
            if event_type in _RESERVED_EVENT_TYPES:
                raise CryptotuneError(
                    ErrorCode.REQUEST_INVALID, f"event type {event_type!r} is reserved for state transitions"
                )
            if not isinstance(data, dict):
                raise CryptotuneError(
                    ErrorCode.REQUEST_INVALID, f"data of event {event_type!r} must be a dict"
                )
            job = fold_event(job, event_type, data)
        written = self._insert_events(conn, job_id, events)
        self._save_summary(conn, job, time.time())
        return written

    # -- jobs ------------------------------------------------------------------------------------------

    def create_job(
        self,
        *,
        request_id: str,
        pipeline_id: str,
        output_dir: str,
        spec: dict[str, Any],
        dry_run: bool,
        resumed_from: str = "",
        now: float | None = None,
    ) -> tuple[Job, bool]:
        """Create a queued job, or return the one already created for ``request_id``.

        Args:
            request_id: the client's idempotency key (non-empty). A repeated key returns the
                job it created first, whatever the other arguments say.
            pipeline_id: the pipeline id; "" lets the store generate a unique one.
            output_dir: absolute output directory on the daemon's machine.
            spec: opaque JSON the daemon needs to run the job.
            dry_run: whether the job only plans.
            resumed_from: ``PIPELINE_ID`` or ``PIPELINE_ID@STEP`` when resuming. Several jobs
                may share a pipeline id only when each later one resumes that pipeline.
            now: creation time (Unix seconds); defaults to the current time.

        Returns:
            ``(job, existing)``: existing is True when the request id had been seen before.

        Raises:
            CryptotuneError: REQUEST_INVALID for an empty request id, an invalid pipeline id or
                a spec that is not JSON; JOB_EXISTS when the pipeline id is taken and this is
                not a resume of it; JOB_STATE_CONFLICT when resuming a pipeline that still has
                an unfinished job; RESOURCE_EXHAUSTED when the disk is full.
        """
        if not request_id:
            raise CryptotuneError(ErrorCode.REQUEST_INVALID, "request_id must not be empty")
        if pipeline_id:
            validate_pipeline_id(pipeline_id)
        spec_json = _dumps(spec, "job spec")
        created = time.time() if now is None else now
        with self._lock, self._write("create the job") as conn:
            row = conn.execute(
                f"SELECT {_JOB_COLUMNS} FROM jobs WHERE request_id = ?", (request_id,)
            ).fetchone()
            if row is not None:
                return _row_to_job(row), True
            if not pipeline_id:
                pipeline_id = generate_pipeline_id()
                while conn.execute("SELECT 1 FROM jobs WHERE pipeline_id = ?", (pipeline_id,)).fetchone():
                    pipeline_id = generate_pipeline_id()
            else:
                self._check_pipeline_free(conn, pipeline_id, resumed_from)
            job = Job(
                job_id=generate_job_id(),
                pipeline_id=pipeline_id,
                request_id=request_id,
                state=JobState.QUEUED,
                stages=initial_stages(),
                output_dir=output_dir,
                created_at=created,
                updated_at=created,
                dry_run=dry_run,
                resumed_from=resumed_from,
                spec=json.loads(spec_json),
            )
            while conn.execute("SELECT 1 FROM jobs WHERE job_id = ?", (job.job_id,)).fetchone():
                job = replace(job, job_id=generate_job_id())
            conn.execute(
                f"INSERT INTO jobs ({_JOB_COLUMNS}) VALUES ({', '.join('?' * 22)})",
                (
                    job.job_id,
                    job.pipeline_id,
                    job.request_id,
                    job.state.value,
                    job.stage,
                    _stages_to_json(job.stages),
                    _dumps(job.progress.to_dict(), "progress"),
                    job.output_dir,
                    job.failure_reason,
                    job.created_at,
                    job.updated_at,
                    int(job.dry_run),
                    job.resumed_from,
                    None,
                    job.device,
                    spec_json,
                    None,
                    None,
                    0,
                    0,
                    "[]",
                    job.waiting_for,
                ),
            )
            self._insert_events(conn, job.job_id, [("state", {"state": JobState.QUEUED.value}, created)])
            return job, False

    def _check_pipeline_free(self, conn: sqlite3.Connection, pipeline_id: str, resumed_from: str) -> None:
        rows = conn.execute(
            "SELECT job_id, state FROM jobs WHERE pipeline_id = ? ORDER BY id DESC", (pipeline_id,)
        ).fetchall()
        if not rows:
            return
        # A resume names the pipeline, optionally with "@STEP"; only then may the id be reused.
        if resumed_from.partition("@")[0] != pipeline_id:
            raise CryptotuneError(
                ErrorCode.JOB_EXISTS,
                f"pipeline id {pipeline_id!r} is already used by job {rows[0]['job_id']}; "
                f"pick another --pipeline-id, or continue it with --resume {pipeline_id}",
            )
        active = [r for r in rows if r["state"] not in _TERMINAL_VALUES]
        if active:
            # Two live jobs of one pipeline would write the same checkpoints.
            raise CryptotuneError(
                ErrorCode.JOB_STATE_CONFLICT,
                f"pipeline {pipeline_id!r} still has job {active[0]['job_id']} ({active[0]['state']}); "
                "wait for it to finish or cancel it before resuming",
            )

    def get(self, ref: str) -> Job:
        """Return a job by job id or, failing that, the newest job of a pipeline id.

        Args:
            ref: a job id or a pipeline id.

        Raises:
            CryptotuneError: JOB_NOT_FOUND when nothing matches.
        """
        if not ref:
            raise CryptotuneError(ErrorCode.REQUEST_INVALID, "a job id or pipeline id is required")
        # A job id wins over a pipeline id that happens to spell the same.
        rows = self._read(f"SELECT {_JOB_COLUMNS} FROM jobs WHERE job_id = ?", (ref,)) or self._read(
            f"SELECT {_JOB_COLUMNS} FROM jobs WHERE pipeline_id = ? ORDER BY id DESC LIMIT 1", (ref,)
        )
        if not rows:
            raise _not_found(ref)
        return _row_to_job(rows[0])

    def find_by_request(self, request_id: str) -> Job | None:
        """Return the job created for a client request id, or None when there is none."""
        rows = self._read(f"SELECT {_JOB_COLUMNS} FROM jobs WHERE request_id = ?", (request_id,))
        return _row_to_job(rows[0]) if rows else None

    def list_jobs(self, limit: int = _DEFAULT_LIST_LIMIT, states: set[JobState] | None = None) -> list[Job]:
        """Return jobs newest first.

        Args:
            limit: the most jobs to return; 0 or less means the default (50).
            states: only jobs in these states (all when None).
        """
        if limit <= 0:
            limit = _DEFAULT_LIST_LIMIT
        if states is not None and not states:
            return []
        where = ""
        params: list[Any] = []
        if states is not None:
            where = f"WHERE state IN ({', '.join('?' * len(states))})"
            params.extend(sorted(s.value for s in states))
        params.append(limit)
        rows = self._read(f"SELECT {_JOB_COLUMNS} FROM jobs {where} ORDER BY id DESC LIMIT ?", params)
        return [_row_to_job(r) for r in rows]

    def count_by_state(self) -> dict[JobState, int]:
        """How many jobs are in each state (every state present, zero when none)."""
        counts = dict.fromkeys(JobState, 0)
        for row in self._read("SELECT state, COUNT(*) AS n FROM jobs GROUP BY state"):
            counts[JobState(row["state"])] = int(row["n"])
        return counts

    def list_nonterminal(self) -> list[Job]:
        """Return every job that is not in a terminal state, oldest first (the order to reschedule in)."""
        rows = self._read(
            f"SELECT {_JOB_COLUMNS} FROM jobs WHERE state IN ({', '.join('?' * len(_NONTERMINAL_VALUES))}) "
            "ORDER BY id",
            _NONTERMINAL_VALUES,
        )
        return [_row_to_job(r) for r in rows]

    def transition(
        self,
        job_id: str,
        to: JobState,
        *,
        expected: set[JobState] | None = None,
        reason: str = "",
        data: dict[str, Any] | None = None,
    ) -> Job | None:
        """Move a job to ``to`` if it is in an allowed (and expected) state, recording a ``state`` event.

        The state check and the write are one compare-and-set, so of two callers racing
        from the same state exactly one wins. Moving to FAILED marks a still-running stage
        ``failed``; moving to CANCELLED marks it ``cancelled``.

        Args:
            job_id: the job.
            to: the target state.
            expected: states the caller believes the job is in; the move happens only from one
                of them (None: from any state the transition table allows).
            reason: why (stored as ``failure_reason`` for FAILED and CANCELLED, and in the event).
            data: extra fields for the ``state`` event; they cannot override ``state``.

        Returns:
            The updated job, or None when the job's state did not allow the move.

        Raises:
            CryptotuneError: JOB_NOT_FOUND for an unknown job; RESOURCE_EXHAUSTED when the disk is full.
        """
        sources = sources_of(to)
        if expected is not None:
            sources = sources & frozenset(expected)
        payload: dict[str, Any] = {"state": to.value}
        if reason:
            payload["reason"] = reason
        payload.update({k: v for k, v in (data or {}).items() if k != "state"})
        now = time.time()
        with self._lock, self._write("record the job's state") as conn:
            job = self._load(conn, job_id)
            if not sources:
                return None
            values = tuple(sorted(s.value for s in sources))
            # What a queued job waited for is over once it leaves QUEUED (or is queued again).
            sets = "state = ?, updated_at = ?, waiting_for = ''"
            params: list[Any] = [to.value, now]
            if to in {JobState.FAILED, JobState.CANCELLED} and reason:
                sets += ", failure_reason = ?"
                params.append(reason)
            cursor = conn.execute(
                f"UPDATE jobs SET {sets} WHERE job_id = ? AND state IN ({', '.join('?' * len(values))})",
                (*params, job_id, *values),
            )
            if cursor.rowcount != 1:
                return None
            self._insert_events(conn, job_id, [("state", payload, now)])
            if to in {JobState.FAILED, JobState.CANCELLED}:
                # An interrupted stage would otherwise show as running forever; a cancel did not fail it.
                interrupted = "cancelled" if to is JobState.CANCELLED else "failed"
                stages = tuple(
                    replace(s, state=interrupted) if s.state == "running" else s for s in job.stages
                )
                if stages != job.stages:
                    conn.execute(
                        "UPDATE jobs SET stages_json = ? WHERE job_id = ?", (_stages_to_json(stages), job_id)
                    )
            return self._load(conn, job_id)

    # -- events ----------------------------------------------------------------------------------------

    def ingest_worker_events(
        self,
        job_id: str,
        lines: list[tuple[str, dict[str, Any], float]],
        new_offset: int,
        *,
        expected_offset: int | None = None,
    ) -> list[JobEvent]:
        """Append a batch of worker events and advance the job's event-file offset, atomically.

        Either every event is stored and the offset moves, or nothing changes, so a crash
        never duplicates nor loses worker events.

        Args:
            job_id: the job.
            lines: ``(type, data, ts)`` of each event, in file order.
            new_offset: byte offset of the event file after the last ingested line.
            expected_offset: when given, the batch applies only if the stored offset still
                equals it (guards against two readers of the same file).

        Returns:
            The stored events.

        Raises:
            CryptotuneError: JOB_NOT_FOUND; JOB_STATE_CONFLICT when the job is terminal or the
                offset moved; REQUEST_INVALID for a bad event; RESOURCE_EXHAUSTED.
        """
        if new_offset < 0:
            raise CryptotuneError(ErrorCode.REQUEST_INVALID, f"event offset must be >= 0, got {new_offset}")
        with self._lock, self._write("record the worker's events") as conn:
            if expected_offset is not None:
                current = self._load(conn, job_id).events_offset
                if current != expected_offset:
                    raise CryptotuneError(
                        ErrorCode.JOB_STATE_CONFLICT,
                        f"job {job_id}: event offset is {current}, expected {expected_offset}",
                    )
            written = self._append_folded(conn, job_id, lines)
            conn.execute("UPDATE jobs SET events_offset = ? WHERE job_id = ?", (new_offset, job_id))
            return written

    def events_after(self, job_id: str, after_seq: int, limit: int = 1000) -> list[JobEvent]:
        """Return a job's events with seq greater than ``after_seq``, in order.

        Args:
            job_id: the job.
            after_seq: the last seq the caller has (0 for all).
            limit: the most events to return.

        Raises:
            CryptotuneError: JOB_NOT_FOUND for an unknown job.
        """
        with self._lock:
            try:
                if self._conn.execute("SELECT 1 FROM jobs WHERE job_id = ?", (job_id,)).fetchone() is None:
                    raise _not_found(job_id)
                rows = self._conn.execute(
                    "SELECT job_id, seq, type, ts, data_json FROM events WHERE job_id = ? AND seq > ? "
                    "ORDER BY seq LIMIT ?",
                    (job_id, after_seq, max(0, limit)),
                ).fetchall()
            except sqlite3.Error as exc:
                raise self._translate(exc, "read job events") from exc
        return [_row_to_event(r) for r in rows]

    # -- bookkeeping -----------------------------------------------------------------------------------

    def _update(self, job_id: str, sets: str, params: Sequence[Any], action: str) -> Job:
        with self._lock, self._write(action) as conn:
            cursor = conn.execute(
                f"UPDATE jobs SET {sets}, updated_at = ? WHERE job_id = ?", (*params, time.time(), job_id)
            )
            if cursor.rowcount != 1:
                raise _not_found(job_id)
            return self._load(conn, job_id)

    def set_worker(self, job_id: str, pid: int | None, started_at: float | None) -> Job:
        """Record the job's worker process (None, None once it is gone).

        Raises:
            CryptotuneError: JOB_NOT_FOUND for an unknown job.
        """
        return self._update(
            job_id, "worker_pid = ?, worker_started_at = ?", (pid, started_at), "record the worker"
        )

    def set_gpus(self, job_id: str, uuids: Sequence[str]) -> Job:
        """Record the GPUs allotted to the job; ``device`` becomes their comma-joined uuids, or "cpu".

        Raises:
            CryptotuneError: JOB_NOT_FOUND for an unknown job.
        """
        ids = [str(u) for u in uuids]
        device = ",".join(ids) if ids else "cpu"
        return self._update(
            job_id,
            "gpu_uuids_json = ?, device = ?",
            (_dumps(ids, "GPU uuids"), device),
            "record the job's GPUs",
        )

    def increment_retries(self, job_id: str) -> int:
        """Count one more restart of the job and return the new count.

        Raises:
            CryptotuneError: JOB_NOT_FOUND for an unknown job.
        """
        return self._update(job_id, "retries = retries + 1", (), "count a retry").retries

    def update_spec(self, job_id: str, spec: dict[str, Any]) -> Job:
        """Replace the job's stored spec.

        Raises:
            CryptotuneError: JOB_NOT_FOUND for an unknown job; REQUEST_INVALID when spec is not JSON.
        """
        return self._update(job_id, "spec_json = ?", (_dumps(spec, "job spec"),), "store the job spec")
