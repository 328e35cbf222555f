"""
Usage counting under load, on PostgreSQL.

Prints, side by side from one run: the ceiling of one hot row (plain
``UPDATE ... SET value = value + 1`` from 8 concurrent clients), the soft and the
hard counting paths at the same concurrency (with their totals checked), a hard
limit hammered past its end (no overshoot), and the median latency of the
cheapest authenticated endpoint with accounting on and off.

Rows 2 and 3 are the deployment the README recommends: api_calls counted in
Redis (usage.live) and flushed to PostgreSQL. Their totals are checked twice:
live, and in the database after a flush. Rows 2b and 3b are the same paths
without Redis (the database alone, as on the embedded default).

Row 5 shows why the database alone cannot reach row 2's target: when the
baseline's rate times its CPU per increment approaches the CPU the machine has
to spare, the hot row is limited by CPU rather than by its lock, and no design
that commits one transaction per increment can triple it.

Clients are processes (not threads, which would share one GIL) with their own
connections. Every loop is bounded by a deadline and a maximum count. The run
creates and drops its own database, ``agentpost_bench_usage``, on the server
that DATABASE_URL names (loopback by default). Counting in Redis uses a
redis-server the run starts on a free loopback port with the README's
durability settings, or the Redis that USAGE_REDIS_URL names (under keys of its
own, removed afterwards).
"""

from __future__ import annotations

import multiprocessing
import os
import socket
import statistics
import subprocess
import tempfile
import threading
import time
import uuid
from datetime import UTC, datetime
from urllib.parse import urlsplit, urlunsplit

DATABASE_NAME = "agentpost_bench_usage"
# Without USAGE_REDIS_URL, the bench starts a Redis of its own configured as the
# README recommends (appendonly yes, fsync every second).
REDIS_URL = os.environ.get("USAGE_REDIS_URL", "")
CLIENTS = 8
SECONDS = 1.5  # per measurement
# Each throughput figure is the median of this many runs, interleaved, so that
# a neighbour's burst of work on a shared machine skews one run, not a figure.
ROUNDS = 5
MAX_OPS_PER_CLIENT = 200_000
HARD_ROOM = 2_000  # places left under the limit in the overshoot test
HARD_TRIES_PER_CLIENT = 400
LATENCY_REQUESTS = 600  # per side, in alternating blocks
LATENCY_BLOCK = 50
CPU_SAMPLES = 2_000
FLUSH_ORGS = 5_000
FLUSH_EVERY = 0.5  # seconds, while Redis counts
NOW = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)


def _database_urls() -> tuple[str, str]:
    """Return the bench database's URL and the server's maintenance database URL."""
    parts = urlsplit(os.environ["DATABASE_URL"])
    if not parts.scheme.startswith("postgres"):
        raise SystemExit("bench_usage needs PostgreSQL in DATABASE_URL")
    bench = urlunsplit(parts._replace(path=f"/{DATABASE_NAME}"))
    maintenance = urlunsplit(parts._replace(path="/postgres"))
    return bench, maintenance


def _recreate_database(maintenance_url: str, *, drop_only: bool = False) -> None:
    import psycopg

    with psycopg.connect(maintenance_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{DATABASE_NAME}"')
        if not drop_only:
            conn.execute(f'CREATE DATABASE "{DATABASE_NAME}"')


class _NoMigrations(dict):
    # Build the tables from the models, as the test suite does: replaying
    # dj-stripe's migrations costs a minute and measures nothing here.
    def __contains__(self, item) -> bool:
        return True

    def __getitem__(self, item):
        return None


class _NullMeter:
    def charge(self, **kwargs):
        return None

    def credit(self, **kwargs):
        return None


def _setup_schema() -> dict[str, str]:
    """Create the tables, the plans and one org per measurement; return org ids."""
    from django.conf import settings
    from django.core.management import call_command
    from django.db import connection

    from agentpost.orgs.services import create_org
    from usage.models import Plan, PlanLimit
    from usage.plans import seed_plans

    settings.MIGRATION_MODULES = _NoMigrations()
    call_command("migrate", run_syncdb=True, verbosity=0)
    seed_plans(Plan, PlanLimit)
    # Limits far away, so the figures are of the counting path, not refusals.
    PlanLimit.objects.filter(plan_id="pro").update(limit=10**12, mode="soft")
    PlanLimit.objects.filter(plan_id="free").update(limit=10**12, mode="hard")
    with connection.cursor() as cursor:
        cursor.execute("CREATE TABLE bench_hot (id int PRIMARY KEY, value bigint)")
        cursor.execute("INSERT INTO bench_hot VALUES (1, 0)")

    orgs = {}
    for name, plan in [
        ("soft", "pro"),
        ("soft_db", "pro"),
        ("hard", "free"),
        ("hard_db", "free"),
        ("overshoot", "free"),
        ("latency", "pro"),
    ]:
        new = create_org(name=name, owner_email=f"{name}@bench.test", plan=plan)
        orgs[name] = new.org.pk
        orgs[f"{name}_token"] = new.api_key.token
    return orgs


def _client(kind: str, org_id: str, start: float, deadline: float, max_ops: int, out):
    import psycopg
    from django.db import connection

    from agentpost import metering
    from agentpost.metering import QuotaExceeded

    raw = psycopg.connect(os.environ["DATABASE_URL"], autocommit=True)
    done = refused = 0
    try:
        while time.time() < start:
            time.sleep(0.001)
        while done + refused < max_ops and time.time() < deadline:
            if kind == "hot_raw":
                raw.execute("UPDATE bench_hot SET value = value + 1 WHERE id = 1")
                done += 1
            elif kind == "hot_django":
                with connection.cursor() as cursor:
                    cursor.execute(
                        "UPDATE bench_hot SET value = value + 1 WHERE id = 1"
                    )
                done += 1
            else:
                try:
                    metering.charge(org_id=org_id, counter="api_calls", now=NOW)
                    done += 1
                except QuotaExceeded:
                    refused += 1
    finally:
        connection.close()
        raw.close()
        out.put((done, refused))


def _run_clients(
    kind: str, org_id: str, *, seconds: float, max_ops: int
) -> tuple[int, int, float]:
    """Run CLIENTS processes at once; return (done, refused, seconds)."""
    from django.db import connections

    connections.close_all()  # never share a connection with a forked child
    context = multiprocessing.get_context("fork")
    out = context.Queue()
    start = time.time() + 0.5
    deadline = start + seconds
    processes = [
        context.Process(
            target=_client, args=(kind, org_id, start, deadline, max_ops, out)
        )
        for _ in range(CLIENTS)
    ]
    for process in processes:
        process.start()
    # While Redis counts, the flush runs beside the clients, as beat runs it
    # (every FLUSH_EVERY here, more often than USAGE_FLUSH_SECONDS' default).
    flusher = _Flusher() if _live_counts() else None
    results = [out.get(timeout=seconds + 60) for _ in processes]
    for process in processes:
        process.join(timeout=30)
    if flusher:
        flusher.stop()
    elapsed = min(seconds, max(time.time() - start, 0.001))
    return sum(r[0] for r in results), sum(r[1] for r in results), elapsed


def _redis_durability() -> str:
    """Say how the Redis that counts keeps its data (rows 2 and 3 depend on it)."""
    try:
        config = _live_counts().admin.config_get("append*")
    except Exception as exc:  # managed Redis may refuse CONFIG
        return f"persistence unknown ({exc})"
    return (
        f"appendonly {config.get('appendonly')}, "
        f"appendfsync {config.get('appendfsync')}"
    )


def _live_counts():
    from usage.live import live_counts

    return live_counts()


class _Flusher(threading.Thread):
    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.stopping = threading.Event()
        self.flushes = 0
        self.start()

    def run(self) -> None:
        from django.db import connection

        try:
            while not self.stopping.wait(FLUSH_EVERY):
                _live_counts().flush()
                self.flushes += 1
        finally:
            connection.close()

    def stop(self) -> None:
        self.stopping.set()
        self.join(timeout=60)


def _total(org_id: str) -> int:
    """Return the counter's total: live when counted in Redis."""
    from usage import counting
    from usage.periods import month_period

    return counting.total(
        org_id=org_id, counter="api_calls", period_start=month_period(NOW).start
    )


def _database_total(org_id: str) -> int:
    """Return what the database holds of the counter, after a flush."""
    from django.db.models import Sum

    from usage.live import live_counts
    from usage.models import UsageCounter

    if counts := live_counts():
        counts.flush()
    rows = UsageCounter.objects.filter(org_id=org_id, counter="api_calls")
    return rows.aggregate(total=Sum("value"))["total"] or 0


def _cpu_per_increment(org_id: str) -> dict[str, tuple[float, float]] | None:
    """Return {path: (client µs, server µs)} of CPU per increment, one at a time.

    The server's CPU is read from /proc for the backend serving this connection,
    so this needs the database on this machine; otherwise it returns None.
    """
    from django.db import connection

    from agentpost import metering

    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        stat = f"/proc/{cursor.fetchone()[0]}/stat"
    if not os.path.exists(stat):
        return None

    def server_seconds() -> float:
        fields = open(stat).read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def hot() -> None:
        with connection.cursor() as cursor:
            cursor.execute("UPDATE bench_hot SET value = value + 1 WHERE id = 1")

    def soft() -> None:
        metering.charge(org_id=org_id, counter="api_calls", now=NOW)

    result = {}
    for name, work in (("hot", hot), ("soft", soft)):
        work()
        client, server = time.process_time(), server_seconds()
        for _ in range(CPU_SAMPLES):
            work()
        result[name] = (
            (time.process_time() - client) * 1e6 / CPU_SAMPLES,
            (server_seconds() - server) * 1e6 / CPU_SAMPLES,
        )
    return result


def _latencies(token: str, org_id: str) -> tuple[float, float]:
    """Return the median latency in ms of GET /organizations/{id}: (off, on)."""
    from django.test import Client

    from agentpost import metering
    from usage.meter import UsageMeter

    client = Client(HTTP_HOST="localhost", HTTP_AUTHORIZATION=f"Bearer {token}")
    path = f"/organizations/{org_id}"
    timings: dict[bool, list[float]] = {False: [], True: []}
    meters = {False: _NullMeter(), True: UsageMeter()}
    for on in (False, True):  # warm both paths up
        metering.install(meters[on])
        for _ in range(LATENCY_BLOCK):
            assert client.get(path).status_code == 200
    for block in range(2 * LATENCY_REQUESTS // LATENCY_BLOCK):
        on = block % 2 == 1
        metering.install(meters[on])
        for _ in range(LATENCY_BLOCK):
            started = time.perf_counter()
            response = client.get(path)
            timings[on].append((time.perf_counter() - started) * 1000)
            assert response.status_code == 200
    metering.install(meters[True])
    return statistics.median(timings[False]), statistics.median(timings[True])


def _flush_cost(orgs: int) -> tuple[float, float]:
    """Count one call for each of ``orgs`` new orgs; return (seconds, flushed).

    The seconds are those of one flush that writes every one of them.
    """
    from agentpost import metering
    from agentpost.orgs.models import Organization
    from usage.live import live_counts

    counts = live_counts()
    counts.flush()
    created = Organization.objects.bulk_create(
        Organization(name=f"flush {n}", plan="pro") for n in range(orgs)
    )
    for org in created:
        metering.charge(org_id=org.pk, counter="api_calls", now=NOW)
    started = time.perf_counter()
    flushed = counts.flush()
    return time.perf_counter() - started, flushed


def _start_redis(directory: str) -> tuple[subprocess.Popen, str]:
    """Start redis-server with AOF on a free loopback port; return it and its URL."""
    import redis

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
        + ["--appendonly", "yes", "--appendfsync", "everysec", "--dir", directory],
        stdout=subprocess.DEVNULL,
    )
    client = redis.Redis(port=port)
    for _ in range(200):
        try:
            client.ping()
            break
        except redis.ConnectionError:
            time.sleep(0.05)
    client.close()
    return server, f"redis://127.0.0.1:{port}/0"


def main() -> None:
    bench_url, maintenance_url = _database_urls()
    os.environ["DATABASE_URL"] = bench_url
    os.environ["BILLING_ENABLED"] = "true"
    os.environ["USAGE_REDIS_PREFIX"] = prefix = f"bench:{uuid.uuid4().hex}:"
    server = None
    with tempfile.TemporaryDirectory() as directory:
        url = REDIS_URL
        if not url:
            server, url = _start_redis(directory)
        os.environ["USAGE_REDIS_URL"] = url
        _recreate_database(maintenance_url)
        try:
            import django

            django.setup()
            _measure()
        finally:
            import redis
            from django.db import connections

            connections.close_all()
            _recreate_database(maintenance_url, drop_only=True)
            if server:
                server.terminate()
                server.wait(timeout=30)
            else:
                client = redis.Redis.from_url(url)
                for key in client.scan_iter(f"{prefix}*"):
                    client.delete(key)


def _measure() -> None:
    from django.conf import settings
    from django.db import connection

    from agentpost.orgs.models import Organization
    from usage.models import LimitOverride

    load_before = os.getloadavg()[0]
    orgs = _setup_schema()
    # kind: (what the clients run, which org they charge)
    kinds = {
        "hot_raw": ("hot_raw", ""),
        "hot_django": ("hot_django", ""),
        "soft": ("charge", orgs["soft"]),
        "soft_db": ("charge", orgs["soft_db"]),
        "hard": ("charge", orgs["hard"]),
        "hard_db": ("charge", orgs["hard_db"]),
    }
    redis_url = settings.USAGE_REDIS_URL
    rates: dict[str, list[float]] = {kind: [] for kind in kinds}
    counted = dict.fromkeys(kinds, 0)
    for _ in range(ROUNDS):
        for kind, (client, org_id) in kinds.items():
            # The clients are forked, so they see the setting as it is here.
            settings.USAGE_REDIS_URL = "" if kind.endswith("_db") else redis_url
            done, refused, elapsed = _run_clients(
                client, org_id, seconds=SECONDS, max_ops=MAX_OPS_PER_CLIENT
            )
            assert refused == 0, (kind, refused)
            rates[kind].append(done / elapsed)
            counted[kind] += done
    settings.USAGE_REDIS_URL = redis_url

    with connection.cursor() as cursor:
        cursor.execute("SELECT value FROM bench_hot WHERE id = 1")
        hot_total = cursor.fetchone()[0]
    totals = {kind: _total(org_id) for kind, (_, org_id) in kinds.items() if org_id}
    stored = {kind: _database_total(orgs[kind]) for kind in ("soft", "hard")}
    totals["hot"] = hot_total
    counted["hot"] = counted["hot_raw"] + counted["hot_django"]

    # Overshoot: leave HARD_ROOM places and let 8 clients try for many more.
    overshoot_org = Organization.objects.get(pk=orgs["overshoot"])
    LimitOverride.objects.create(
        org=overshoot_org,
        counter="api_calls",
        limit=HARD_ROOM,
        mode="hard",
        updated_at=NOW,
    )
    passed, refused, _ = _run_clients(
        "charge",
        orgs["overshoot"],
        seconds=60,
        max_ops=HARD_TRIES_PER_CLIENT,
    )
    overshoot_total = _total(orgs["overshoot"])
    overshoot_stored = _database_total(orgs["overshoot"])

    flush_seconds, flushed = _flush_cost(FLUSH_ORGS)
    off_ms, on_ms = _latencies(orgs["latency_token"], orgs["latency"])
    settings.USAGE_REDIS_URL = ""  # row 5 is about the database alone
    cpu = _cpu_per_increment(orgs["latency"])
    settings.USAGE_REDIS_URL = redis_url

    median = {kind: statistics.median(values) for kind, values in rates.items()}
    baseline = median["hot_raw"]
    overhead_ms = on_ms - off_ms
    allowed_ms = max(1.0, 0.15 * off_ms)

    def row(name: str, result: str, target: str = "", ok: bool | None = None):
        mark = "" if ok is None else ("yes" if ok else "NO")
        print(f"| {name} | {result} | {target} | {mark} |")

    def rate(kind: str) -> str:
        return f"{median[kind]:,.0f}/s = {median[kind] / baseline:.2f}x"

    def exact(kind: str) -> bool:
        return totals[kind] == counted[kind] == stored.get(kind, counted[kind])

    def checked(kind: str) -> str:
        result = f"total {totals[kind]:,} of {counted[kind]:,} counted"
        if kind in stored:
            result += f", {stored[kind]:,} in PostgreSQL after a flush"
        return result

    print(
        f"PostgreSQL, {CLIENTS} client processes, median of {ROUNDS} interleaved runs "
        f"of {SECONDS:.1f} s each; {os.cpu_count()} CPUs, load average "
        f"{load_before:.1f} before and {os.getloadavg()[0]:.1f} after. Ratios are "
        f"to row 1. Redis: {_redis_durability()}; flushed every {FLUSH_EVERY} s "
        "while it counts."
    )
    print()
    print("| measure | result | target | met |")
    print("|---|---|---|---|")
    row(
        "1. baseline: hot-row `UPDATE ... SET value = value + 1`, bare psycopg",
        f"{baseline:,.0f}/s",
    )
    row(
        "1b. the same through Django's cursor (as rows 2b and 3b pay it)",
        f"{rate('hot_django')} ({checked('hot')})",
    )
    row(
        "2. soft path: `metering.charge` of a soft-limited api_calls, Redis",
        f"{rate('soft')} ({checked('soft')})",
        ">= 3x, exact",
        median["soft"] >= 3 * baseline and exact("soft"),
    )
    row(
        "2b. the same without Redis (PostgreSQL alone)",
        f"{rate('soft_db')} ({checked('soft_db')})",
    )
    row(
        "3. hard path: `metering.charge` of a hard-limited api_calls, Redis",
        f"{rate('hard')} ({checked('hard')})",
        ">= 0.8x, exact",
        median["hard"] >= 0.8 * baseline and exact("hard"),
    )
    row(
        "3b. the same without Redis (PostgreSQL alone)",
        f"{rate('hard_db')} ({checked('hard_db')})",
    )
    row(
        f"3c. hard limit with {HARD_ROOM:,} left, {CLIENTS * HARD_TRIES_PER_CLIENT:,} "
        "concurrent tries, Redis up",
        f"{passed:,} passed, {refused:,} refused, counter {overshoot_total:,} "
        f"({overshoot_stored:,} in PostgreSQL)",
        f"exactly {HARD_ROOM:,}, no overshoot",
        passed == HARD_ROOM == overshoot_total == overshoot_stored,
    )
    row(
        f"3d. one flush of {FLUSH_ORGS:,} orgs' counts to PostgreSQL",
        f"{flush_seconds * 1000:,.0f} ms ({flushed:,} counters written)",
    )
    row(
        "4. GET /organizations/{id} median latency, accounting off / on",
        f"{off_ms:.2f} ms / {on_ms:.2f} ms (+{overhead_ms:.2f} ms, "
        f"{overhead_ms / off_ms:+.0%})",
        f"<= +{allowed_ms:.2f} ms (max of 1 ms, 15 %)",
        overhead_ms <= allowed_ms,
    )
    if cpu:
        row(
            "5. CPU per increment, one client: hot-row UPDATE / soft charge "
            "without Redis (client + server)",
            " / ".join(f"{c:.0f} + {v:.0f} µs" for c, v in (cpu["hot"], cpu["soft"])),
        )
    print()
    print("Runs (per second):")
    for kind, values in rates.items():
        print(f"  {kind}: " + ", ".join(f"{v:,.0f}" for v in values))
