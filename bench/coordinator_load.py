"""Coordinator load: N simulated workers lease and submit synthetic traces over HTTP.

The benchmark creates a scratch PostgreSQL database, loads an arithmetic problem set and a campaign
with the `flywheel coordinator` CLI, starts `flywheel coordinator serve` as a subprocess, registers
N volunteers over HTTP and lets N asyncio tasks (httpx, no model) loop lease -> submit for a fixed
time. It then stops the server and ingests the same number of jobs straight into PostgreSQL with
psycopg (the lease UPDATE and the trace INSERT, in batches of the same size), so the printed ratio
compares the API with the database's own ceiling measured in the same run, on the same machine.

Verification: the server gets REDIS_URL and a queue name of its own with no task worker draining
it, so the API pays only for enqueueing (as it does in production) and no verifier competes for
CPU; the queue and its jobs are deleted at the end, like the database.

The machine may be shared, so besides rates the benchmark reports the CPU that the server, the
PostgreSQL backends and the load generator each used per job, what everything else took, and the
rate those costs allow on the machine's cores alone.

    python -m bench.coordinator_load                  # 500 workers, batch 8, 20 s
    python -m bench.coordinator_load --batch 32 --server-workers 2 --duration 30
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import random
import signal
import ssl
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Coroutine, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import httpx
import orjson
import psycopg
from sqlalchemy.engine import make_url

from bench.net import free_port
from shared.protocol import API_PREFIX, PROTOCOL_HEADER, PROTOCOL_VERSION, Routes

DEFAULT_SERVER = "postgresql+psycopg://postgres@127.0.0.1/postgres"
MODEL = "bench/synthetic"
TEXT_CHARS = 1024  # a short chain of thought: the size the target was stated for
CHARS_PER_TOKEN = 4  # typical of BPE tokenizers on English text
VARIANTS = 32  # distinct synthetic completions, so payloads are not all identical
SAMPLES_PER_PROBLEM = 250
T = TypeVar("T")


# --------------------------------------------------------------------------- configuration


@dataclass(frozen=True)
class Config:
    workers_sim: int
    duration_s: float
    warmup_s: float
    batch: int
    server_workers: int
    db_pool: int | None
    database_url: str
    redis_url: str
    jobs: int
    raw_connections: int

    @property
    def problems(self) -> int:
        return math.ceil(self.jobs / SAMPLES_PER_PROBLEM)


def parse_args(argv: Sequence[str] | None = None) -> Config:
    parser = argparse.ArgumentParser(
        prog="python -m bench.coordinator_load",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--workers-sim", type=int, default=500, help="concurrent simulated workers")
    parser.add_argument("--duration", type=float, default=20.0, help="measured seconds (after the warm-up)")
    parser.add_argument("--warmup", type=float, default=5.0, help="seconds of load before measuring")
    parser.add_argument("--batch", type=int, default=8, help="max_jobs per lease = traces per submission")
    parser.add_argument("--server-workers", type=int, default=2, help="uvicorn worker processes")
    parser.add_argument("--db-pool", type=int, default=None, help="FLYWHEEL_DB_POOL_SIZE for the server")
    parser.add_argument(
        "--database-url",
        default=DEFAULT_SERVER,
        help="a PostgreSQL server; a scratch database is created on it and dropped after",
    )
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument(
        "--jobs", type=int, default=120_000, help="jobs in the campaign; must outlast the run"
    )
    parser.add_argument(
        "--raw-connections",
        type=int,
        default=4,
        help="concurrent psycopg connections for the raw-ingest baseline",
    )
    a = parser.parse_args(argv)
    return Config(
        a.workers_sim,
        a.duration,
        a.warmup,
        a.batch,
        a.server_workers,
        a.db_pool,
        a.database_url,
        a.redis_url,
        a.jobs,
        a.raw_connections,
    )


# --------------------------------------------------------------------------- scratch database


def libpq_url(sqlalchemy_url: str) -> str:
    return make_url(sqlalchemy_url).set(drivername="postgresql").render_as_string(hide_password=False)


@contextlib.contextmanager
def scratch_database(server_url: str) -> Iterator[str]:
    """A fresh database on the given server for this run only; dropped however the run ends."""
    name = f"flywheel_bench_{uuid.uuid4().hex[:10]}"
    admin = libpq_url(server_url)
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield make_url(server_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextlib.contextmanager
def scratch_queue(redis_url: str) -> Iterator[str]:
    """A verification queue nobody drains; emptied and deleted at the end."""
    import redis
    import rq

    name = f"flywheel_bench_{uuid.uuid4().hex[:10]}"
    try:
        yield name
    finally:
        connection = redis.Redis.from_url(redis_url)
        queue = rq.Queue(name, connection=connection)
        queue.empty()
        queue.delete(delete_jobs=True)
        connection.close()


def flywheel(env: dict[str, str], *args: str) -> Any:
    """Run one `flywheel coordinator ...` command and parse its JSON output."""
    done = subprocess.run(
        [sys.executable, "-m", "flywheel", "coordinator", *args],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"flywheel coordinator {args[0]} failed:\n{done.stderr}")
    return json.loads(done.stdout) if done.stdout.lstrip().startswith("{") else None


def create_campaign(env: dict[str, str], name: str, samples: int) -> str:
    out = flywheel(
        env,
        "campaign",
        "--name",
        name,
        "--problem-set",
        "bench",
        "--model",
        MODEL,
        "--samples",
        str(samples),
        "--max-tokens",
        str(2 * TEXT_CHARS // CHARS_PER_TOKEN),
    )
    return str(out["id"])


def prepare(env: dict[str, str], config: Config) -> str:
    """Schema, operator token, problem set and the load campaign; returns the operator token."""
    flywheel(env, "migrate")
    operator = flywheel(env, "create-token", "--name", "bench-operator", "--scope", "operator")
    flywheel(env, "problems", "arithmetic", "--name", "bench", "--limit", str(config.problems))
    create_campaign(env, "bench-load", SAMPLES_PER_PROBLEM)
    analyze(env["DATABASE_URL"])
    return str(operator["token"])


def analyze(database_url: str) -> None:
    """Fresh planner statistics, as autovacuum gathers them in production after a bulk insert. A
    server running with autovacuum off (as test servers often do) would otherwise plan the lease
    query for an empty jobs table: a bitmap scan over every queued job instead of reading a few."""
    with psycopg.connect(libpq_url(database_url), autocommit=True) as conn:
        conn.execute("ANALYZE")


# --------------------------------------------------------------------------- the server


def server_env(base: dict[str, str], config: Config, database_url: str, queue: str) -> dict[str, str]:
    env = {
        **base,
        "DATABASE_URL": database_url,
        "REDIS_URL": config.redis_url,
        "FLYWHEEL_VERIFY_QUEUE": queue,
        "FLYWHEEL_AUTO_MIGRATE": "false",
        # Simulated workers share a handful of tokens' worth of traffic each; the per-token limit
        # guards against abuse, not against this measured load.
        "FLYWHEEL_RATE_LIMIT_PER_S": "0",
        # Simulated workers are never verified, so they would never earn more than a new
        # volunteer's in-flight limit: this measures the lease path, not that ramp.
        "FLYWHEEL_INITIAL_IN_FLIGHT_PER_WORKER": "256",
        # The sweeper would re-enqueue traces left pending by the undrained queue; keep it out of the run.
        "FLYWHEEL_REQUEUE_PENDING_AFTER_S": str(24 * 3600),
    }
    if config.db_pool is not None:
        env["FLYWHEEL_DB_POOL_SIZE"] = str(config.db_pool)
    return env


@contextlib.contextmanager
def running_server(env: dict[str, str], workers: int) -> Iterator[tuple[str, int]]:
    """`flywheel coordinator serve` in its own session; yields (base url, session id)."""
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "flywheel",
            "coordinator",
            "serve",
            "--port",
            str(port),
            "--workers",
            str(workers),
            "--log-level",
            "warning",
        ],
        env=env,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(base, proc)
        yield base, proc.pid
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def wait_healthy(base: str, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the coordinator exited with {proc.returncode}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(base + "/healthz", timeout=2).status_code == 200:
                return
        time.sleep(0.2)
    raise SystemExit("the coordinator did not become healthy within 60 s")


# --------------------------------------------------------------------------- CPU accounting


def _proc_stat(pid: str) -> tuple[int, int] | None:
    """(session id, CPU ticks) of a process, or None if it is gone or unreadable."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return int(fields[3]), int(fields[11]) + int(fields[12])


def session_cpu_s(session_id: int) -> float:
    """CPU seconds used so far by every live process of one session (the server tree)."""
    ticks = 0
    for pid in filter(str.isdigit, os.listdir("/proc")):
        stat = _proc_stat(pid)
        if stat is not None and stat[0] == session_id:
            ticks += stat[1]
    return ticks / os.sysconf("SC_CLK_TCK")


def pids_cpu_s(pids: Sequence[int]) -> dict[int, float]:
    """CPU seconds used so far by each live process of `pids`."""
    tick = os.sysconf("SC_CLK_TCK")
    stats = {pid: _proc_stat(str(pid)) for pid in pids}
    return {pid: stat[1] / tick for pid, stat in stats.items() if stat is not None}


def machine_busy_s() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, other users' work included."""
    with open("/proc/stat", encoding="ascii") as handle:
        values = [int(v) for v in handle.readline().split()[1:9]]
    idle = values[3] + values[4]
    total = sum(values)
    tick = os.sysconf("SC_CLK_TCK")
    return (total - idle) / tick, total / tick


def backend_pids(database_url: str) -> list[int]:
    """PostgreSQL backends serving the scratch database (the server's pooled connections)."""
    url = libpq_url(database_url)
    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
        ).fetchall()
    return [int(row[0]) for row in rows]


def service_pids(database_url: str, redis_url: str) -> list[int]:
    """PostgreSQL's background processes (WAL writer, checkpointer, ...) and the Redis server: they
    work for the run too, though not only for it when others share them."""
    query = "SELECT pid FROM pg_stat_activity WHERE backend_type <> 'client backend'"
    with psycopg.connect(libpq_url(database_url), autocommit=True) as conn:
        pids = [int(row[0]) for row in conn.execute(query).fetchall()]
    import redis

    connection = redis.Redis.from_url(redis_url)
    try:
        pids.append(int(connection.info("server")["process_id"]))
    finally:
        connection.close()
    return pids


@dataclass
class CpuSample:
    at: float
    server: float
    postgres: dict[int, float]  # per backend: the server's pool opens connections as load grows
    services: float
    loadgen: float
    machine_busy: float
    machine_total: float


def cpu_sample(server_sid: int, database_url: str, redis_url: str) -> CpuSample:
    busy, total = machine_busy_s()
    times = os.times()
    backends = pids_cpu_s(backend_pids(database_url))
    services = sum(pids_cpu_s(service_pids(database_url, redis_url)).values())
    return CpuSample(
        time.monotonic(),
        session_cpu_s(server_sid),
        backends,
        services,
        times.user + times.system,
        busy,
        total,
    )


def postgres_cpu_s(start: CpuSample, end: CpuSample) -> float:
    """CPU the scratch database's backends used between two samples (new backends count in full)."""
    return sum(cpu - start.postgres.get(pid, 0.0) for pid, cpu in end.postgres.items())


# --------------------------------------------------------------------------- synthetic traces


@dataclass(frozen=True)
class Completion:
    text: str
    token_ids: list[int]
    logprobs: list[float]


def synthetic_completion(rng: random.Random) -> Completion:
    """About TEXT_CHARS of worked arithmetic with plausible token ids and logprobs."""
    steps: list[str] = []
    while sum(len(s) for s in steps) < TEXT_CHARS - 40:
        a, b = rng.randint(10, 9999), rng.randint(10, 999)
        steps.append(
            f"First, {a} + {b} = {a + b}; carrying the digits gives {a + b}, then check by {b} + {a}. "
        )
    answer = rng.randint(-99999, 99999)
    text = f"Let me work through this step by step. {''.join(steps)}So the answer is \\boxed{{{answer}}}."
    n = len(text) // CHARS_PER_TOKEN
    token_ids = [rng.randrange(100, 50_000) for _ in range(n)]
    logprobs = [round(-rng.expovariate(4.0), 4) for _ in range(n)]
    return Completion(text, token_ids, logprobs)


def completions(seed: int = 0) -> list[Completion]:
    rng = random.Random(seed)
    return [synthetic_completion(rng) for _ in range(VARIANTS)]


def submission(job: dict[str, Any], completion: Completion) -> dict[str, Any]:
    return {
        "lease_id": job["lease_id"],
        "attempt_id": str(uuid.uuid4()),
        "job_id": job["spec"]["job_id"],
        "text": completion.text,
        "completion_token_ids": completion.token_ids,
        "logprobs": completion.logprobs,
        "finish_reason": "stop",
        "timings": {"generate_s": 1.5, "prompt_tokens": 24},
        "engine": {"name": "vllm", "version": "bench", "dtype": "bfloat16"},
        "hardware": {"gpus": ["simulated"], "gpu_memory_gb": [24.0]},
    }


# --------------------------------------------------------------------------- the load


@dataclass
class Sample:
    """One request: when it ended, how long it took, how many jobs it carried."""

    ended: float
    ms: float
    jobs: int


@dataclass
class Tally:
    leases: list[Sample] = field(default_factory=list)
    submits: list[Sample] = field(default_factory=list)
    problems: Counter[str] = field(default_factory=Counter)


def headers(token: str) -> dict[str, str]:
    return {
        "Authorization": f"Bearer {token}",
        PROTOCOL_HEADER: str(PROTOCOL_VERSION),
        "Content-Type": "application/json",
    }


async def post(client: httpx.AsyncClient, route: str, body: dict[str, Any]) -> tuple[float, httpx.Response]:
    started = time.perf_counter()
    response = await client.post(API_PREFIX + route, content=orjson.dumps(body))
    return (time.perf_counter() - started) * 1000, response


# Long enough for a saturated server to answer, short enough that a stalled one ends the run.
REQUEST_TIMEOUT_S = 60.0

# One TLS context for every client: httpx builds one per client otherwise (loading the CA bundle
# takes milliseconds), which would make the load generator's start-up CPU-bound for 500 clients.
TLS = ssl.create_default_context()


async def register(client: httpx.AsyncClient, index: int) -> tuple[str, str]:
    response = await client.post(
        API_PREFIX + Routes.register,
        json={"name": f"sim-{index}", "engine": {"name": "vllm"}, "models": [MODEL]},
    )
    response.raise_for_status()
    body = response.json()
    return str(body["worker_id"]), str(body["token"])


async def simulated_worker(
    base: str, token: str, stop_at: float, batch: int, pool: list[Completion], tally: Tally
) -> None:
    """Lease a batch, submit one trace per job at once, repeat until `stop_at`."""
    rng = random.Random(token)
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    async with httpx.AsyncClient(
        base_url=base, headers=headers(token), timeout=REQUEST_TIMEOUT_S, limits=limits, verify=TLS
    ) as client:
        while time.perf_counter() < stop_at:
            try:
                await lease_and_submit(client, batch, pool, rng, tally)
            except httpx.HTTPError as exc:  # a failing server is a result, not a crash of the benchmark
                tally.problems[f"transport error {type(exc).__name__}"] += 1


async def lease_and_submit(
    client: httpx.AsyncClient, batch: int, pool: list[Completion], rng: random.Random, tally: Tally
) -> None:
    ms, response = await post(client, Routes.lease, {"max_jobs": batch, "models": [MODEL]})
    if response.status_code != 200:
        tally.problems[f"lease HTTP {response.status_code}"] += 1
        return
    jobs = orjson.loads(response.content)["jobs"]
    tally.leases.append(Sample(time.perf_counter(), ms, len(jobs)))
    if not jobs:
        tally.problems["lease found no job (campaign exhausted: raise --jobs)"] += 1
        await asyncio.sleep(1.0)
        return
    results = [submission(job, rng.choice(pool)) for job in jobs]
    ms, response = await post(client, Routes.submit, {"results": results})
    if response.status_code != 200:
        tally.problems[f"submit HTTP {response.status_code}"] += 1
        return
    acks = orjson.loads(response.content)["acks"]
    refused = [ack for ack in acks if ack["status"] != "accepted"]
    tally.problems.update(f"ack {ack['status']} ({ack['reason']})" for ack in refused)
    tally.submits.append(Sample(time.perf_counter(), ms, sum(ack["status"] == "accepted" for ack in acks)))


async def register_all(base: str, n: int) -> list[tuple[str, str]]:
    limits = httpx.Limits(max_connections=32)
    async with httpx.AsyncClient(base_url=base, timeout=60, limits=limits, verify=TLS) as client:
        return list(await asyncio.gather(*(register(client, i) for i in range(n))))


@dataclass
class Window:
    start: float
    end: float
    cpu_start: CpuSample
    cpu_end: CpuSample


async def run_load(
    base: str, tokens: list[str], config: Config, sid: int, database_url: str, tally: Tally
) -> Window:
    pool = completions()
    start = time.perf_counter() + config.warmup_s
    end = start + config.duration_s
    loop = asyncio.get_running_loop()
    tasks = [asyncio.create_task(simulated_worker(base, t, end, config.batch, pool, tally)) for t in tokens]
    await asyncio.sleep(max(0.0, start - time.perf_counter()))
    cpu_start = await loop.run_in_executor(None, cpu_sample, sid, database_url, config.redis_url)
    await asyncio.sleep(max(0.0, end - time.perf_counter()))
    cpu_end = await loop.run_in_executor(None, cpu_sample, sid, database_url, config.redis_url)
    await asyncio.gather(*tasks)
    return Window(start, end, cpu_start, cpu_end)


def in_window(samples: list[Sample], window: Window) -> list[Sample]:
    return [s for s in samples if window.start <= s.ended < window.end]


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


# --------------------------------------------------------------------------- raw ingest baseline

LEASE_SQL = (
    "UPDATE jobs SET status = 'leased', lease_id = %s, worker_id = %s, lease_deadline = %s, "
    "attempts = attempts + 1 WHERE id = %s"
)
TRACE_SQL = (
    "INSERT INTO traces (id, job_id, campaign_id, worker_id, lease_id, attempt_id, text, "
    "completion_token_ids, logprobs, finish_reason, prompt_tokens, completion_tokens, generate_s, engine, "
    "hardware, status, created_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s::jsonb, %s::jsonb, 'stop', 24, "
    "%s, 1.5, %s::jsonb, %s::jsonb, 'pending', %s)"
)
SUBMITTED_SQL = "UPDATE jobs SET status = 'submitted' WHERE id = ANY(%s)"


@dataclass(frozen=True)
class EncodedCompletion:
    text: str
    token_ids: str
    logprobs: str
    tokens: int


def raw_batch(
    conn: psycopg.Connection[Any],
    job_ids: list[uuid.UUID],
    campaign: uuid.UUID,
    worker: uuid.UUID,
    pool: list[EncodedCompletion],
    rng: random.Random,
) -> None:
    """What one lease and one submission write, as two transactions of plain SQL."""
    now = datetime.now(UTC)
    leases = [uuid.uuid4() for _ in job_ids]
    with conn.transaction(), conn.cursor() as cur:
        cur.executemany(
            LEASE_SQL,
            [
                (lease, worker, now + timedelta(minutes=5), job)
                for lease, job in zip(leases, job_ids, strict=True)
            ],
        )
    engine, hardware = '{"name": "vllm"}', '{"gpus": ["simulated"]}'
    rows = []
    for lease, job in zip(leases, job_ids, strict=True):
        c = rng.choice(pool)
        rows.append(
            (
                uuid.uuid4(),
                job,
                campaign,
                worker,
                lease,
                uuid.uuid4(),
                c.text,
                c.token_ids,
                c.logprobs,
                c.tokens,
                engine,
                hardware,
                now,
            )
        )
    with conn.transaction(), conn.cursor() as cur:
        cur.executemany(TRACE_SQL, rows)
        cur.execute(SUBMITTED_SQL, (job_ids,))


@dataclass(frozen=True)
class RawResult:
    seconds: float
    postgres_cpu_s: float


def raw_ingest(database_url: str, campaign: str, worker: str, jobs: int, config: Config) -> RawResult:
    """Ingest `jobs` jobs over `raw_connections` connections, batches of `batch`."""
    url = libpq_url(database_url)
    with psycopg.connect(url) as conn:
        ids = [
            row[0]
            for row in conn.execute(
                "SELECT id FROM jobs WHERE campaign_id = %s LIMIT %s", (uuid.UUID(campaign), jobs)
            )
        ]
    pool = [
        EncodedCompletion(
            c.text, orjson.dumps(c.token_ids).decode(), orjson.dumps(c.logprobs).decode(), len(c.token_ids)
        )
        for c in completions()
    ]
    shards = [ids[i :: config.raw_connections] for i in range(config.raw_connections)]
    conns = [psycopg.connect(url) for _ in shards]
    barrier = threading.Barrier(len(shards) + 1)

    def work(conn: psycopg.Connection[Any], shard: list[uuid.UUID]) -> None:
        rng = random.Random(len(shard))
        barrier.wait()
        for i in range(0, len(shard), config.batch):
            raw_batch(conn, shard[i : i + config.batch], uuid.UUID(campaign), uuid.UUID(worker), pool, rng)

    threads = [threading.Thread(target=work, args=(c, s)) for c, s in zip(conns, shards, strict=True)]
    backends = [conn.info.backend_pid for conn in conns]
    for thread in threads:
        thread.start()
    cpu_before = pids_cpu_s(backends)
    barrier.wait()
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    cpu_after = pids_cpu_s(backends)
    for conn in conns:
        conn.close()
    return RawResult(elapsed, sum(cpu_after.values()) - sum(cpu_before.values()))


# --------------------------------------------------------------------------- report


@dataclass(frozen=True)
class Outcome:
    api_jobs: int
    window: Window
    leases: list[Sample]
    submits: list[Sample]
    problems: Counter[str]
    raw_jobs: int
    raw: RawResult
    stored: str


def cpu_rows(outcome: Outcome) -> list[tuple[str, str]]:
    """Cores each party used during the window. The machine is shared, so what other processes took
    is part of the result: it is CPU the coordinator could not have."""
    a, b = outcome.window.cpu_start, outcome.window.cpu_end
    wall = b.at - a.at
    server = (b.server - a.server) / wall
    postgres = postgres_cpu_s(a, b) / wall
    loadgen = (b.loadgen - a.loadgen) / wall
    services = (b.services - a.services) / wall
    share = (b.machine_busy - a.machine_busy) / max(1e-9, b.machine_total - a.machine_total)
    others = max(0.0, share * (os.cpu_count() or 1) - server - postgres - loadgen - services)
    return [
        ("CPU cores: server processes", f"{server:.2f}"),
        ("CPU cores: PostgreSQL backends", f"{postgres:.2f}"),
        ("CPU cores: load generator", f"{loadgen:.2f}"),
        ("CPU cores: PostgreSQL background processes and Redis", f"{services:.2f}"),
        ("CPU cores: everything else (other users, kernel)", f"{others:.2f}"),
        ("machine CPU busy", f"{100 * share:.0f}% of {os.cpu_count()} cores"),
    ]


def cost_rows(config: Config, outcome: Outcome) -> list[tuple[str, str]]:
    """CPU per job for each party, the capacity it implies, and the raw-ingest comparison."""
    a, b = outcome.window.cpu_start, outcome.window.cpu_end
    jobs = max(1, outcome.api_jobs)
    server_ms = 1000 * (b.server - a.server) / jobs
    api_pg_ms = 1000 * postgres_cpu_s(a, b) / jobs
    loadgen_ms = 1000 * (b.loadgen - a.loadgen) / jobs
    raw_pg_ms = 1000 * outcome.raw.postgres_cpu_s / max(1, outcome.raw_jobs)
    api_rate = outcome.api_jobs / (outcome.window.end - outcome.window.start)
    raw_rate = outcome.raw_jobs / outcome.raw.seconds
    with_gen, without_gen = capacity(server_ms + api_pg_ms + loadgen_ms), capacity(server_ms + api_pg_ms)
    return [
        ("server CPU per job (ms)", f"{server_ms:.2f}"),
        ("PostgreSQL CPU per job (ms): API / raw", f"{api_pg_ms:.2f} / {raw_pg_ms:.2f}"),
        ("load generator CPU per job (ms)", f"{loadgen_ms:.2f}"),
        (
            "capacity of the cores alone, jobs/s: with / without load generator",
            f"{with_gen:,.0f} / {without_gen:,.0f}",
        ),
        (f"raw PostgreSQL ingest jobs/s ({config.raw_connections} connections)", f"{raw_rate:,.0f}"),
        ("ratio API : raw", f"{api_rate / raw_rate:.2f}"),
    ]


def report(config: Config, outcome: Outcome) -> str:
    window_s = outcome.window.end - outcome.window.start
    lease_ms = [s.ms for s in outcome.leases]
    submit_ms = [s.ms for s in outcome.submits]
    rows = [
        ("simulated workers / batch", f"{config.workers_sim} / {config.batch}"),
        ("server", f"{config.server_workers} uvicorn workers, db pool {config.db_pool or 'default'}"),
        ("measured window", f"{window_s:.1f} s after {config.warmup_s:.0f} s warm-up"),
        ("jobs leased and submitted (API)", f"{outcome.api_jobs}"),
        ("API jobs/s", f"{outcome.api_jobs / window_s:,.0f}"),
        ("requests/s (lease + submit)", f"{(len(lease_ms) + len(submit_ms)) / window_s:,.0f}"),
        ("lease latency p50 / p99 (ms)", p50_p99(lease_ms)),
        ("submit latency p50 / p99 (ms)", p50_p99(submit_ms)),
        *cpu_rows(outcome),
        *cost_rows(config, outcome),
        ("traces stored during the whole run", outcome.stored),
        ("anomalies", ", ".join(f"{k}: {v}" for k, v in outcome.problems.items()) or "none"),
    ]
    width = max(len(k) for k, _ in rows)
    lines = [f"| {'measure':<{width}} | value |", f"|{'-' * (width + 2)}|-------|"]
    lines += [f"| {k:<{width}} | {v} |" for k, v in rows]
    return "\n".join(lines)


def capacity(cpu_ms_per_job: float) -> float:
    """Jobs/s the machine's cores would sustain at this CPU cost per job with nothing else running:
    the figure that does not depend on what other users of a shared machine did during the run."""
    return (os.cpu_count() or 1) * 1000 / max(cpu_ms_per_job, 1e-9)


def p50_p99(values: list[float]) -> str:
    return f"{percentile(values, 0.5):.1f} / {percentile(values, 0.99):.1f}"


def stored_traces(base: str, operator: str) -> str:
    """Traces in the database, from the operator API: a cross-check of the client's own counts."""
    auth = {"Authorization": f"Bearer {operator}"}
    try:
        response = httpx.get(base + API_PREFIX + Routes.stats, headers=auth, timeout=REQUEST_TIMEOUT_S)
        stats = response.raise_for_status().json()
    except httpx.HTTPError as exc:
        return f"unknown (the stats request failed: {type(exc).__name__})"
    return str(int(stats["traces_pending"]) + int(stats["traces_accepted"]) + int(stats["traces_rejected"]))


async def load_phase(base: str, config: Config, database_url: str, sid: int) -> tuple[Window, Tally, str]:
    volunteers = await register_all(base, config.workers_sim)
    tally = Tally()
    window = await run_load(base, [token for _, token in volunteers], config, sid, database_url, tally)
    return window, tally, volunteers[0][0]


def run(config: Config) -> str:
    base_env = dict(os.environ)
    with scratch_database(config.database_url) as database_url, scratch_queue(config.redis_url) as queue:
        env = server_env(base_env, config, database_url, queue)
        print(f"preparing {config.jobs} jobs in a scratch database ...", file=sys.stderr)
        operator = prepare(env, config)
        with running_server(env, config.server_workers) as (base, sid):
            seconds = config.warmup_s + config.duration_s
            print(f"{config.workers_sim} simulated workers for {seconds:.0f} s ...", file=sys.stderr)
            window, tally, worker_id = run_async(load_phase(base, config, database_url, sid))
            stored = stored_traces(base, operator)
        leases, submits = in_window(tally.leases, window), in_window(tally.submits, window)
        api_jobs = sum(s.jobs for s in submits)
        print(f"raw PostgreSQL ingest of {api_jobs} jobs ...", file=sys.stderr)
        if api_jobs == 0:
            raise SystemExit(
                f"no job completed in the measured window; traces stored: {stored}; "
                f"anomalies: {dict(tally.problems)}"
            )
        raw_campaign = create_campaign(env, "bench-raw", math.ceil(api_jobs / config.problems))
        raw = raw_ingest(database_url, raw_campaign, worker_id, api_jobs, config)
    outcome = Outcome(api_jobs, window, leases, submits, tally.problems, api_jobs, raw, stored)
    return report(config, outcome)


def run_async(coro: Coroutine[Any, Any, T]) -> T:
    """uvloop when installed: the load generator shares the CPU with the server, so it must be lean."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    config = parse_args(args)
    print(f"$ python -m bench.coordinator_load {' '.join(args)}".rstrip())
    print(run(config))
    return 0


if __name__ == "__main__":
    sys.exit(main())
