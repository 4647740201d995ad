"""Daemon benchmarks against a real daemon on a temp state dir and unix socket (nothing leaves loopback).

  * CLI round trip: ``cryptotune list-gpus``, one fresh process per call (what a user waits for);
  * submit latency: the SubmitJob call of dry-run jobs (upload already stored), then the time a
    dry run takes to produce its plan;
  * N concurrent watchers (default 200) on one short training job: event delivery latency
    (worker's event timestamp → watcher receives it) p50/p99, completeness, and the daemon's CPU
    and RSS meanwhile (psutil);
  * ``inspect-data`` on generated 10k- and 100k-record JSONL files: wall time and the daemon's peak
    RSS above its level before the call (inspection streams, so this must not grow with the file);
  * job start: submit → first ``progress`` event of a ``builtin:tiny-qwen3`` job on a daemon up for
    ``--settle`` seconds (default 30), with one warm worker and with none (cold), and the durations
    of the stages before training.

Usage: ``python bench/daemon.py [--watchers 200] [--json FILE]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
DATA = REPO / "client" / "cryptotune" / "examples" / "crypto_qa_zh.jsonl"
TERMS = [
    ("AES", "对称加密", "分组密码"),
    ("RSA", "公钥加密", "大整数分解"),
    ("SM2", "数字签名", "椭圆曲线"),
    ("SM3", "杂凑函数", "消息摘要"),
    ("SM4", "分组密码", "轮函数"),
    ("HMAC", "消息认证", "密钥"),
    ("ECDH", "密钥交换", "椭圆曲线"),
    ("GCM", "认证加密", "计数器模式"),
]
JOB_CONFIG = """\
model:
  model_name: builtin:tiny-qwen3
training:
  max_steps: {steps}
  per_device_train_batch_size: 4
  gradient_accumulation_steps: 1
  learning_rate: 1.0e-3
  logging_steps: 1
  save_steps: {steps}
  eval_steps: {steps}
  max_seq_length: 1024
  eval_sample_size: 1
  max_new_tokens: 4
  seed: 3
lora:
  rank: 4
  alpha: 8
data:
  train_split_ratio: 0.9
  eval_split_ratio: 0.1
"""


def percentile(values: list[float], percent: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(percent / 100 * (len(ordered) - 1))))
    return ordered[index]


# -- the daemon -------------------------------------------------------------------------------------------


class Daemon:
    """A ``cryptotuned`` on a temp state dir, listening on a unix socket only.

    ``command`` starts the daemon (default: the ``cryptotuned`` script beside this Python; a source
    checkout without an installed script passes ``[python, "-m", "cryptotune_daemon.main"]``);
    ``extra`` are more daemon flags (e.g. ``--warm-workers 0``).
    """

    def __init__(self, root: Path, command: list[str] | None = None, extra: tuple[str, ...] = ()) -> None:
        self.state_dir = root / "state"
        self.state_dir.mkdir(parents=True)
        self.address = f"unix://{self.state_dir}/d.sock"
        self.log_path = root / "daemon.log"
        start = command or [str(BIN / "cryptotuned")]
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [*start, "--state-dir", str(self.state_dir), "--listen", self.address, *extra],
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "HF_HUB_OFFLINE": "1"},
                start_new_session=True,
            )
        self.ps = psutil.Process(self.process.pid)
        self._wait_serving()

    def _wait_serving(self, timeout: float = 90.0) -> None:
        from cryptotune import Client
        from cryptotune.errors import DaemonUnavailable

        deadline = time.monotonic() + timeout
        with Client(self.address) as client:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise RuntimeError(f"daemon exited:\n{self.log_path.read_text(errors='replace')[-3000:]}")
                with contextlib.suppress(DaemonUnavailable):
                    if client.ping(timeout=1.0) == "SERVING":
                        return
                time.sleep(0.1)
        raise TimeoutError("the daemon did not start")

    def client(self) -> Any:
        from cryptotune import Client

        return Client(self.address)

    def stop(self) -> None:
        # Workers run in their own process groups and may outlive the daemon: end the ones it started.
        workers: list[psutil.Process] = []
        with contextlib.suppress(psutil.Error):
            workers = self.ps.children(recursive=True)
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        for worker in workers:
            with contextlib.suppress(psutil.Error):
                worker.kill()


class Sampler:
    """Samples a process's RSS (peak) and CPU time while running; ``with_children`` adds its child
    processes' (the daemon's inspection helper), so memory moved out of the daemon still counts."""

    def __init__(
        self, process: psutil.Process, interval: float = 0.02, *, with_children: bool = False
    ) -> None:
        self.process = process
        self.interval = interval
        self.with_children = with_children
        self.base_rss = self._rss()
        self.peak_rss = self.base_rss
        times = process.cpu_times()
        self.cpu_start = times.user + times.system
        self.started = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            with contextlib.suppress(psutil.Error):
                self.peak_rss = max(self.peak_rss, self._rss())

    def _rss(self) -> int:
        processes = [self.process, *(self.process.children(recursive=True) if self.with_children else [])]
        total = 0
        for process in processes:
            with contextlib.suppress(psutil.Error):
                total += process.memory_info().rss
        return total

    def stop(self) -> dict[str, float]:
        self._stop.set()
        self._thread.join()
        times = self.process.cpu_times()
        wall = time.monotonic() - self.started
        cpu = times.user + times.system - self.cpu_start
        return {
            "wall_seconds": wall,
            "cpu_seconds": cpu,
            "cpu_percent_of_one_core": 100 * cpu / max(wall, 1e-9),
            "rss_before_mb": self.base_rss / 2**20,
            "rss_peak_mb": self.peak_rss / 2**20,
            "rss_peak_delta_mb": (self.peak_rss - self.base_rss) / 2**20,
        }


@contextlib.contextmanager
def running_daemon() -> Iterator[tuple[Daemon, Path]]:
    # Unix socket paths are limited to 107 bytes: keep the root short.
    root = Path(tempfile.mkdtemp(prefix="ctb-", dir="/tmp"))
    daemon = Daemon(root)
    try:
        yield daemon, root
    finally:
        daemon.stop()
        shutil.rmtree(root, ignore_errors=True)


# -- the measurements ----------------------------------------------------------------------------------------


# The CLI's import floor: Python with click, gRPC and the protobuf runtime a generated module needs.
FLOOR_IMPORTS = (
    "import click, grpc\n"
    "from google.protobuf import descriptor, descriptor_pool, runtime_version, symbol_database\n"
    "from google.protobuf.internal import builder\n"
)


def cli_round_trip(daemon: Daemon, runs: int) -> dict[str, Any]:
    """``list-gpus`` and ``--help`` in fresh processes, each round next to the import floor.

    The client is byte-compiled first, as an installed package is (``make setup`` does it once,
    edits since then would otherwise be recompiled on every call).
    """
    subprocess.run(
        [sys.executable, "-m", "compileall", "-q", str(REPO / "client")], check=True, capture_output=True
    )
    commands = {
        "list_gpus": [str(BIN / "cryptotune"), "--address", daemon.address, "--no-autostart", "list-gpus"],
        "help": [str(BIN / "cryptotune"), "--help"],
        "floor": [sys.executable, "-c", FLOOR_IMPORTS],
    }
    seconds: dict[str, list[float]] = {name: [] for name in commands}
    for index in range(runs + 2):
        for name, command in commands.items():
            started = time.perf_counter()
            subprocess.run(command, check=True, capture_output=True, timeout=60)
            if index >= 2:  # the first two rounds warm the page cache
                seconds[name].append(time.perf_counter() - started)
    gpus, floor = seconds["list_gpus"], seconds["floor"]
    # The difference per round: the floor run next to it saw the same machine load.
    over = [g - f for g, f in zip(gpus, floor, strict=True)]
    return {
        "runs": runs,
        "median_seconds": statistics.median(gpus),
        "p90_seconds": percentile(gpus, 90),
        "min_seconds": min(gpus),
        "floor_median_seconds": statistics.median(floor),
        "over_floor_median_seconds": statistics.median(over),
        "help_median_seconds": statistics.median(seconds["help"]),
    }


def wait_terminal(client: Any, job_id: str, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get_job(job_id)
        if job.state in ("succeeded", "failed", "cancelled"):
            return job
        time.sleep(0.2)
    raise TimeoutError(f"job {job_id} did not end within {timeout:.0f} s")


def submit_latency(daemon: Daemon, root: Path, submits: int) -> dict[str, Any]:
    config = JOB_CONFIG.format(steps=2)
    seconds = []
    jobs = []
    with daemon.client() as client:
        client.upload(DATA)  # stored once: the submits measure the call itself
        for index in range(submits):
            started = time.perf_counter()
            job = client.submit(DATA, config, output_dir=root / f"dry-{index}", dry_run=True)
            seconds.append(time.perf_counter() - started)
            jobs.append(job.job_id)
        for job_id in jobs:
            wait_terminal(client, job_id, 900)
        # One more on an idle daemon: how long until its plan is there.
        started = time.perf_counter()
        job = client.submit(DATA, config, output_dir=root / "dry-alone", dry_run=True)
        final = wait_terminal(client, job.job_id, 600)
        plan_seconds = time.perf_counter() - started
    return {
        "submits": submits,
        "median_seconds": statistics.median(seconds),
        "p90_seconds": percentile(seconds, 90),
        "dry_run_to_plan_seconds": plan_seconds,
        "dry_run_state": final.state,
    }


async def _watch(address: str, job_id: str, deadline: float, record: dict[str, Any]) -> None:
    import grpc

    from cryptotune.proto.v1 import job_pb2, job_pb2_grpc

    async with grpc.aio.insecure_channel(address) as channel:
        stub = job_pb2_grpc.JobServiceStub(channel)
        call = stub.WatchJob(job_pb2.WatchJobRequest(job=job_id, after_seq=0))
        record["connected"] = time.time()
        try:
            async with asyncio.timeout(max(deadline - time.monotonic(), 1.0)):
                async for event in call:
                    record["events"].append((event.seq, event.ts, time.time()))
        except TimeoutError:
            call.cancel()
            record["timed_out"] = True


async def _watch_all(address: str, job_id: str, watchers: int, timeout: float) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    records: list[dict[str, Any]] = [{"events": [], "timed_out": False} for _ in range(watchers)]
    await asyncio.gather(*(_watch(address, job_id, deadline, r) for r in records))
    return records


def watchers(daemon: Daemon, root: Path, count: int, steps: int, timeout: float) -> dict[str, Any]:
    with daemon.client() as client:
        job = client.submit(DATA, JOB_CONFIG.format(steps=steps), output_dir=root / "watched")
        sampler = Sampler(daemon.ps)
        records = asyncio.run(_watch_all(daemon.address, job.job_id, count, timeout))
        usage = sampler.stop()
        final = client.get_job(job.job_id)
    ready = max(r["connected"] for r in records)
    last_seq = max((e[0] for r in records for e in r["events"]), default=0)
    complete = sum(1 for r in records if [e[0] for e in r["events"]] == list(range(1, last_seq + 1)))
    # Only events written after every watcher was connected: replayed ones measure storage, not delivery.
    latencies = [recv - ts for r in records for _, ts, recv in r["events"] if ts > ready]
    return {
        "watchers": count,
        "job_state": final.state,
        "events_per_watcher": last_seq,
        "watchers_with_every_event": complete,
        "timed_out_watchers": sum(1 for r in records if r["timed_out"]),
        "live_deliveries": len(latencies),
        "latency_p50_ms": 1000 * percentile(latencies, 50) if latencies else None,
        "latency_p99_ms": 1000 * percentile(latencies, 99) if latencies else None,
        "latency_max_ms": 1000 * max(latencies) if latencies else None,
        "daemon": usage,
    }


STAGES = ("init", "data_prep", "config_gen", "env_setup")


def job_start(warm_workers: int, settle_s: float, steps: int, timeout: float) -> dict[str, Any]:
    """Submit → first ``progress`` event of a ``builtin:tiny-qwen3`` job on a fresh daemon that has
    been up ``settle_s`` seconds, with the stages' durations before training (from the events)."""
    root = Path(tempfile.mkdtemp(prefix="ctj-", dir="/tmp"))
    daemon = Daemon(root, extra=("--warm-workers", str(warm_workers)))
    try:
        # Up for settle_s seconds: the warm worker has finished its imports (what the target assumes).
        time.sleep(settle_s)
        with daemon.client() as client:
            client.upload(DATA)  # stored first: the submit below measures the job, not the upload
            started = time.time()
            job = client.submit(DATA, JOB_CONFIG.format(steps=steps), output_dir=root / "out")
            first_progress = None
            stage_times: dict[str, list[float]] = {}
            warm = False
            for event in client.watch(job.job_id):
                if event.type == "progress" and first_progress is None:
                    first_progress = time.time()
                    break
                if event.type in ("stage_started", "stage_completed"):
                    stage_times.setdefault(str(event.data.get("stage")), []).append(event.ts)
                if event.type == "log" and "warm worker" in str(event.data.get("message", "")):
                    warm = True
                if time.time() - started > timeout:
                    break
                if event.type == "state" and event.data.get("state") in ("failed", "cancelled"):
                    break
            client.cancel(job.job_id)
    finally:
        daemon.stop()
        shutil.rmtree(root, ignore_errors=True)
    stages = {name: t[1] - t[0] for name, t in stage_times.items() if name in STAGES and len(t) >= 2}
    first_stage = min((t[0] for t in stage_times.values()), default=None)
    return {
        "warm_workers": warm_workers,
        "ran_warm": warm,
        "settle_seconds": settle_s,
        "submit_to_first_progress_seconds": (first_progress - started) if first_progress else None,
        "submit_to_worker_start_seconds": (first_stage - started) if first_stage else None,
        "stage_seconds": stages,
    }


def write_records(path: Path, count: int, seed: int = 0) -> Path:
    """Distinct synthetic Q&A records in the bundled file's shape (~350 characters each)."""
    rng = random.Random(seed)
    with path.open("w", encoding="utf-8") as handle:
        for index in range(count):
            term, topic, detail = TERMS[rng.randrange(len(TERMS))]
            record = {
                "instruction": f"请说明 {term} 在{topic}中的作用，并举例说明（第 {index} 题）。",
                "input": "",
                "output": f"{term} 用于{topic}，其安全性依赖于{detail}。实际部署时应使用标准参数、"
                f"随机数发生器和经过验证的实现，并定期轮换密钥（编号 {rng.randrange(10**6)}）。",
                "thinking": f"<thinking>先回忆 {term} 的定义，再说明它与{detail}的关系，"
                f"最后给出工程上的注意事项。</thinking>",
                "crypto_terms": [term, detail],
                "difficulty": rng.randint(1, 4),
            }
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    return path


def tokenizer_floor(path: Path, batch: int = 1024) -> dict[str, float]:
    """Seconds the Qwen3 fast tokenizer alone takes to batch-encode the records' rendered text (its
    Rust backend, and the transformers call on top of it), rendering not included."""
    from cryptotune_daemon.data.readers import convert_record, iter_raw_records
    from cryptotune_daemon.data.records import Record
    from cryptotune_daemon.data.template import render_record
    from cryptotune_daemon.data.tokenizer import BUILTIN_TINY_QWEN3, load_tokenizer

    with tempfile.TemporaryDirectory(prefix="ctb-tok-") as cache:
        tokenizer = load_tokenizer(BUILTIN_TINY_QWEN3, Path(cache))
        texts = []
        for raw in iter_raw_records(path, display_name=path.name, file_format="jsonl"):
            record = convert_record(raw, data_format="auto")
            if isinstance(record, Record):
                texts.append(render_record(record).text)
        backend = tokenizer.backend_tokenizer
        started = time.perf_counter()
        for start in range(0, len(texts), batch):
            backend.encode_batch(texts[start : start + batch], add_special_tokens=False)
        backend_seconds = time.perf_counter() - started
        started = time.perf_counter()
        for start in range(0, len(texts), batch):
            tokenizer(texts[start : start + batch], add_special_tokens=False)
        call_seconds = time.perf_counter() - started
    return {"backend_seconds": backend_seconds, "transformers_seconds": call_seconds}


def inspect_data(daemon: Daemon, root: Path, sizes: list[int]) -> dict[str, Any]:
    command = [str(BIN / "cryptotune"), "--address", daemon.address, "--no-autostart", "--json"]
    # Warm up: the first inspection starts the daemon's inspection helper process and loads the
    # tokenizer there, whatever the file's size.
    subprocess.run([*command, "inspect-data", str(DATA)], capture_output=True, timeout=600, check=False)
    results = {}
    for size in sizes:
        path = write_records(root / f"records-{size}.jsonl", size)
        with daemon.client() as client:
            client.upload(path)  # stored first: the timing is the inspection's
        sampler = Sampler(daemon.ps, interval=0.01, with_children=True)
        started = time.perf_counter()
        completed = subprocess.run(
            [*command, "inspect-data", str(path)], capture_output=True, text=True, timeout=1800, check=False
        )
        seconds = time.perf_counter() - started
        usage = sampler.stop()
        floor = tokenizer_floor(path)  # the same records, in the same run
        report = json.loads(completed.stdout) if completed.stdout.strip().startswith("{") else {}
        results[str(size)] = {
            "records": size,
            "file_mb": path.stat().st_size / 2**20,
            "seconds": seconds,
            "tokenizer_seconds": floor["backend_seconds"],
            "tokenizer_call_seconds": floor["transformers_seconds"],
            "ratio_to_tokenizer": seconds / floor["backend_seconds"],
            "records_valid": report.get("records_valid"),
            "daemon_rss_before_mb": usage["rss_before_mb"],
            "daemon_rss_peak_delta_mb": usage["rss_peak_delta_mb"],
        }
    return results


# -- the report ---------------------------------------------------------------------------------------


def markdown(summary: dict[str, Any]) -> str:
    cli, submit, watch = summary["cli"], summary["submit"], summary["watchers"]
    daemon = watch["daemon"]
    latency = f"{watch['latency_p50_ms']:.1f} ms / {watch['latency_p99_ms']:.1f} ms"
    lines = [
        "| measurement | result |",
        "|---|---|",
        f"| `cryptotune list-gpus` round trip, median of {cli['runs']} fresh processes "
        f"| {cli['median_seconds']:.3f} s (p90 {cli['p90_seconds']:.3f} s, min {cli['min_seconds']:.3f} s); "
        f"import floor {cli['floor_median_seconds']:.3f} s, median excess over it "
        f"{cli['over_floor_median_seconds']:.3f} s |",
        f"| `cryptotune --help`, median of {cli['runs']} | {cli['help_median_seconds']:.3f} s |",
        f"| dry-run SubmitJob call, median of {submit['submits']} | {1000 * submit['median_seconds']:.1f} ms "
        f"(p90 {1000 * submit['p90_seconds']:.1f} ms) |",
        "| dry run, submit → plan (idle daemon, worker start included) "
        f"| {submit['dry_run_to_plan_seconds']:.1f} s |",
        f"| {watch['watchers']} concurrent watchers on one {summary['job_steps']}-step training job: "
        f"event delivery p50 / p99 | {latency} over {watch['live_deliveries']:,} live deliveries; "
        f"{watch['watchers_with_every_event']}/{watch['watchers']} watchers got all "
        f"{watch['events_per_watcher']} events; job {watch['job_state']} |",
        f"| daemon while watched ({daemon['wall_seconds']:.0f} s) "
        f"| CPU {daemon['cpu_percent_of_one_core']:.0f} % of one core ({daemon['cpu_seconds']:.1f} s), "
        f"RSS {daemon['rss_before_mb']:.0f} → peak {daemon['rss_peak_mb']:.0f} MB |",
    ]
    for start in summary.get("job_start", []):
        first = start["submit_to_first_progress_seconds"]
        stages = ", ".join(f"{name} {secs:.1f} s" for name, secs in start["stage_seconds"].items())
        how = f"{start['warm_workers']} warm worker(s)" if start["warm_workers"] else "no warm worker (cold)"
        lines.append(
            f"| submit → first `progress`, tiny-qwen3, daemon up {start['settle_seconds']:.0f} s, {how} "
            f"| {first:.1f} s (worker's first stage after {start['submit_to_worker_start_seconds']:.1f} s; "
            f"{stages}) |"
            if first is not None
            else f"| submit → first `progress`, {how} | no progress event |"
        )
    for size, result in summary["inspect"].items():
        lines.append(
            f"| `inspect-data` {int(size):,} records ({result['file_mb']:.1f} MB) "
            f"| {result['seconds']:.1f} s ({result['ratio_to_tokenizer']:.2f}× the tokenizer alone: "
            f"{result['tokenizer_seconds']:.1f} s, {result['tokenizer_call_seconds']:.1f} s through "
            f"transformers), daemon RSS +{result['daemon_rss_peak_delta_mb']:.0f} MB "
            f"above {result['daemon_rss_before_mb']:.0f} MB |"
        )
    return "\n".join(lines)


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--cli-runs", type=int, default=20)
    parser.add_argument("--submits", type=int, default=10)
    parser.add_argument("--watchers", type=int, default=200)
    parser.add_argument("--job-steps", type=int, default=6)
    parser.add_argument("--watch-timeout", type=float, default=600.0)
    parser.add_argument("--inspect-sizes", default="10000,100000")
    parser.add_argument("--settle", type=float, default=30.0, help="daemon uptime before a job-start submit")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument(
        "--only",
        default="",
        help="comma-separated subset of cli,submit,watchers,inspect,job_start (prints JSON, not the table)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse(argv)
    summary: dict[str, Any] = {"job_steps": args.job_steps}
    with running_daemon() as (daemon, root):
        steps = [
            ("cli", lambda: cli_round_trip(daemon, args.cli_runs)),
            ("submit", lambda: submit_latency(daemon, root, args.submits)),
            ("watchers", lambda: watchers(daemon, root, args.watchers, args.job_steps, args.watch_timeout)),
            ("inspect", lambda: inspect_data(daemon, root, [int(s) for s in args.inspect_sizes.split(",")])),
            (
                "job_start",
                lambda: [job_start(warm, args.settle, 4, args.watch_timeout) for warm in (1, 0)],
            ),
        ]
        only = {name for name in args.only.split(",") if name}
        unknown = only - {name for name, _ in steps}
        if unknown:
            raise SystemExit(f"--only: unknown measurement(s) {', '.join(sorted(unknown))}")
        for name, measure in steps:
            if only and name not in only:
                continue
            print(f"[daemon] {name} ...", file=sys.stderr, flush=True)
            started = time.monotonic()
            summary[name] = measure()
            print(f"[daemon] {name}: {time.monotonic() - started:.0f} s", file=sys.stderr, flush=True)
    print(json.dumps(summary, indent=1) if only else markdown(summary))
    if args.json:
        args.json.write_text(json.dumps(summary, indent=1), encoding="utf-8")
    return summary


if __name__ == "__main__":
    main()
