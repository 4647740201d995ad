"""The job driver of a job on Ray (``parallel.nodes`` > 1): ``python -m cryptotune_daemon.worker
--spec SPEC --ray-address ADDR --ray-namespace NS``.

The daemon launches it on its own machine like any worker (own session, job lock, ``worker.pids``),
so cancel, daemon kill -9 and reattachment work as for a local job. The driver:

1. reserves a placement group with one bundle per rank, all at once (``worker/ray_placement.py``),
   emitting ``waiting`` events ("waiting for 2 nodes × 1 CPU; the cluster has 1 node free") while the
   cluster lacks room — the daemon keeps the job QUEUED until the ``placed`` event;
2. starts one :class:`~cryptotune_daemon.worker.ray_rank.RankProcess` actor per bundle, checks each
   node's versions against its own, and sends every rank the spec, the data and (on a resume) the
   output dir's checkpoints through Ray's object store;
3. mirrors what rank 0 writes (event lines, log, output files, whole checkpoints) into the job's
   output dir and event file exactly as a local job writes them — files first, then the events
   that name them;
4. ends every rank and removes the placement group when the job ends, is cancelled (SIGTERM) or
   loses a node; a lost node exits with :data:`EXIT_NODE_LOST` after a ``node_lost`` event, and the
   daemon resumes the job from its newest checkpoint. A resumed job that lost a node waits at most
   ``--ray-node-wait-s`` for room, then fails naming the node.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import sys
import time
import uuid
from pathlib import Path
from types import FrameType
from typing import Any

from cryptotune_daemon.cluster.versions import describe_version_mismatch, local_versions
from cryptotune_daemon.layout import CHECKPOINT_MANIFEST, CHECKPOINTS_DIR
from cryptotune_daemon.worker.events import EventWriter
from cryptotune_daemon.worker.ray_placement import (
    EXIT_NODE_LOST,
    NODE_LOST_EVENT,
    PLACED_EVENT,
    WAITING_EVENT,
    PlacementRequest,
    actor_name,
    bundles_in_rank_order,
    free_nodes,
    lost_node_message,
    placement_group_name,
    placement_request,
    waiting_message,
)
from cryptotune_daemon.worker.ray_rank import DATA_DIR, OUTPUT_DIR, RankProcess
from cryptotune_daemon.worker.spec import JobSpec, load_spec

log = logging.getLogger(__name__)

EXIT_FAILED = 1
EXIT_CANCELLED = 128 + signal.SIGTERM
POLL_S = 0.5
WAIT_POLL_S = 1.0
# After rank 0 ends (or reports a failure), how long the other ranks' liveness is checked: a rank
# whose node went away makes rank 0 fail too, and that is a lost node, not the job's failure.
LIVENESS_WAIT_S = 30.0
# A rank's actor that does not answer a call for this long is taken for lost with its node.
CALL_TIMEOUT_S = 120.0
# Environment handed on to every rank (the rest comes from the node's own Ray worker).
_PASSED_ENV_PREFIXES = ("HF_", "NCCL_", "GLOO_", "OMP_NUM_THREADS", "TRANSFORMERS_", "TOKENIZERS_")
# Files of the output dir that a resumed rank needs (and nothing it would only rewrite).
_RESUME_SKIP = ("logs", "tensorboard", ".", "adapter")


class _Cancelled(BaseException):
    """SIGTERM (the daemon's cancel) reached the driver."""


class _NodeLost(Exception):
    """A rank's actor (or its node) died."""

    def __init__(self, node: str, address: str, rank: int, detail: str) -> None:
        super().__init__(lost_node_message(node, address, rank))
        self.node, self.address, self.rank, self.detail = node, address, rank, detail


class _Refused(Exception):
    """The job cannot run on this cluster (versions differ, no room after a lost node)."""


def _on_sigterm(signum: int, _frame: FrameType | None) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise _Cancelled(signal.Signals(signum).name)


def main(spec_path: Path, address: str, namespace: str, node_wait_s: float) -> int:
    """Runs one job on Ray; returns the exit code (0, 1 failed, 143 cancelled, 75 node lost)."""
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    signal.signal(signal.SIGTERM, _on_sigterm)
    signal.signal(signal.SIGINT, _on_sigterm)
    spec = load_spec(spec_path)
    events = EventWriter(spec.events_path)
    driver = _Driver(spec, events, address, namespace, node_wait_s)
    try:
        return driver.run()
    finally:
        events.close()


class _Driver:
    def __init__(
        self, spec: JobSpec, events: EventWriter, address: str, namespace: str, node_wait_s: float
    ) -> None:
        self.spec = spec
        self.events = events
        self.address = address
        self.namespace = namespace
        self.node_wait_s = node_wait_s
        self.pg: Any = None
        # The placement group's bundle each rank runs in: ranks numbered node by node (see _reserve).
        self.bundle_of_rank: list[int] = list(range(spec.world_size))
        self.actors: list[Any] = []
        self.infos: list[dict[str, Any]] = []
        self.held_failures: list[bytes] = []

    def run(self) -> int:
        try:
            import ray
        except ImportError:
            self._fail("init", "Ray is not installed with the daemon: pip install 'cryptotune[ray]'")
            return EXIT_FAILED
        try:
            ray.init(
                address=self.address,
                namespace=self.namespace,
                log_to_driver=False,
                logging_level=logging.WARNING,
                configure_logging=False,
            )
        except _Cancelled:
            return EXIT_CANCELLED
        except Exception as error:
            self._fail("init", f"cannot connect to the Ray cluster at {self.address}: {error}")
            return EXIT_FAILED
        try:
            return self._run(ray)
        except _Cancelled:
            log.warning("cancelled: ending every rank")
            return EXIT_CANCELLED
        except _NodeLost as lost:
            log.warning("%s: %s", lost, lost.detail)
            self.events.emit(
                NODE_LOST_EVENT,
                {"node": lost.node, "address": lost.address, "rank": lost.rank, "message": str(lost)},
            )
            return EXIT_NODE_LOST
        except _Refused as refused:
            self._fail("init", str(refused))
            return EXIT_FAILED
        finally:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            self._end_ranks(ray)

    # -- the steps ------------------------------------------------------------------------------

    def _run(self, ray: Any) -> int:
        gpus = float(ray.cluster_resources().get("GPU", 0.0)) > 0
        request = placement_request(self.spec.world_size, self.spec.nodes, gpus=gpus)
        self._reserve(ray, request)
        self._start_ranks(ray, request)
        return self._follow(ray)

    def _reserve(self, ray: Any, request: PlacementRequest) -> None:
        from ray.util.placement_group import placement_group

        self.pg = placement_group(
            [dict(b) for b in request.bundles],
            strategy=request.strategy,
            name=placement_group_name(self.spec.job_id),
        )
        ready = self.pg.ready()
        started, said = time.monotonic(), ""
        lost = self.spec.resume.lost_node if self.spec.resume is not None else ""
        while True:
            done, _ = ray.wait([ready], timeout=WAIT_POLL_S)
            if done:
                break
            message = waiting_message(request, free_nodes(request, _available_per_node(ray)))
            if message != said:
                self.events.emit(WAITING_EVENT, {"message": message})
                said = message
            if lost and time.monotonic() - started > self.node_wait_s:
                raise _Refused(
                    f"{lost}; no node came back within {self.node_wait_s:g} s ({message}). Add a node to "
                    f"the Ray cluster and resume with 'cryptotune train --resume {self.spec.pipeline_id}'"
                )
        table = ray.util.placement_group_table(self.pg)
        bundle_nodes = {int(i): str(n) for i, n in (table.get("bundles_to_node_id") or {}).items()}
        if sorted(bundle_nodes) == list(range(request.ranks)):
            self.bundle_of_rank = bundles_in_rank_order(bundle_nodes)
        nodes = sorted(set(bundle_nodes.values()))
        self.events.emit(
            PLACED_EVENT,
            {
                "placement_group": placement_group_name(self.spec.job_id),
                "strategy": request.strategy,
                "ranks": request.ranks,
                "nodes": nodes,
                "device": request.device,
            },
        )

    def _start_ranks(self, ray: Any, request: PlacementRequest) -> None:
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        remote = ray.remote(RankProcess)
        resources = {"num_gpus": 1, "num_cpus": 0} if request.device == "cuda" else {"num_cpus": 1}
        self.actors = [
            remote.options(
                name=actor_name(self.spec.job_id, rank),
                max_restarts=0,
                scheduling_strategy=PlacementGroupSchedulingStrategy(
                    placement_group=self.pg, placement_group_bundle_index=self.bundle_of_rank[rank]
                ),
                **resources,
            ).remote(self.spec.job_id, rank)
            for rank in range(request.ranks)
        ]
        self.infos = self._get(ray, [a.describe.remote() for a in self.actors], "start")
        expected = local_versions()
        for rank, info in enumerate(self.infos):
            problem = describe_version_mismatch(
                expected, info["versions"], f"{info['node_id']} ({info['address']})"
            )
            if problem:
                raise _Refused(f"rank {rank}: {problem}")
        master_addr = self.infos[0]["address"]
        master_port = self._get(ray, [self.actors[0].free_port.remote()], "start")[0]
        files = ray.put(self._rank_files())
        spec = {**self.spec.to_json(), "device": request.device}
        passed = {k: v for k, v in os.environ.items() if k.startswith(_PASSED_ENV_PREFIXES)}
        starts = []
        for rank, actor in enumerate(self.actors):
            env = {
                **passed,
                "RANK": str(rank),
                "WORLD_SIZE": str(request.ranks),
                "LOCAL_RANK": "0",  # Ray gives each GPU actor its one GPU as device 0
                "LOCAL_WORLD_SIZE": "1",
                "MASTER_ADDR": master_addr,
                "MASTER_PORT": str(master_port),
                "PYTHONUNBUFFERED": "1",
            }
            starts.append(actor.start.remote(files, spec, env))
        pids = self._get(ray, starts, "start")
        ranks = [
            {
                "rank": r,
                "node_id": i["node_id"],
                "address": i["address"],
                "actor_pid": i["actor_pid"],
                "pid": p,
            }
            for r, (i, p) in enumerate(zip(self.infos, pids, strict=True))
        ]
        self.events.emit("log", {"message": f"{request.ranks} ranks started on Ray", "ranks": ranks})
        for started in ranks:
            log.info("rank %(rank)s: node %(node_id)s (%(address)s), worker pid %(pid)s", started)

    def _rank_files(self) -> dict[str, bytes]:
        """What every rank needs: the data, and on a resume the output dir (checkpoints, state)."""
        files = {f"{DATA_DIR}/{self.spec.data_path.name}": self.spec.data_path.read_bytes()}
        if self.spec.resume is not None and self.spec.output_dir.is_dir():
            root = self.spec.output_dir
            for path in root.rglob("*"):
                relative = path.relative_to(root)
                if not path.is_file() or relative.parts[0].startswith(_RESUME_SKIP):
                    continue
                if relative.parts[0] == CHECKPOINTS_DIR and (
                    len(relative.parts) < 3
                    or not (root / relative.parts[0] / relative.parts[1] / CHECKPOINT_MANIFEST).is_file()
                ):
                    continue
                files[f"{OUTPUT_DIR}/{relative}"] = path.read_bytes()
        return files

    def _follow(self, ray: Any) -> int:
        """Mirrors rank 0 until it ends; checks the other ranks are alive meanwhile.

        A lost node wins over the failures it causes: when a rank fails, every actor's liveness is
        checked (for up to :data:`LIVENESS_WAIT_S`) before a failure event is passed on.
        """
        rank0, others = self.actors[0], list(enumerate(self.actors))[1:]
        while True:
            update = self._get(ray, [rank0.poll.remote()], "poll")[0]
            self._mirror(update)
            code = update["exit"]
            statuses = self._get(ray, [a.status.remote() for _, a in others], "poll", [r for r, _ in others])
            failed = next(
                ((r, s) for (r, _), s in zip(others, statuses, strict=True) if s not in (None, 0)), None
            )
            if code is None and failed is None and not self.held_failures:
                time.sleep(POLL_S)
                continue
            if code != 0:
                self._check_alive(ray, others, wait_s=LIVENESS_WAIT_S)
                deadline = time.monotonic() + LIVENESS_WAIT_S
                while code is None and time.monotonic() < deadline:
                    time.sleep(POLL_S)  # rank 0 fails in its next collective
                    update = self._get(ray, [rank0.poll.remote()], "poll")[0]
                    self._mirror(update)
                    code = update["exit"]
            self._append_events(b"".join(self.held_failures))
            self.held_failures.clear()
            self._log_failed_ranks(ray, others)
            if code is None:
                assert failed is not None
                self._fail("training", f"rank {failed[0]} exited with code {failed[1]}")
                return EXIT_FAILED
            return int(code) if code >= 0 else EXIT_FAILED

    def _log_failed_ranks(self, ray: Any, ranks: list[tuple[int, Any]]) -> None:
        """Copies the end of each failed rank's own log into the job's log: rank 0 usually fails only
        as a consequence ("Connection closed by peer"), the cause is in the rank that went first."""
        try:
            statuses = self._get(ray, [a.status.remote() for _, a in ranks], "poll", [r for r, _ in ranks])
            for (rank, actor), status in zip(ranks, statuses, strict=True):
                if status in (None, 0):
                    continue
                tail = self._get(ray, [actor.log_tail.remote()], "poll", [rank])[0]
                info = self.infos[rank] if rank < len(self.infos) else {}
                log.error(
                    "rank %d on node %s (%s) exited with code %s; the end of its log:\n%s",
                    rank,
                    info.get("node_id", "?"),
                    info.get("address", "?"),
                    status,
                    tail.rstrip() or "(empty)",
                )
        except _NodeLost:
            pass  # its node is gone, and its log with it: the lost node is reported instead

    def _check_alive(self, ray: Any, ranks: list[tuple[int, Any]], wait_s: float = 0.0) -> None:
        """Raises _NodeLost when a rank's actor is gone; gives Ray ``wait_s`` to notice."""
        deadline = time.monotonic() + wait_s
        while True:
            self._get(ray, [a.status.remote() for _, a in ranks], "poll", [r for r, _ in ranks])
            if time.monotonic() >= deadline:
                return
            time.sleep(POLL_S)

    def _get(self, ray: Any, refs: list[Any], what: str, ranks: list[int] | None = None) -> list[Any]:
        """``ray.get`` that turns a dead actor into :class:`_NodeLost` naming its node."""
        from ray.exceptions import GetTimeoutError, RayActorError

        ranks = ranks if ranks is not None else list(range(len(refs)))
        results = []
        for rank, ref in zip(ranks, refs, strict=True):
            try:
                results.append(ray.get(ref, timeout=CALL_TIMEOUT_S))
            except (RayActorError, GetTimeoutError) as error:
                info = self.infos[rank] if rank < len(self.infos) else {}
                raise _NodeLost(
                    str(info.get("node_id", "?")), str(info.get("address", "?")), rank, f"{what}: {error}"
                ) from error
        return results

    # -- mirroring ------------------------------------------------------------------------------

    def _mirror(self, update: dict[str, Any]) -> None:
        """Writes rank 0's new files, then its events (so an event never names a missing file)."""
        out = self.spec.output_dir
        for relative, content in update["files"].items():
            _write_atomic(out / relative, content)
        checkpoints = out / CHECKPOINTS_DIR
        for name, files in update["checkpoints"].items():
            temp = checkpoints / f".tmp-mirror-{name}-{uuid.uuid4().hex[:8]}"
            for relative, content in files.items():
                target = temp / relative
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(content)
            final = checkpoints / name
            if final.exists():
                shutil.rmtree(final)
            temp.rename(final)
        if checkpoints.is_dir():
            present = set(update["present"])
            for directory in checkpoints.iterdir():
                if directory.name.startswith("step-") and directory.name not in present:
                    shutil.rmtree(directory, ignore_errors=True)  # rotated out on rank 0
        if update["log"]:
            sys.stderr.flush()
            os.write(sys.stdout.fileno(), update["log"])
        if update["events"]:
            lines = update["events"].splitlines(keepends=True)
            if self.held_failures or any(_is_failure(line) for line in lines):
                # A failure may be the echo of a lost node: held back until the ranks are checked.
                first = next((i for i, line in enumerate(lines) if _is_failure(line)), len(lines))
                if not self.held_failures:
                    self._append_events(b"".join(lines[:first]))
                    lines = lines[first:]
                self.held_failures.append(b"".join(lines))
            else:
                self._append_events(update["events"])

    def _append_events(self, chunk: bytes) -> None:
        if not chunk or self.spec.events_path is None:
            return
        fd = os.open(self.spec.events_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, chunk)
        finally:
            os.close(fd)

    def _fail(self, stage: str, reason: str) -> None:
        log.error("%s", reason)
        self.events.emit("failed", {"reason": reason, "stage": stage})

    # -- the end --------------------------------------------------------------------------------

    def _end_ranks(self, ray: Any) -> None:
        """Stops every rank's worker, kills the actors and removes the placement group."""
        stops = []
        for actor in self.actors:
            with contextlib.suppress(Exception):
                stops.append(actor.stop.remote())
        with contextlib.suppress(Exception):
            ray.wait(stops, num_returns=len(stops), timeout=15.0)
        for actor in self.actors:
            with contextlib.suppress(Exception):
                ray.get(actor.cleanup.remote(), timeout=5.0)
            with contextlib.suppress(Exception):
                ray.kill(actor, no_restart=True)
        if self.pg is not None:
            from ray.util.placement_group import remove_placement_group

            with contextlib.suppress(Exception):
                remove_placement_group(self.pg)
        with contextlib.suppress(Exception):
            ray.shutdown()


def _is_failure(line: bytes) -> bool:
    with contextlib.suppress(ValueError):
        return bool(json.loads(line).get("type") == "failed")
    return False


def _write_atomic(path: Path, content: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.mirror-{uuid.uuid4().hex[:8]}")
    temp.write_bytes(content)
    os.replace(temp, path)


def _available_per_node(ray: Any) -> list[dict[str, float]]:
    """Each alive node's available resources (the GCS's view)."""
    try:
        from ray._private.state import available_resources_per_node

        per_node = available_resources_per_node()  # type: ignore[no-untyped-call]
        return [dict(v) for v in per_node.values()]
    except Exception:  # a private API: fall back to each alive node's total
        return [dict(n.get("Resources", {})) for n in ray.nodes() if n.get("Alive")]
