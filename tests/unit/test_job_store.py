"""Unit tests for the job model and the SQLite job store."""

from __future__ import annotations

import re
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cryptotune_daemon.errors import CryptotuneError, ErrorCode
from cryptotune_daemon.jobs.model import (
    STAGES,
    TERMINAL_STATES,
    TRANSITIONS,
    Job,
    JobEvent,
    JobState,
    Progress,
    generate_job_id,
    generate_pipeline_id,
    validate_pipeline_id,
)
from cryptotune_daemon.jobs.store import SCHEMA_VERSION, JobStore

Q, R, S, F, C = JobState.QUEUED, JobState.RUNNING, JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED
CING, REC = JobState.CANCELLING, JobState.RECOVERING

# The shortest path from QUEUED to each state, used to put a fresh job into it.
PATH_TO: dict[JobState, list[JobState]] = {
    Q: [],
    R: [R],
    S: [R, S],
    F: [F],
    C: [C],
    CING: [R, CING],
    REC: [R, REC],
}


@pytest.fixture
def store(tmp_path: Path) -> Iterator[JobStore]:
    s = JobStore(tmp_path / "state" / "jobs.db")
    yield s
    s.close()


def new_job(store: JobStore, name: str, state: JobState = Q, **kwargs: Any) -> Job:
    job, existing = store.create_job(
        request_id=f"req-{name}",
        pipeline_id=kwargs.pop("pipeline_id", name),
        output_dir=f"/out/{name}",
        spec=kwargs.pop("spec", {"config": name}),
        dry_run=False,
        **kwargs,
    )
    assert not existing
    for step in PATH_TO[state]:
        moved = store.transition(job.job_id, step)
        assert moved is not None, f"could not move {job.job_id} to {step}"
        job = moved
    assert job.state is state
    return job


def seqs(store: JobStore, job_id: str, after: int = 0) -> list[int]:
    return [e.seq for e in store.events_after(job_id, after)]


def append(store: JobStore, job_id: str, type: str, data: dict[str, Any]) -> JobEvent:
    """Stores one worker event the way the supervisor ingests events.jsonl (the file offset unchanged)."""
    offset = store.get(job_id).events_offset
    [event] = store.ingest_worker_events(job_id, [(type, data, time.time())], offset)
    return event


def last_seq(store: JobStore, job_id: str) -> int:
    """The seq of a job's newest event."""
    events = store.events_after(job_id, 0, limit=1_000_000)
    return events[-1].seq if events else 0


def code_of(excinfo: pytest.ExceptionInfo[CryptotuneError]) -> ErrorCode:
    return excinfo.value.code


# -- submit -----------------------------------------------------------------------------------------------


def test_create_job_starts_queued_with_one_state_event(store: JobStore) -> None:
    job = new_job(store, "p1")
    assert job.state is Q
    assert job.stage == ""
    assert [s.name for s in job.stages] == list(STAGES)
    assert {s.state for s in job.stages} == {"pending"}
    assert job.progress == Progress()
    [event] = store.events_after(job.job_id, 0)
    assert (event.seq, event.type, event.data) == (1, "state", {"state": "queued"})
    assert store.get(job.job_id) == job


def test_submit_is_idempotent_on_request_id(store: JobStore) -> None:
    first, existing = store.create_job(
        request_id="r", pipeline_id="p1", output_dir="/a", spec={"x": 1}, dry_run=False
    )
    assert not existing
    again, existing = store.create_job(
        request_id="r", pipeline_id="other", output_dir="/b", spec={"x": 2}, dry_run=True
    )
    assert existing
    assert again == first
    assert len(store.list_jobs()) == 1
    assert last_seq(store, first.job_id) == 1
    assert store.find_by_request("r") == first
    assert store.find_by_request("unseen") is None


def test_pipeline_id_must_be_unique_unless_resumed(store: JobStore) -> None:
    first = new_job(store, "p1", F)
    with pytest.raises(CryptotuneError) as excinfo:
        new_job(store, "other-request", pipeline_id="p1")
    assert code_of(excinfo) is ErrorCode.JOB_EXISTS
    assert "--pipeline-id" in excinfo.value.message
    assert "--resume" in excinfo.value.message
    # Resuming with a different pipeline name is not a resume of p1.
    with pytest.raises(CryptotuneError) as excinfo:
        new_job(store, "r2", pipeline_id="p1", resumed_from="p2")
    assert code_of(excinfo) is ErrorCode.JOB_EXISTS

    second = new_job(store, "r3", pipeline_id="p1", resumed_from="p1@200")
    assert second.pipeline_id == "p1"
    assert second.job_id != first.job_id
    assert second.resumed_from == "p1@200"


def test_resume_refused_while_pipeline_has_a_live_job(store: JobStore) -> None:
    new_job(store, "p1", R)
    with pytest.raises(CryptotuneError) as excinfo:
        new_job(store, "r2", pipeline_id="p1", resumed_from="p1")
    assert code_of(excinfo) is ErrorCode.JOB_STATE_CONFLICT


def test_create_job_validates_input_and_generates_pipeline_id(store: JobStore) -> None:
    with pytest.raises(CryptotuneError) as excinfo:
        new_job(store, "x", pipeline_id="a/b")
    assert code_of(excinfo) is ErrorCode.REQUEST_INVALID
    with pytest.raises(CryptotuneError) as excinfo:
        store.create_job(request_id="", pipeline_id="p", output_dir="/o", spec={}, dry_run=False)
    assert code_of(excinfo) is ErrorCode.REQUEST_INVALID
    with pytest.raises(CryptotuneError) as excinfo:
        new_job(store, "y", spec={"bad": object()})
    assert code_of(excinfo) is ErrorCode.REQUEST_INVALID
    assert store.list_jobs() == []

    generated = new_job(store, "z", pipeline_id="")
    assert re.fullmatch(r"pl-\d{8}-\d{6}-[0-9a-f]{6}", generated.pipeline_id)


# -- lookups ----------------------------------------------------------------------------------------------


def test_get_by_job_id_and_by_pipeline_id_returns_newest(store: JobStore) -> None:
    first = new_job(store, "p1", C)
    second = new_job(store, "r2", pipeline_id="p1", resumed_from="p1")
    assert store.get("p1").job_id == second.job_id
    assert store.get(first.job_id).job_id == first.job_id
    with pytest.raises(CryptotuneError) as excinfo:
        store.get("nope")
    assert code_of(excinfo) is ErrorCode.JOB_NOT_FOUND
    assert "nope" in excinfo.value.message


def test_list_jobs_and_list_nonterminal(store: JobStore) -> None:
    a = new_job(store, "a", S)
    b = new_job(store, "b", R)
    c = new_job(store, "c")
    assert [j.job_id for j in store.list_jobs()] == [c.job_id, b.job_id, a.job_id]
    assert [j.job_id for j in store.list_jobs(limit=2)] == [c.job_id, b.job_id]
    assert [j.job_id for j in store.list_jobs(states={S, R})] == [b.job_id, a.job_id]
    assert [j.job_id for j in store.list_nonterminal()] == [b.job_id, c.job_id]


# -- transitions ------------------------------------------------------------------------------------------


def test_second_transition_from_same_expected_state_fails(store: JobStore) -> None:
    job = new_job(store, "p1")
    won = store.transition(job.job_id, R, expected={Q})
    lost = store.transition(job.job_id, R, expected={Q})
    assert won is not None and won.state is R
    assert lost is None
    assert store.get(job.job_id).state is R
    assert seqs(store, job.job_id) == [1, 2]


def test_transition_respects_expected(store: JobStore) -> None:
    job = new_job(store, "p1")
    assert store.transition(job.job_id, F, expected={R}) is None
    assert store.get(job.job_id).state is Q
    assert last_seq(store, job.job_id) == 1


def test_store_enforces_exactly_the_transition_table(store: JobStore) -> None:
    n = 0
    for source in [Q, R, CING, REC]:
        for target in JobState:
            n += 1
            job = new_job(store, f"j{n}", source)
            before = last_seq(store, job.job_id)
            moved = store.transition(job.job_id, target)
            if target in TRANSITIONS[source]:
                assert moved is not None and moved.state is target, (source, target)
                assert last_seq(store, job.job_id) == before + 1
            else:
                assert moved is None, (source, target)
                assert store.get(job.job_id).state is source
                assert last_seq(store, job.job_id) == before


def test_terminal_states_are_immutable(store: JobStore) -> None:
    for terminal in sorted(TERMINAL_STATES, key=lambda s: s.value):
        job = new_job(store, f"t-{terminal.value}", terminal)
        before = last_seq(store, job.job_id)
        for target in JobState:
            assert store.transition(job.job_id, target) is None, (terminal, target)
            assert store.transition(job.job_id, target, expected={terminal}) is None
        with pytest.raises(CryptotuneError) as excinfo:
            append(store, job.job_id, "log", {"line": "late"})
        assert code_of(excinfo) is ErrorCode.JOB_STATE_CONFLICT
        with pytest.raises(CryptotuneError) as excinfo:
            store.ingest_worker_events(job.job_id, [("log", {}, 1.0)], 10)
        assert code_of(excinfo) is ErrorCode.JOB_STATE_CONFLICT
        after = store.get(job.job_id)
        assert after.state is terminal
        assert after.events_offset == 0
        assert last_seq(store, job.job_id) == before


def test_transition_event_and_failure_reason(store: JobStore) -> None:
    job = new_job(store, "p1", R)
    append(store, job.job_id, "stage_started", {"stage": "training"})
    failed = store.transition(job.job_id, F, reason="CUDA out of memory", data={"exit_code": 1, "state": "x"})
    assert failed is not None
    assert failed.failure_reason == "CUDA out of memory"
    # The interrupted stage must not stay "running" forever.
    status = failed.stage_status("training")
    assert status is not None and status.state == "failed"
    last = store.events_after(job.job_id, last_seq(store, job.job_id) - 1)[0]
    assert last.type == "state"
    assert last.data == {"state": "failed", "reason": "CUDA out of memory", "exit_code": 1}


def test_cancel_marks_the_interrupted_stage_cancelled_not_failed(store: JobStore) -> None:
    job = new_job(store, "p1", CING)
    for event, stage in (
        ("stage_started", "init"),
        ("stage_completed", "init"),
        ("stage_started", "training"),
    ):
        append(store, job.job_id, event, {"stage": stage})
    cancelled = store.transition(job.job_id, C, reason="cancelled by user")
    assert cancelled is not None and cancelled.state is C
    states = {s.name: s.state for s in cancelled.stages}
    assert states["training"] == "cancelled"
    assert states["init"] == "done"
    assert {states[s] for s in STAGES if s not in ("init", "training")} == {"pending"}
    # As stored, not just as returned.
    assert {s.name: s.state for s in store.get(job.job_id).stages} == states
    assert cancelled.failure_reason == "cancelled by user"


def test_transition_of_unknown_job_raises(store: JobStore) -> None:
    with pytest.raises(CryptotuneError) as excinfo:
        store.transition("job-missing", R)
    assert code_of(excinfo) is ErrorCode.JOB_NOT_FOUND


# -- events -----------------------------------------------------------------------------------------------


def test_seq_is_gap_free_across_transitions_and_events_and_replays_from_any_seq(store: JobStore) -> None:
    job = new_job(store, "p1")
    store.transition(job.job_id, R)
    for i in range(5):
        append(store, job.job_id, "log", {"i": i})
    store.transition(job.job_id, CING)
    append(store, job.job_id, "log", {"i": 5})
    store.transition(job.job_id, C, reason="user")
    n = 10
    assert last_seq(store, job.job_id) == n
    assert seqs(store, job.job_id) == list(range(1, n + 1))
    for after in range(n + 1):
        assert seqs(store, job.job_id, after) == list(range(after + 1, n + 1))
    assert [e.seq for e in store.events_after(job.job_id, 3, limit=2)] == [4, 5]
    # Another job's sequence is independent.
    other = new_job(store, "p2")
    assert seqs(store, other.job_id) == [1]


def test_concurrent_appends_keep_seq_gap_free(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    stores = [JobStore(path), JobStore(path)]  # two connections: seq must come from the transaction
    try:
        job = new_job(stores[0], "p1", R)
        threads_n, per_thread = 8, 15
        errors: list[BaseException] = []

        def worker(t: int) -> None:
            try:
                for i in range(per_thread):
                    append(stores[t % 2], job.job_id, "log", {"t": t, "i": i})
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=worker, args=(t,)) for t in range(threads_n)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert errors == []
        total = 2 + threads_n * per_thread
        events = stores[1].events_after(job.job_id, 0, limit=10_000)
        assert [e.seq for e in events] == list(range(1, total + 1))
        # Each thread's own events stay in the order it wrote them.
        for t in range(threads_n):
            assert [e.data["i"] for e in events if e.data.get("t") == t] == list(range(per_thread))
    finally:
        for s in stores:
            s.close()


def test_an_event_with_a_reserved_type_or_non_json_data_is_refused(store: JobStore) -> None:
    job = new_job(store, "p1", R)
    with pytest.raises(CryptotuneError) as excinfo:
        append(store, job.job_id, "state", {"state": "succeeded"})
    assert code_of(excinfo) is ErrorCode.REQUEST_INVALID
    with pytest.raises(CryptotuneError) as excinfo:
        append(store, job.job_id, "log", {"x": {1, 2}})
    assert code_of(excinfo) is ErrorCode.REQUEST_INVALID
    with pytest.raises(CryptotuneError) as excinfo:
        append(store, "job-missing", "log", {})
    assert code_of(excinfo) is ErrorCode.JOB_NOT_FOUND
    assert store.get(job.job_id).state is R
    assert last_seq(store, job.job_id) == 2


def test_events_fold_into_the_job_summary(store: JobStore) -> None:
    job = new_job(store, "p1", R)
    jid = job.job_id
    append(store, jid, "stage_started", {"stage": "init"})
    j = store.get(jid)
    assert j.stage == "init"
    assert j.stage_status("init") == j.stages[0]
    assert j.stages[0].state == "running"
    append(store, jid, "stage_completed", {"stage": "init", "seconds": 1.5})
    append(store, jid, "stage_skipped", {"stage": "data_prep"})
    append(store, jid, "stage_started", {"stage": "training"})
    append(store, jid, "stage_started", {"stage": "no-such-stage"})
    append(store, jid, "progress", {"step": 10, "total_steps": 100, "loss": 2.5, "junk": "x"})
    append(store, jid, "progress", {"step": 20, "learning_rate": 1e-4})
    append(store, jid, "plan", {"batch_size": 4, "gpus": []})
    j = store.get(jid)
    by_name = {s.name: (s.state, s.seconds) for s in j.stages}
    assert by_name["init"] == ("done", 1.5)
    assert by_name["data_prep"] == ("skipped", 0.0)
    assert by_name["training"] == ("running", 0.0)
    assert by_name["evaluation"] == ("pending", 0.0)
    assert j.stage == "training"
    assert (j.progress.step, j.progress.total_steps, j.progress.loss) == (20, 100, 2.5)
    assert j.progress.learning_rate == 1e-4
    assert j.plan == {"batch_size": 4, "gpus": []}
    append(store, jid, "failed", {"error": "boom"})
    assert store.get(jid).stage_status("training") is not None
    assert {s.name: s.state for s in store.get(jid).stages}["training"] == "failed"


def test_ingest_worker_events_is_atomic_with_offset(store: JobStore) -> None:
    job = new_job(store, "p1", R)
    jid = job.job_id
    batch: list[tuple[str, dict[str, Any], float]] = [
        ("stage_started", {"stage": "init"}, 100.0),
        ("log", {"line": "hello"}, 100.5),
        ("progress", {"step": 3}, 101.0),
    ]
    written = store.ingest_worker_events(jid, batch, 321)
    assert [(e.seq, e.type, e.ts) for e in written] == [
        (3, "stage_started", 100.0),
        (4, "log", 100.5),
        (5, "progress", 101.0),
    ]
    j = store.get(jid)
    assert j.events_offset == 321
    assert j.stage == "init"
    assert j.progress.step == 3

    # One bad line spoils the batch: no events, no offset move, no folding.
    bad: list[Any] = [("progress", {"step": 9}, 102.0), ("log", "not a dict", 102.5)]
    with pytest.raises(CryptotuneError) as excinfo:
        store.ingest_worker_events(jid, bad, 999)
    assert code_of(excinfo) is ErrorCode.REQUEST_INVALID
    j = store.get(jid)
    assert (j.events_offset, j.progress.step, last_seq(store, jid)) == (321, 3, 5)

    # A reader with a stale offset must not ingest the same bytes twice.
    with pytest.raises(CryptotuneError) as excinfo:
        store.ingest_worker_events(jid, [("log", {}, 103.0)], 400, expected_offset=0)
    assert code_of(excinfo) is ErrorCode.JOB_STATE_CONFLICT
    assert last_seq(store, jid) == 5
    store.ingest_worker_events(jid, [("log", {}, 103.0)], 400, expected_offset=321)
    assert (store.get(jid).events_offset, last_seq(store, jid)) == (400, 6)


# -- bookkeeping and persistence --------------------------------------------------------------------------


def test_bookkeeping_updates(store: JobStore) -> None:
    job = new_job(store, "p1", R)
    assert store.set_worker(job.job_id, 4242, 1000.5).worker_pid == 4242
    assert store.set_gpus(job.job_id, ["GPU-a", "GPU-b"]).device == "GPU-a,GPU-b"
    assert store.set_gpus(job.job_id, []).device == "cpu"
    assert store.increment_retries(job.job_id) == 1
    assert store.increment_retries(job.job_id) == 2
    assert store.update_spec(job.job_id, {"config": "new"}).spec == {"config": "new"}
    with pytest.raises(CryptotuneError) as excinfo:
        store.set_worker("job-missing", None, None)
    assert code_of(excinfo) is ErrorCode.JOB_NOT_FOUND


def test_jobs_and_events_survive_reopen(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    store = JobStore(path)
    job = new_job(store, "p1", R, spec={"config": "a", "nested": {"k": [1, 2]}})
    append(store, job.job_id, "stage_started", {"stage": "training"})
    store.ingest_worker_events(job.job_id, [("progress", {"step": 7, "loss": 1.25}, 5.0)], 77)
    store.set_worker(job.job_id, 99, 12.5)
    store.set_gpus(job.job_id, ["GPU-1"])
    store.increment_retries(job.job_id)
    done = new_job(store, "p2", S)
    before = [store.get(job.job_id), store.get(done.job_id)]
    events_before = store.events_after(job.job_id, 0)
    store.close()

    reopened = JobStore(path)
    try:
        assert [reopened.get(job.job_id), reopened.get(done.job_id)] == before
        assert reopened.events_after(job.job_id, 0) == events_before
        assert append(reopened, job.job_id, "log", {}).seq == len(events_before) + 1
    finally:
        reopened.close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_a_queued_job_says_what_it_waits_for_until_it_leaves_the_queue(store: JobStore) -> None:
    jid = new_job(store, "ray-1").job_id
    assert store.get(jid).waiting_for == ""
    append(store, jid, "waiting", {"message": "waiting for 2 nodes × 1 GPU; the cluster has 1 node free"})
    append(store, jid, "waiting", {"message": "waiting for 2 nodes × 1 GPU; the cluster has no node free"})
    assert store.get(jid).waiting_for == "waiting for 2 nodes × 1 GPU; the cluster has no node free"
    assert store.transition(jid, R) is not None
    assert store.get(jid).waiting_for == "", "a running job waits for nothing"
    append(store, jid, "waiting", {"message": "late"})
    assert store.get(jid).waiting_for == "", "only a queued job waits"
    assert store.transition(jid, REC) is not None and store.transition(jid, Q) is not None
    assert store.get(jid).waiting_for == ""
    append(store, jid, "waiting", {"message": "waiting for 2 nodes × 1 GPU; the cluster has 1 node free"})
    assert store.list_jobs(limit=5)[0].waiting_for.startswith("waiting for 2 nodes")


def test_a_version_1_database_gains_waiting_for_and_keeps_its_jobs(tmp_path: Path) -> None:
    from cryptotune_daemon.jobs.store import _MIGRATIONS

    path = tmp_path / "jobs.db"
    with sqlite3.connect(path) as conn:
        conn.executescript(_MIGRATIONS[0])
        conn.execute(
            "INSERT INTO jobs (job_id, pipeline_id, request_id, state, stages_json, progress_json, "
            "output_dir, created_at, updated_at, dry_run, spec_json) VALUES ('job-1', 'old', 'req-old', "
            "'queued', '[]', '{}', '/out/old', 1.0, 1.0, 0, '{}')"
        )
        conn.execute("PRAGMA user_version = 1")
    with JobStore(path) as store:
        job = store.get("old")
        assert (job.job_id, job.state, job.waiting_for) == ("job-1", Q, "")
        append(
            store, "job-1", "waiting", {"message": "waiting for 2 nodes × 1 CPU; the cluster has 1 node free"}
        )
        assert store.get("job-1").waiting_for.endswith("1 node free")
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 2


def test_connection_is_durable_wal(store: JobStore) -> None:
    conn = store._conn  # pragmas are per connection: inspect the store's own one
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    assert conn.execute("PRAGMA busy_timeout").fetchone()[0] > 0


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    JobStore(path).close()
    with sqlite3.connect(path) as conn:
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(CryptotuneError) as excinfo:
        JobStore(path)
    assert "newer" in excinfo.value.message


def test_full_disk_is_resource_exhausted_and_leaves_store_consistent(store: JobStore) -> None:
    job = new_job(store, "p1", R)
    jid = job.job_id
    conn = store._conn  # max_page_count is per connection: limit the store's own one
    pages = conn.execute("PRAGMA page_count").fetchone()[0]
    conn.execute(f"PRAGMA max_page_count = {pages + 4}")
    appended = 0
    with pytest.raises(CryptotuneError) as excinfo:
        for i in range(1000):
            append(store, jid, "progress", {"step": i + 1, "pad": "x" * 2000})
            appended += 1
    assert code_of(excinfo) is ErrorCode.RESOURCE_EXHAUSTED
    assert "full" in excinfo.value.message
    assert appended < 1000

    # The failed append left no trace: seq, events and summary agree with what succeeded.
    assert last_seq(store, jid) == 2 + appended
    assert seqs(store, jid) == list(range(1, 3 + appended))
    assert store.get(jid).progress.step == appended

    # A transition that cannot be written is rolled back too.
    with pytest.raises(CryptotuneError) as excinfo:
        store.transition(jid, S, data={"pad": "y" * 20_000})
    assert code_of(excinfo) is ErrorCode.RESOURCE_EXHAUSTED
    assert store.get(jid).state is R
    assert last_seq(store, jid) == 2 + appended

    # Once space is back the store carries on where it stopped.
    conn.execute("PRAGMA max_page_count = 1073741823")
    assert append(store, jid, "log", {}).seq == 3 + appended
    assert store.transition(jid, S) is not None


# -- model ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("good", ["a", "p1", "A.b_c-9", "x" * 64, "...", "a..b"])
def test_validate_pipeline_id_accepts(good: str) -> None:
    assert validate_pipeline_id(good) == good


@pytest.mark.parametrize("bad", ["", "x" * 65, "a/b", ".", "..", "a b", "é", "a\n"])
def test_validate_pipeline_id_refuses(bad: str) -> None:
    with pytest.raises(CryptotuneError) as excinfo:
        validate_pipeline_id(bad)
    assert code_of(excinfo) is ErrorCode.REQUEST_INVALID
    assert "[A-Za-z0-9._-]{1,64}" in excinfo.value.message


def test_generated_ids_are_valid_and_distinct() -> None:
    ids = {generate_pipeline_id() for _ in range(200)}
    assert len(ids) == 200
    for pid in ids:
        assert validate_pipeline_id(pid) == pid
        assert re.fullmatch(r"pl-\d{8}-\d{6}-[0-9a-f]{6}", pid)
    assert re.fullmatch(r"job-\d{8}-\d{6}-[0-9a-f]{8}", generate_job_id())


def test_transition_table_is_the_documented_one() -> None:
    assert {
        Q: {R, C, F},
        R: {S, F, CING, REC},
        CING: {C, F, S},
        REC: {R, Q, F, CING, C},
    } == TRANSITIONS
    assert {S, F, C} == TERMINAL_STATES
    assert {s.value for s in JobState} == {s.name.lower() for s in JobState}
