#!/usr/bin/env bash
# Local Redis (Debian's redis-server) with AOF persistence, without Docker.
#
#   deploy/local/redis.sh {start|stop|status}
#
# Environment (all optional):
#   REDIS_PORT=6379              listens on 127.0.0.1 only
#   LOKET_STATE_DIR=<repo>/var   state root (git-ignored)
#   REDIS_DIR=$LOKET_STATE_DIR/redis-$REDIS_PORT   data (AOF), log and pid
#   REDIS_START_TIMEOUT=20
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
REDIS_PORT="${REDIS_PORT:-6379}"
LOKET_STATE_DIR="${LOKET_STATE_DIR:-$REPO_ROOT/var}"
REDIS_DIR="${REDIS_DIR:-$LOKET_STATE_DIR/redis-$REDIS_PORT}"
REDIS_START_TIMEOUT="${REDIS_START_TIMEOUT:-20}"
PID_FILE="$REDIS_DIR/redis.pid"

log() { echo "[redis:$REDIS_PORT] $*" >&2; }

ping() {
  if command -v redis-cli >/dev/null; then
    [[ "$(redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping 2>/dev/null)" == "PONG" ]]
  else
    # Plain RESP PING over bash's /dev/tcp.
    local reply
    exec 3<>"/dev/tcp/127.0.0.1/$REDIS_PORT" 2>/dev/null || return 1
    printf 'PING\r\n' >&3
    read -r -t 2 reply <&3 || true
    exec 3>&-
    [[ "$reply" == "+PONG"* ]]
  fi
}

running_pid() {
  if [[ -f "$PID_FILE" ]]; then
    local pid
    pid="$(cat "$PID_FILE")"
    if [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null; then echo "$pid"; return 0; fi
  fi
  return 1
}

ensure_installed() {
  command -v redis-server >/dev/null && return 0
  if [[ "$(id -u)" == "0" ]] && command -v apt-get >/dev/null; then
    log "redis-server missing; installing it with apt-get"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >&2
  else
    log "redis-server not found. Install it (Debian/Ubuntu: sudo apt-get install -y redis-server;"
    log "macOS: brew install redis) or point LOKET_REDIS_URL at a running Redis."
    exit 1
  fi
}

start() {
  if running_pid >/dev/null && ping; then
    log "already running (pid $(running_pid))"
    return 0
  fi
  if ping; then
    log "a Redis already answers on port $REDIS_PORT; using it"
    return 0
  fi
  ensure_installed
  mkdir -p "$REDIS_DIR"
  log "starting (dir $REDIS_DIR)"
  redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --daemonize yes \
    --dir "$REDIS_DIR" --pidfile "$PID_FILE" --logfile "$REDIS_DIR/redis.log" \
    --appendonly yes --appendfsync everysec --save "" --protected-mode yes
  local deadline=$((SECONDS + REDIS_START_TIMEOUT))
  until ping; do
    if ((SECONDS >= deadline)); then
      log "ERROR: Redis did not answer PING within ${REDIS_START_TIMEOUT}s; tail of $REDIS_DIR/redis.log:"
      tail -n 30 "$REDIS_DIR/redis.log" >&2 || true
      exit 1
    fi
    sleep 0.1
  done
  log "ready on 127.0.0.1:$REDIS_PORT (pid $(cat "$PID_FILE" 2>/dev/null || echo '?'))"
}

stop() {
  local pid
  if ! pid="$(running_pid)"; then log "not running"; rm -f "$PID_FILE"; return 0; fi
  log "stopping (pid $pid)"
  kill -TERM "$pid" 2>/dev/null || true
  local deadline=$((SECONDS + 15))
  while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.1; done
  if kill -0 "$pid" 2>/dev/null; then kill -KILL "$pid" 2>/dev/null || true; fi
  rm -f "$PID_FILE"
  log "stopped"
}

status() {
  local pid
  if pid="$(running_pid)"; then
    echo "redis running on 127.0.0.1:$REDIS_PORT (pid $pid, dir $REDIS_DIR)"
  elif ping; then
    echo "redis answers on port $REDIS_PORT (not started by this script)"
  else
    echo "redis not running (port $REDIS_PORT)"
    return 3
  fi
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  *) echo "usage: $0 {start|stop|status}" >&2; exit 2 ;;
esac
