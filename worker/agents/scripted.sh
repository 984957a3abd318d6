#!/bin/sh
# A scripted stand-in for a coding agent, used by `conductor demo` and the tests. It runs in
# the clone, like a real agent: edits, commits, and writes agent-meta/ (docs/design.md section 5).
#
#   sh scripted.sh [MODE] [LOG] [SECONDS]
#   MODE: ok (default) | slow (ok after SECONDS, default 2) | fail (reports failure) | lie (a marker that is
#         not true/false) | silent (no agent-meta) | hang (never ends) | crash-worker (kills
#         its worker, as a crash would)
#   LOG:  a file to append "start|end <worker dir> <epoch ns>" lines to.
set -e
mode="${1:-ok}"
log="${2:-}"
[ -n "$log" ] && echo "start $(dirname "$PWD") $(date +%s%N)" >> "$log"
subject=$(head -n 1 "$TASK_FILE" | sed 's/^# *//')
case "$mode" in
  hang) sleep 3600 ;;
  crash-worker) kill -9 "$WORKER_PID"; sleep 3600 ;;
  slow) sleep "${3:-2}" ;;
esac
mkdir -p agent-meta notes
if [ "$mode" = ok ] || [ "$mode" = slow ]; then
  name="notes/$(basename "$(dirname "$PWD")").md"
  { echo "# Investigation"; echo; cat "$TASK_FILE"; } > "$name"
  git add "$name"
  git -c user.name="Scripted agent" -c user.email=agent@example.invalid commit -q -m "Investigate: $subject"
  # Left uncommitted on purpose: the worker commits what the agent leaves.
  echo "- $subject" >> CHANGELOG.md
fi
case "$mode" in
  ok|slow) echo true > agent-meta/WAS_JOB_SUCCESSFUL ;;
  fail) echo false > agent-meta/WAS_JOB_SUCCESSFUL ;;
  lie) echo yes > agent-meta/WAS_JOB_SUCCESSFUL ;;
  silent) exit 0 ;;
esac
echo "Fix: $subject" | cut -c1-110 > agent-meta/meta-info.txt
printf '## What the agent did\n\nRead the task, wrote notes, updated the changelog.\n' > agent-meta/ending-report.md
[ -n "$log" ] && echo "end $(dirname "$PWD") $(date +%s%N)" >> "$log"
exit 0
