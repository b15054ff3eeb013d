#!/usr/bin/env bash
# Local single-node Apache Kafka (KRaft, broker+controller) without Docker.
#
#   deploy/local/kafka.sh {start|stop|status|kill}
#
# Environment (all optional):
#   KAFKA_PORT=9092              PLAINTEXT listener on 127.0.0.1
#   KAFKA_CONTROLLER_PORT=9093   CONTROLLER listener on 127.0.0.1
#   LOKET_STATE_DIR=<repo>/var   state root (git-ignored)
#   KAFKA_DIR=$LOKET_STATE_DIR/kafka-$KAFKA_PORT   data, config, logs and pid of this broker
#   KAFKA_JAR_CACHE=<repo>/.cache/kafka-$KAFKA_VERSION   broker jars from Maven Central
#   KAFKA_HEAP_OPTS="-Xms512m -Xmx512m"        JVM heap
#   KAFKA_JVM_PERFORMANCE_OPTS="-XX:+UseSerialGC"  GC/JIT flags (replaces this default)
#   KAFKA_EXTRA_CONFIG=""        extra server.properties lines (newline-separated), e.g.
#                                "num.network.threads=2" (benchmarks); later lines win
#
# The broker is sized for a small single node (2 cores, a few hundred requests/s): few
# threads, Serial GC, small compacted internal-topic segments. Measured reasons in
# docs/architecture.md ("Broker configuration") and docs/benchmarks.md (2026-12-03).
#   KAFKA_START_TIMEOUT=60       seconds to wait until the broker is ready
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
KAFKA_VERSION="${KAFKA_VERSION:-4.1.1}"
KAFKA_PORT="${KAFKA_PORT:-9092}"
KAFKA_CONTROLLER_PORT="${KAFKA_CONTROLLER_PORT:-9093}"
LOKET_STATE_DIR="${LOKET_STATE_DIR:-$REPO_ROOT/var}"
KAFKA_DIR="${KAFKA_DIR:-$LOKET_STATE_DIR/kafka-$KAFKA_PORT}"
KAFKA_JAR_CACHE="${KAFKA_JAR_CACHE:-$REPO_ROOT/.cache/kafka-$KAFKA_VERSION}"
KAFKA_HEAP_OPTS="${KAFKA_HEAP_OPTS:--Xms512m -Xmx512m}"
# Serial GC: one core's worth of GC work with no concurrent/refinement threads and the
# cheapest write barrier; pauses stay a few ms with a 512 MB heap.
KAFKA_JVM_PERFORMANCE_OPTS="${KAFKA_JVM_PERFORMANCE_OPTS:--XX:+UseSerialGC}"
KAFKA_START_TIMEOUT="${KAFKA_START_TIMEOUT:-60}"

PID_FILE="$KAFKA_DIR/kafka.pid"
LOG_DIR="$KAFKA_DIR/logs"
DATA_DIR="$KAFKA_DIR/data"
CONF="$KAFKA_DIR/server.properties"

log() { echo "[kafka:$KAFKA_PORT] $*" >&2; }

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

running_pid() {
  if [[ -f "$PID_FILE" ]]; then
    local pid
    pid="$(cat "$PID_FILE")"
    if [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null; then
      echo "$pid"
      return 0
    fi
  fi
  return 1
}

fetch_jars() {
  if [[ -f "$KAFKA_JAR_CACHE/.complete" ]]; then return 0; fi
  command -v java >/dev/null || { log "java not found: install a JDK 17+"; exit 1; }
  command -v mvn >/dev/null || { log "mvn not found: install Maven (apt-get install -y maven)"; exit 1; }
  log "fetching Kafka $KAFKA_VERSION jars from Maven Central into $KAFKA_JAR_CACHE"
  mkdir -p "$KAFKA_JAR_CACHE"
  mvn -q -B -f "$REPO_ROOT/deploy/local/kafka/pom.xml" \
    -Dkafka.version="$KAFKA_VERSION" \
    -Dstyle.color=never dependency:copy-dependencies -DoutputDirectory="$KAFKA_JAR_CACHE" -DincludeScope=runtime >&2
  touch "$KAFKA_JAR_CACHE/.complete"
}

write_config() {
  mkdir -p "$LOG_DIR" "$DATA_DIR"
  cat >"$CONF" <<CONF
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$KAFKA_CONTROLLER_PORT
listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT,CONTROLLER://127.0.0.1:$KAFKA_CONTROLLER_PORT
advertised.listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
log.dirs=$DATA_DIR
num.partitions=3
auto.create.topics.enable=true
offsets.topic.replication.factor=1
offsets.topic.num.partitions=10
offsets.topic.segment.bytes=16777216
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=10
transaction.state.log.segment.bytes=16777216
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
share.coordinator.state.topic.num.partitions=1
group.initial.rebalance.delay.ms=0
min.insync.replicas=1
default.replication.factor=1
# small single node (2 cores): threads for a few hundred requests/s, not for 8+ cores
num.network.threads=1
num.io.threads=2
background.threads=2
num.recovery.threads.per.data.dir=1
group.coordinator.threads=1
log.cleaner.dedupe.buffer.size=16777216
CONF
  if [[ -n "${KAFKA_EXTRA_CONFIG:-}" ]]; then
    printf '%s\n' "$KAFKA_EXTRA_CONFIG" >>"$CONF"
  fi
  cat >"$KAFKA_DIR/log4j2.properties" <<'L4J'
status = warn
appender.file.type = RollingFile
appender.file.name = FILE
appender.file.fileName = ${sys:kafka.logs.dir}/server.log
appender.file.filePattern = ${sys:kafka.logs.dir}/server.log.%i
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
appender.file.policies.type = Policies
appender.file.policies.size.type = SizeBasedTriggeringPolicy
appender.file.policies.size.size = 50MB
appender.file.strategy.type = DefaultRolloverStrategy
appender.file.strategy.max = 3
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = FILE
logger.statechange.name = state.change.logger
logger.statechange.level = WARN
logger.request.name = kafka.request.logger
logger.request.level = WARN
L4J
}

format_storage() {
  if [[ -f "$DATA_DIR/meta.properties" ]]; then return 0; fi
  local cid
  if [[ -f "$KAFKA_DIR/cluster.id" ]]; then
    cid="$(cat "$KAFKA_DIR/cluster.id")"
  else
    # Kafka's own Uuid.randomUuid() never starts with "-" (the CLI would read it as an option)
    cid="$(python3 -c 'import base64,uuid
while True:
    c = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
    if not c.startswith("-"):
        print(c)
        break')"
    echo "$cid" >"$KAFKA_DIR/cluster.id"
  fi
  log "formatting storage (cluster id $cid)"
  java -cp "$KAFKA_JAR_CACHE/*" \
    -Dlog4j2.configurationFile="$KAFKA_DIR/log4j2.properties" -Dkafka.logs.dir="$LOG_DIR" \
    kafka.tools.StorageTool format -t "$cid" -c "$CONF" >"$LOG_DIR/format.log" 2>&1 || {
    log "storage format failed:"; tail -n 20 "$LOG_DIR/format.log" >&2; exit 1; }
}

fail_start() {
  log "ERROR: $1"
  log "--- tail of $LOG_DIR/server.log ---"
  tail -n 30 "$LOG_DIR/server.log" 2>/dev/null >&2 || true
  log "--- tail of $LOG_DIR/stdout.log ---"
  tail -n 30 "$LOG_DIR/stdout.log" 2>/dev/null >&2 || true
  exit 1
}

wait_ready() {
  local pid="$1" deadline=$((SECONDS + KAFKA_START_TIMEOUT))
  while ((SECONDS < deadline)); do
    kill -0 "$pid" 2>/dev/null || fail_start "broker process $pid exited during start"
    if port_open "$KAFKA_PORT" && grep -q "Kafka Server started" "$LOG_DIR/server.log" 2>/dev/null; then
      return 0
    fi
    sleep 0.2
  done
  fail_start "broker not ready within ${KAFKA_START_TIMEOUT}s"
}

start() {
  local pid
  if pid="$(running_pid)"; then
    wait_ready "$pid"
    log "already running (pid $pid) on 127.0.0.1:$KAFKA_PORT"
    return 0
  fi
  if port_open "$KAFKA_PORT"; then
    log "port $KAFKA_PORT already in use by another process; assuming a Kafka broker is there"
    return 0
  fi
  command -v java >/dev/null || { log "java not found: install a JDK 17+"; exit 1; }
  fetch_jars
  write_config
  format_storage
  # Mark the start so the readiness check only trusts log lines of this run.
  [[ -f "$LOG_DIR/server.log" ]] && mv -f "$LOG_DIR/server.log" "$LOG_DIR/server.log.prev"
  log "starting (logs in $LOG_DIR)"
  # shellcheck disable=SC2086
  setsid nohup java $KAFKA_HEAP_OPTS $KAFKA_JVM_PERFORMANCE_OPTS -Djava.awt.headless=true \
    -Dlog4j2.configurationFile="$KAFKA_DIR/log4j2.properties" -Dkafka.logs.dir="$LOG_DIR" \
    -cp "$KAFKA_JAR_CACHE/*" kafka.Kafka "$CONF" >"$LOG_DIR/stdout.log" 2>&1 </dev/null &
  pid=$!
  echo "$pid" >"$PID_FILE"
  wait_ready "$pid"
  log "ready on 127.0.0.1:$KAFKA_PORT (pid $pid)"
}

stop() {
  local pid
  if ! pid="$(running_pid)"; then
    log "not running"
    rm -f "$PID_FILE"
    return 0
  fi
  log "stopping (pid $pid)"
  kill -TERM "$pid" 2>/dev/null || true
  local deadline=$((SECONDS + ${KAFKA_STOP_TIMEOUT:-30}))
  while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.2; done
  if kill -0 "$pid" 2>/dev/null; then
    log "did not stop in time; SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
    while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
  fi
  rm -f "$PID_FILE"
  log "stopped"
}

kill9() {
  local pid
  if pid="$(running_pid)"; then
    kill -KILL "$pid" 2>/dev/null || true
    while kill -0 "$pid" 2>/dev/null; do sleep 0.05; done
    log "killed (pid $pid)"
  else
    log "not running"
  fi
  rm -f "$PID_FILE"
}

status() {
  local pid
  if pid="$(running_pid)"; then
    echo "kafka running on 127.0.0.1:$KAFKA_PORT (pid $pid, dir $KAFKA_DIR)"
  elif port_open "$KAFKA_PORT"; then
    echo "port $KAFKA_PORT in use by a process not started by this script"
  else
    echo "kafka not running (port $KAFKA_PORT)"
    return 3
  fi
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  kill) kill9 ;;
  status) status ;;
  fetch) fetch_jars ;;
  *) echo "usage: $0 {start|stop|status|kill|fetch}" >&2; exit 2 ;;
esac
