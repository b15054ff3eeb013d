#!/usr/bin/env bash
# Stop what deploy/local/up.sh started: the three services, then Redis and Kafka.
#   down.sh [--services-only]
set -euo pipefail
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
export LOKET_STATE_DIR="${LOKET_STATE_DIR:-$REPO_ROOT/var}"
PID_DIR="$LOKET_STATE_DIR/run"

for svc in intake router handoff; do
  pid_file="$PID_DIR/$svc.pid"
  [[ -f "$pid_file" ]] || continue
  pid="$(cat "$pid_file")"
  if kill -0 "$pid" 2>/dev/null; then
    echo "[down] stopping $svc (pid $pid)" >&2
    # setsid made the service its own process group: stop uv and python together.
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL -- "-$pid" 2>/dev/null || true
  fi
  rm -f "$pid_file"
done

if [[ "${1:-}" != "--services-only" ]]; then
  "$REPO_ROOT/deploy/local/redis.sh" stop
  "$REPO_ROOT/deploy/local/kafka.sh" stop
fi
