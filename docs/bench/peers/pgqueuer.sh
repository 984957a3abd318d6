#!/bin/sh
# Peer benchmark: PgQueuer 1.6.0 (Python, asyncpg driver) draining N trivial jobs on Postgres.
#
# Each job runs one `INSERT INTO bench_sink(job) VALUES ($1)` on an asyncpg pool of C
# connections handed to the jobs through PgQueuer's shared resources (Context.resources).
# The queue manager runs on its own dedicated asyncpg connection (AsyncpgDriver), as
# PgQueuer's docs advise. N jobs are queued up front (untimed) with Queries.enqueue in
# batches; the timer runs from PgQueuer.run(mode=drain) until it returns, i.e. the queue is
# empty, every job has finished and its completion has been written to pgqueuer_log.
# Concurrency C: max_concurrent_tasks=C with batch_size=C//2 (PgQueuer requires
# max_concurrent_tasks >= 2 x batch_size); C=1 uses the entrypoint's concurrency_limit=1
# with batch_size=1 instead. Then checks: bench_sink holds exactly N distinct jobs, the
# queue table is empty, and pgqueuer_log / pgqueuer_statistics show N 'successful' and no
# 'exception', 'failed', 'canceled' or 'deleted' job.
#
# Usage: pgqueuer.sh [--scratch DIR] [--postgres URL] [--jobs N] [--concurrency C]
# Progress goes to stderr; the last line of stdout is one JSON object:
#   {"peer":"pgqueuer","version":"1.6.0","jobs":N,"concurrency":C,"seconds":S,"per_second":R}
# Nothing is written inside the repository: the venv lives in the scratch dir, and the
# benchmark runs in a fresh database (peer_pgqueuer_<pid>) that is dropped on exit.
set -eu

VERSION=1.6.0
ME=pgqueuer.sh
HERE=$(CDPATH='' cd -- "$(dirname -- "$0")" && pwd)
PEER=pgqueuer
HELP_END=20
. "$HERE/common.inc"

PYTHON=${PYTHON:-python3}
command -v "$PYTHON" >/dev/null 2>&1 || die "$PYTHON not found (PgQueuer needs Python 3.10+)"

# 2. Install pgqueuer (with its asyncpg extra) into a venv in the scratch dir.
VENV="$SCRATCH/venv"
installed_version() {
  "$VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("pgqueuer"), end="")' 2>/dev/null || true
}
if [ "$(installed_version)" != "$VERSION" ]; then
  say "pip install pgqueuer[asyncpg]==$VERSION into $VENV"
  if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV" >"$SCRATCH/venv.log" 2>&1 \
      || die "python3 -m venv failed: $(tail -n1 "$SCRATCH/venv.log")"
  fi
  if ! PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1 "$VENV/bin/python" -m pip install \
        "pgqueuer[asyncpg]==$VERSION" >"$SCRATCH/pip-install.log" 2>&1; then
    die "pip install pgqueuer[asyncpg]==$VERSION failed: $(grep -m1 -i 'error' "$SCRATCH/pip-install.log" || tail -n1 "$SCRATCH/pip-install.log")"
  fi
  [ "$(installed_version)" = "$VERSION" ] \
    || die "pip install finished but the venv has pgqueuer '$(installed_version)', not $VERSION"
fi

# 3. Fresh database + sink table.
PGERR=$(psql "$ADMIN_URL" -X -q -v ON_ERROR_STOP=1 -c "CREATE DATABASE \"$DB\"" 2>&1 >/dev/null) \
  || die "cannot create scratch database $DB: $(printf '%s' "$PGERR" | head -n1)"
DB_CREATED=1
PGERR=$(psql "$DB_URL" -X -q -v ON_ERROR_STOP=1 \
  -c "CREATE TABLE bench_sink(id bigserial PRIMARY KEY, job bigint NOT NULL)" 2>&1 >/dev/null) \
  || die "cannot create bench_sink in $DB: $(printf '%s' "$PGERR" | head -n1)"

# 4. The benchmark itself.
cat >"$SCRATCH/bench.py" <<'EOF'
import os
import sys

# PgQueuer reads table names, durability etc. from PGQUEUER_* (and legacy bare) env vars:
# drop them so the install is the stock, durable (all tables logged) one.
for _k in list(os.environ):
    if _k.startswith("PGQUEUER_") or _k in {
        "PGDSN", "PREFIX", "CHANNEL", "FUNCTION", "STATISTICS_TABLE", "QUEUE_STATUS_TYPE",
        "QUEUE_TABLE", "QUEUE_TABLE_LOG", "TRIGGER", "SCHEDULES_TABLE", "DURABILITY",
    }:
        del os.environ[_k]

import asyncio
import json
import logging
import time
from datetime import timedelta

import asyncpg
import uvloop

from pgqueuer import PgQueuer, Queries
from pgqueuer.db import AsyncpgDriver
from pgqueuer.models import Context, Job
from pgqueuer.types import QueueExecutionMode

ME = "pgqueuer.sh"
dsn, N, C = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])


def say(msg: str) -> None:
    print(f"{ME}: {msg}", file=sys.stderr, flush=True)


class Failed(Exception):
    pass


# PgQueuer logs a traceback per failed job at ERROR; keep those, drop INFO/DEBUG chatter.
logging.getLogger("pgqueuer").setLevel(logging.WARNING)


async def scalar(conn: asyncpg.Connection, sql: str, *args: object) -> int:
    return int(await conn.fetchval(sql, *args))


async def main() -> float:
    try:
        setup = await asyncpg.connect(dsn)
    except Exception as e:  # noqa: BLE001
        raise Failed(f"cannot connect to the scratch database: {e}") from e

    # Install PgQueuer's schema (stock settings: durability=durable, every table logged).
    queries = Queries(AsyncpgDriver(setup))
    await queries.install()
    unlogged = await setup.fetch(
        "select relname from pg_class where relname like 'pgqueuer%' and relkind = 'r'"
        " and relpersistence <> 'p'"
    )
    if unlogged:
        raise Failed(f"PgQueuer tables are not logged: {[r['relname'] for r in unlogged]}")

    # Queue N jobs up front (untimed): batched Queries.enqueue, one statement per batch.
    t_q = time.perf_counter()
    batch = 5000
    for start in range(1, N + 1, batch):
        ns = range(start, min(start + batch, N + 1))
        await queries.enqueue(["sink"] * len(ns), [str(n).encode() for n in ns], [0] * len(ns))
    queued = await scalar(setup, "select count(*) from pgqueuer where status = 'queued'")
    if queued != N:
        raise Failed(f"queued {queued} jobs, expected {N}")

    # Worker: dedicated connection for the queue manager, a pool of C for the jobs' INSERTs.
    qm_conn = await asyncpg.connect(dsn)
    pool = await asyncpg.create_pool(dsn, min_size=C, max_size=C)
    done = 0

    if C >= 2:
        batch_size, max_tasks, ep_limit = max(1, C // 2), C, 0
    else:  # max_concurrent_tasks must be >= 2 * batch_size >= 2; serialise via the entrypoint
        batch_size, max_tasks, ep_limit = 1, None, 1
    say(
        f"queued {N} jobs in {time.perf_counter() - t_q:.2f} s; starting worker "
        f"(batch_size={batch_size}, max_concurrent_tasks={max_tasks}, "
        f"entrypoint concurrency_limit={ep_limit}, job pool={C})"
    )

    pgq = PgQueuer.from_asyncpg_connection(qm_conn, resources={"pool": pool})

    @pgq.entrypoint("sink", concurrency_limit=ep_limit, accepts_context=True)
    async def sink(job: Job, ctx: Context) -> None:
        nonlocal done
        await ctx.resources["pool"].execute(
            "INSERT INTO bench_sink(job) VALUES ($1)", int(job.payload or b"0")
        )
        done += 1

    stalled = False

    async def watchdog(t0: float) -> None:
        nonlocal stalled
        last, last_change, stall = -1, time.monotonic(), 60.0
        while True:
            await asyncio.sleep(2.0)
            if done != last:
                last, last_change = done, time.monotonic()
            elif time.monotonic() - last_change > stall:
                stalled = True
                pgq.shutdown.set()
                return
            say(f"{done}/{N} jobs done, {time.perf_counter() - t0:.1f} s")

    t0 = time.perf_counter()
    wd = asyncio.create_task(watchdog(t0))
    try:
        await pgq.run(
            batch_size=batch_size,
            max_concurrent_tasks=max_tasks,
            mode=QueueExecutionMode.drain,
        )
    finally:
        seconds = time.perf_counter() - t0
        wd.cancel()
    if stalled:
        raise Failed(f"no progress for 60 s at {done}/{N} jobs")

    # Checks.
    rows = await scalar(setup, "select count(*) from bench_sink")
    distinct = await scalar(setup, "select count(distinct job) from bench_sink")
    in_range = await scalar(setup, "select count(*) from bench_sink where job between 1 and $1", N)
    left = await scalar(setup, "select count(*) from pgqueuer")
    log = {
        r["status"]: r["n"]
        for r in await setup.fetch(
            "select status::text as status, count(*) as n from pgqueuer_log group by 1"
        )
    }
    stats: dict[str, int] = {}
    for s in await queries.log_statistics(limit=None):
        stats[s.status] = stats.get(s.status, 0) + s.count
    bad_statuses = ("exception", "failed", "canceled", "deleted")
    bad_log = {k: log.get(k, 0) for k in bad_statuses if log.get(k, 0)}
    bad_stats = {k: stats.get(k, 0) for k in bad_statuses if stats.get(k, 0)}
    await pool.close()
    await qm_conn.close()
    await setup.close()

    if bad_log or bad_stats:
        raise Failed(f"failed jobs: pgqueuer_log {bad_log or '{}'}, pgqueuer_statistics {bad_stats or '{}'}")
    if rows != N or distinct != N or in_range != N:
        raise Failed(
            f"count mismatch: bench_sink has {rows} rows ({distinct} distinct jobs, "
            f"{in_range} in 1..{N}), expected {N}"
        )
    if left:
        raise Failed(f"{left} job(s) still in the pgqueuer table after the run")
    if log.get("successful", 0) != N or stats.get("successful", 0) != N:
        raise Failed(
            f"pgqueuer_log has {log.get('successful', 0)} and pgqueuer_statistics "
            f"{stats.get('successful', 0)} 'successful' jobs, expected {N}"
        )
    if done != N:
        raise Failed(f"the entrypoint ran {done} times, expected {N}")
    say(
        f"done: {N} jobs in {seconds:.3f} s = {N / seconds:.1f} jobs/s; bench_sink={rows}, "
        f"queue left=0, log={log}"
    )
    return seconds


try:
    secs = uvloop.run(main())
except Failed as e:
    print(f"{ME}: FAILED: {str(e).splitlines()[0]}", file=sys.stderr)
    sys.exit(1)
except Exception as e:  # noqa: BLE001
    first = (str(e).splitlines() or [""])[0]
    print(f"{ME}: FAILED: unexpected {type(e).__name__}: {first}", file=sys.stderr)
    sys.exit(1)
print(json.dumps({
    "peer": "pgqueuer",
    "version": "1.6.0",
    "jobs": N,
    "concurrency": C,
    "seconds": round(secs, 3),
    "per_second": round(N / secs, 1),
}, separators=(",", ":")))
EOF

# Run from the scratch dir so nothing from the caller's cwd is imported.
(cd "$SCRATCH" && exec "$VENV/bin/python" bench.py "$DB_URL" "$JOBS" "$CONCURRENCY") &
HELPER_PID=$!
set +e
wait "$HELPER_PID"
rc=$?
set -e
HELPER_PID=""
[ "$rc" -eq 0 ] || exit "$rc"
