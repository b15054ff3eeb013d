#!/usr/bin/env bash
# Start the whole Loket stack locally without Docker and stay in the foreground.
#   Kafka (KRaft) + Redis (AOF) via kafka.sh/redis.sh, all topics, then intake (8000),
#   router (8001) and handoff (8002) as `uv run python -m loket_<svc>`.
# Ctrl-C (or deploy/local/down.sh from another shell) stops everything.
# Environment: the LOKET_* settings (see README), KAFKA_PORT, REDIS_PORT, LOKET_STATE_DIR,
#   UP_READY_TIMEOUT=60, UP_DETACH=1 (start everything and return instead of waiting).
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$REPO_ROOT"
export LOKET_STATE_DIR="${LOKET_STATE_DIR:-$REPO_ROOT/var}"
KAFKA_PORT="${KAFKA_PORT:-9092}"
REDIS_PORT="${REDIS_PORT:-6379}"
export LOKET_KAFKA_BOOTSTRAP="${LOKET_KAFKA_BOOTSTRAP:-127.0.0.1:$KAFKA_PORT}"
export LOKET_REDIS_URL="${LOKET_REDIS_URL:-redis://127.0.0.1:$REDIS_PORT/0}"
LOG_DIR="$LOKET_STATE_DIR/logs"
PID_DIR="$LOKET_STATE_DIR/run"
READY_TIMEOUT="${UP_READY_TIMEOUT:-60}"
mkdir -p "$LOG_DIR" "$PID_DIR"

SERVICES=(intake:8000 router:8001 handoff:8002)
T0=$SECONDS

KAFKA_PORT="$KAFKA_PORT" "$REPO_ROOT/deploy/local/kafka.sh" start
REDIS_PORT="$REDIS_PORT" "$REPO_ROOT/deploy/local/redis.sh" start
uv run --frozen python -m loket_runtime.admin ensure-topics --bootstrap "$LOKET_KAFKA_BOOTSTRAP"

stop_services() {
  "$REPO_ROOT/deploy/local/down.sh" --services-only || true
}

for entry in "${SERVICES[@]}"; do
  svc="${entry%%:*}"; port="${entry##*:}"
  pid_file="$PID_DIR/$svc.pid"
  if [[ -f "$pid_file" ]] && kill -0 "$(cat "$pid_file")" 2>/dev/null; then
    echo "[up] $svc already running (pid $(cat "$pid_file"))" >&2
    continue
  fi
  LOKET_PORT="$port" setsid nohup uv run --frozen python -m "loket_$svc" \
    >"$LOG_DIR/$svc.log" 2>&1 </dev/null &
  echo $! >"$pid_file"
  echo "[up] started $svc on :$port (pid $!, log $LOG_DIR/$svc.log)" >&2
done

for entry in "${SERVICES[@]}"; do
  svc="${entry%%:*}"; port="${entry##*:}"
  deadline=$((SECONDS + READY_TIMEOUT))
  until [[ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/readyz")" == "200" ]]; do
    if ! kill -0 "$(cat "$PID_DIR/$svc.pid")" 2>/dev/null || ((SECONDS >= deadline)); then
      echo "[up] ERROR: $svc not ready on :$port; tail of $LOG_DIR/$svc.log:" >&2
      tail -n 30 "$LOG_DIR/$svc.log" >&2 || true
      stop_services
      exit 1
    fi
    sleep 0.3
  done
done

cat <<MSG

Loket is up (ready in $((SECONDS - T0)) s):
  intake   http://127.0.0.1:8000/   (API + desk page)
  router   http://127.0.0.1:8001/metrics
  handoff  http://127.0.0.1:8002/   (API + operator page)
  health   /healthz  /readyz  /metrics on each
  kafka    $LOKET_KAFKA_BOOTSTRAP    redis $LOKET_REDIS_URL
  logs     $LOG_DIR
MSG

if [[ -n "${UP_DETACH:-}" ]]; then
  echo "Detached; stop with: make down" >&2
  exit 0
fi
echo "Press Ctrl-C to stop everything." >&2
trap '"$REPO_ROOT/deploy/local/down.sh"; exit 0' INT TERM
# Wait until a service dies or we get a signal.
while true; do
  for entry in "${SERVICES[@]}"; do
    svc="${entry%%:*}"
    if [[ ! -f "$PID_DIR/$svc.pid" ]]; then
      echo "[up] $svc was stopped (make down); exiting." >&2
      exit 0
    fi
    if ! kill -0 "$(cat "$PID_DIR/$svc.pid")" 2>/dev/null; then
      echo "[up] $svc exited; see $LOG_DIR/$svc.log. Stopping." >&2
      "$REPO_ROOT/deploy/local/down.sh"
      exit 1
    fi
  done
  sleep 1 &
  wait $! || true
done
