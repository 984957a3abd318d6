#!/bin/sh
# Peer benchmark: graphile-worker 0.18.0 (Node) draining N trivial jobs on Postgres.
#
# Each job runs one `INSERT INTO bench_sink(job) VALUES ($1)` through the job helpers
# (helpers.query, i.e. the worker's own pg pool). N jobs are queued up front (untimed) with
# WorkerUtils.addJobs; the timer runs from the call to `run()` until every job is completed
# (graphile deletes a job row when it completes, so: all N `job:success` events seen and the
# jobs table empty). Then the runner is stopped and the result is checked: bench_sink holds
# exactly N distinct jobs, and no job errored, failed or was attempted twice.
#
# Usage: graphile-worker.sh [--scratch DIR] [--postgres URL] [--jobs N] [--concurrency C]
# Progress goes to stderr; the last line of stdout is one JSON object:
#   {"peer":"graphile-worker","version":"0.18.0","jobs":N,"concurrency":C,"seconds":S,"per_second":R}
# Nothing is written inside the repository: npm installs into the scratch dir, and the
# benchmark runs in a fresh database (peer_graphile_<pid>) that is dropped on exit.
set -eu

VERSION=0.18.0
ME=graphile-worker.sh
HERE=$(CDPATH='' cd -- "$(dirname -- "$0")" && pwd)
PEER=graphile
HELP_END=15
. "$HERE/common.inc"

command -v node >/dev/null 2>&1 || die "node not found (graphile-worker needs Node.js)"
command -v npm >/dev/null 2>&1 || die "npm not found"

# 2. Install graphile-worker into the scratch dir (reused if already there at this version).
installed_version() {
  node -e 'try{process.stdout.write(require(process.argv[1]).version)}catch(e){}' \
    "$SCRATCH/node_modules/graphile-worker/package.json" 2>/dev/null || true
}
if [ "$(installed_version)" != "$VERSION" ]; then
  say "npm install graphile-worker@$VERSION into $SCRATCH"
  cat >"$SCRATCH/package.json" <<EOF
{ "name": "peer-graphile-bench", "private": true, "type": "module",
  "dependencies": { "graphile-worker": "$VERSION" } }
EOF
  if ! (cd "$SCRATCH" && npm install --no-audit --no-fund --engine-strict=false --loglevel=error \
        >"$SCRATCH/npm-install.log" 2>&1); then
    die "npm install graphile-worker@$VERSION failed: $(grep -i 'error' "$SCRATCH/npm-install.log" | grep -v -i 'complete log' | sed 's/^npm error //' | head -n2 | tr '\n' ' ' || true)"
  fi
  [ "$(installed_version)" = "$VERSION" ] \
    || die "npm install finished but node_modules/graphile-worker is not $VERSION (got '$(installed_version)')"
fi

# 3. Fresh database + sink table.
PGERR=$(psql "$ADMIN_URL" -X -q -v ON_ERROR_STOP=1 -c "CREATE DATABASE \"$DB\"" 2>&1 >/dev/null) \
  || die "cannot create scratch database $DB: $(printf '%s' "$PGERR" | head -n1)"
DB_CREATED=1
PGERR=$(psql "$DB_URL" -X -q -v ON_ERROR_STOP=1 \
  -c "CREATE TABLE bench_sink(id bigserial PRIMARY KEY, job bigint NOT NULL)" 2>&1 >/dev/null) \
  || die "cannot create bench_sink in $DB: $(printf '%s' "$PGERR" | head -n1)"

# 4. The benchmark itself (Node, ESM, next to node_modules so the import resolves).
cat >"$SCRATCH/bench.mjs" <<'EOF'
import pg from "pg";
import { run, runMigrations, makeWorkerUtils, Logger } from "graphile-worker";

const [connectionString, jobsArg, concArg] = process.argv.slice(2);
const N = Number(jobsArg);
const C = Number(concArg);
const ME = "graphile-worker.sh";
const say = (m) => process.stderr.write(`${ME}: ${m}\n`);
const fail = (m) => {
  process.stderr.write(`${ME}: FAILED: ${String(m).split("\n")[0]}\n`);
  process.exit(1);
};
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
process.on("uncaughtException", (e) => fail(`unexpected error: ${e && e.message}`));
process.on("unhandledRejection", (e) => fail(`unexpected error: ${e && e.message}`));

// Only warnings and errors: graphile logs one INFO line per completed job by default,
// which would put 20,000 console writes into the measured loop.
const logger = new Logger(() => (level, message) => {
  if (level === "error" || level === "warning") {
    process.stderr.write(`${ME}: graphile ${level}: ${String(message).split("\n")[0]}\n`);
  }
});

// Pool: graphile's docs ask for at least concurrentJobs + 2 when tasks use the pool; the
// LISTEN client holds one connection, getJob/completeJob (completeJob is not awaited by
// the worker) and the task's own INSERT each need one, so give it 2C + 2.
const maxPoolSize = Math.max(10, 2 * C + 2);
const common = { connectionString, logger, maxPoolSize, noHandleSignals: true };

const probe = new pg.Client({ connectionString });
try {
  await probe.connect();
} catch (e) {
  fail(`cannot connect to the scratch database: ${e.message}`);
}
const scalar = async (sql, params = []) => Number((await probe.query(sql, params)).rows[0].n);

try {
  await runMigrations(common);
} catch (e) {
  fail(`graphile-worker migrations failed: ${e.message}`);
}

// Queue N jobs up front (untimed), in batches through WorkerUtils.addJobs
// (graphile_worker.add_jobs under the hood).
const utils = await makeWorkerUtils(common);
const queueStart = process.hrtime.bigint();
const BATCH = 5000;
for (let i = 1; i <= N; i += BATCH) {
  const specs = [];
  for (let n = i; n < Math.min(i + BATCH, N + 1); n++) specs.push({ identifier: "sink", payload: { n } });
  await utils.addJobs(specs);
}
await utils.release();
const queued = await scalar("select count(*) as n from graphile_worker.jobs");
if (queued !== N) fail(`queued ${queued} jobs, expected ${N}`);
say(`queued ${N} jobs in ${(Number(process.hrtime.bigint() - queueStart) / 1e9).toFixed(2)} s; starting worker (concurrency ${C}, pool ${maxPoolSize})`);

let successes = 0;
let errors = 0;
let firstError = null;
const taskList = {
  sink: async (payload, helpers) => {
    await helpers.query("INSERT INTO bench_sink(job) VALUES ($1)", [payload.n]);
  },
};

const t0 = process.hrtime.bigint();
const runner = await run({ ...common, concurrency: C, taskList });
runner.events.on("job:success", () => { successes++; });
runner.events.on("job:error", ({ job, error }) => {
  errors++;
  if (!firstError) firstError = `job ${job.id} attempt ${job.attempts}: ${error && error.message}`;
});
let runnerDied = null;
runner.promise.catch((e) => { runnerDied = e; });

// Wait: every job reported success, then graphile's completeJob deletes have landed.
let last = -1;
let lastChange = Date.now();
let lastReport = Date.now();
const STALL_MS = 60000;
while (true) {
  if (errors > 0) break;
  if (runnerDied) fail(`worker stopped with an error: ${runnerDied.message}`);
  if (successes >= N) {
    const left = await scalar("select count(*) as n from graphile_worker._private_jobs");
    if (left === 0) break;
  }
  if (successes !== last) { last = successes; lastChange = Date.now(); }
  else if (Date.now() - lastChange > STALL_MS) fail(`no progress for ${STALL_MS / 1000} s at ${successes}/${N} jobs`);
  if (Date.now() - lastReport >= 2000) {
    lastReport = Date.now();
    say(`${successes}/${N} jobs done, ${(Number(process.hrtime.bigint() - t0) / 1e9).toFixed(1)} s`);
  }
  await sleep(successes >= N ? 2 : 10);
}
const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
await runner.stop();

if (errors > 0) fail(`${errors} job attempt(s) failed, first: ${firstError}`);
// Checks.
const rows = await scalar("select count(*) as n from bench_sink");
const distinct = await scalar("select count(distinct job) as n from bench_sink");
const inRange = await scalar("select count(*) as n from bench_sink where job between 1 and $1", [N]);
const leftJobs = await scalar("select count(*) as n from graphile_worker.jobs");
const retried = await scalar("select count(*) as n from graphile_worker.jobs where attempts > 1 or last_error is not null");
await probe.end();
if (rows !== N || distinct !== N || inRange !== N) fail(`count mismatch: bench_sink has ${rows} rows (${distinct} distinct jobs, ${inRange} in 1..${N}), expected ${N}`);
if (leftJobs !== 0) fail(`${leftJobs} job(s) still in graphile_worker.jobs after the run (${retried} with attempts > 1 or an error)`);
if (successes !== N) fail(`saw ${successes} job:success events, expected ${N}`);

say(`done: ${N} jobs in ${seconds.toFixed(3)} s = ${(N / seconds).toFixed(1)} jobs/s; bench_sink=${rows}, jobs left=0, errors=0`);
console.log(JSON.stringify({
  peer: "graphile-worker",
  version: "0.18.0",
  jobs: N,
  concurrency: C,
  seconds: Math.round(seconds * 1000) / 1000,
  per_second: Math.round((N / seconds) * 10) / 10,
}));
process.exit(0);
EOF

# Run from the scratch dir: no graphile config, tasks/ or crontab from the caller's cwd.
# NO_LOG_SUCCESS stops graphile's per-job success log line (its own perf tests set it too).
(cd "$SCRATCH" && NO_LOG_SUCCESS=1 exec node bench.mjs "$DB_URL" "$JOBS" "$CONCURRENCY") &
HELPER_PID=$!
set +e
wait "$HELPER_PID"
rc=$?
set -e
HELPER_PID=""
[ "$rc" -eq 0 ] || exit "$rc"
