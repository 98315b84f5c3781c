#!/usr/bin/env bash
# The room fan-out scenario (benches/run.sh's, ours only) three ways on
# PostgreSQL: one chat-server process without a broker, two processes that
# are one server through NATS, and two through Redis (issue #22). The load
# generator (chat-load) starts the processes itself and connects client i to
# process i mod n, so that every room has members on both processes and each
# message crosses the broker; it sums CPU time and RSS over the processes and
# reads each one's /metrics before and after the steps (publications sent and
# received per message, gap fills). Results go to
# benches/results/<date>-cluster.json, and the tables for docs/BENCHMARKS.md
# ("Many processes") are printed.
#
#   benches/cluster.sh                 the three runs (about six minutes)
#   benches/cluster.sh --quick         small counts, a few seconds each (CI,
#                                      through benches/run.sh --quick)
#   benches/cluster.sh --only nats,redis    some of single, nats, redis
#
# Every run is strict: a lost, duplicated or out-of-order message, a refused
# send or a failed connection makes the script fail.
#
# PostgreSQL is CHAT_BENCH_POSTGRES_URL (default
# postgres://postgres@127.0.0.1:5432/postgres; the role must be allowed to
# create databases); each run gets a fresh database chat_bench_cluster_<run>,
# dropped afterwards. The brokers are CHAT_BENCH_NATS_URL (default
# nats://127.0.0.1:4222) and CHAT_BENCH_REDIS_URL (default
# redis://127.0.0.1:6379); each run uses a subject/channel prefix of its own,
# so that other users of the same broker do not cross it. A service that does
# not answer skips the runs that need it with a warning, unless CI=true, where
# that is an error.
#
# Pinning, on two or more cores: every chat-server process on core 0 (the
# same one core as the single process gets), the load on core 1; PostgreSQL
# and the broker are not pinned and take from both. When the broker's
# listening process can be found (ss), its CPU time is reported per step.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

MODE=full
ALL_RUNS="single nats redis"
RUNS=$ALL_RUNS
while [ $# -gt 0 ]; do
    case "$1" in
        --quick) MODE=quick ;;
        --only) RUNS=$(echo "$2" | tr ',' ' '); shift ;;
        *) echo "usage: $0 [--quick] [--only single,nats,redis]" >&2; exit 2 ;;
    esac
    shift
done
for r in $RUNS; do
    case "$r" in single|nats|redis) ;; *) echo "unknown run $r (single, nats, redis)" >&2; exit 2 ;; esac
done

TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
LOAD="$TARGET/release/chat-load"
SERVER="$TARGET/release/chat-server"
echo "== build"
cargo build --release -q -p chat-server -p chat-benches --bin chat-server --bin chat-load

# PG_URL, pg_db_url, pg_drop_db, pg_fresh_db
source "$ROOT/benches/pg.sh"
NATS_URL=${CHAT_BENCH_NATS_URL:-nats://127.0.0.1:4222}
REDIS_URL=${CHAT_BENCH_REDIS_URL:-redis://127.0.0.1:6379}
# host and port of a nats:// or redis:// URL (no credentials expected here).
host_port() { # url
    local hp=${1#*://}
    hp=${hp##*@}
    hp=${hp%%/*}
    echo "$hp"
}
answers() { # run
    local hp
    case "$1" in
        single) psql "$PG_URL" -qAtX -c "SELECT 1" >/dev/null 2>&1 ;;
        nats) hp=$(host_port "$NATS_URL")
            timeout 2 bash -c "exec 3<>/dev/tcp/${hp%:*}/${hp##*:} && head -c 4 <&3" 2>/dev/null | grep -q INFO ;;
        redis) hp=$(host_port "$REDIS_URL")
            timeout 2 bash -c "exec 3<>/dev/tcp/${hp%:*}/${hp##*:} && printf 'PING\r\n' >&3 && head -c 5 <&3" 2>/dev/null | grep -q PONG ;;
    esac
}
# The pid of the process listening on a broker URL's port, if ss can tell.
broker_pid() { # url
    local port
    port=$(host_port "$1")
    port=${port##*:}
    ss -Hltnp "sport = :$port" 2>/dev/null | sed -n 's/.*pid=\([0-9]*\).*/\1/p' | head -1
}

WANTED=""
for r in $RUNS; do
    if ! answers single || { [ "$r" != single ] && ! answers "$r"; }; then
        what="PostgreSQL at $PG_URL"
        [ "$r" = nats ] && what="$what or NATS at $NATS_URL"
        [ "$r" = redis ] && what="$what or Redis at $REDIS_URL"
        if [ "${CI:-}" = true ]; then
            echo "error: $what does not answer, and the cluster run $r needs it" >&2
            exit 1
        fi
        echo "warning: $what does not answer; skipping the cluster run $r" >&2
        continue
    fi
    WANTED="$WANTED $r"
done
if [ -z "$WANTED" ]; then
    echo "nothing to run" >&2
    exit 0
fi

# SERVER_CORE, LOAD_CORE, PIN_SERVER, PIN_LOAD
source "$ROOT/benches/pin.sh"

WORK=$(mktemp -d /tmp/chat-cluster.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
SECRET=$(od -An -N24 -tx1 /dev/urandom | tr -d ' \n')
export CHAT_JWT_SECRET="$SECRET"
API_KEY=$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')
export CHAT_API_KEY="$API_KEY"
QUICK_FLAGS=()
[ "$MODE" = quick ] && QUICK_FLAGS=(--quick)
PREFIX="bench$$-$(date +%s)"

FILES=()
for r in $WANTED; do
    db=chat_bench_cluster_$r
    pg_fresh_db "$db"
    procs=2 broker="" watch=()
    case "$r" in
        single) procs=1 ;;
        nats) broker="CHAT_BROKER_URL=$NATS_URL CHAT_BROKER_PREFIX=$PREFIX.$r" ;;
        redis) broker="CHAT_BROKER_URL=$REDIS_URL CHAT_BROKER_PREFIX=$PREFIX.$r" ;;
    esac
    if [ "$r" != single ]; then
        url=$NATS_URL
        [ "$r" = redis ] && url=$REDIS_URL
        pid=$(broker_pid "$url")
        [ -n "$pid" ] && watch=(--watch-pid "$r=$pid")
    fi
    args=()
    for i in $(seq 0 $((procs - 1))); do
        addr=127.0.0.1:$((18180 + i))
        args+=(--addr "$addr" --server-cmd "env CHAT_LISTEN=$addr CHAT_DATABASE_URL=$(pg_db_url "$db") $broker \
CHAT_JWT_SECRET=$SECRET CHAT_API_KEY=$API_KEY CHAT_COMMANDS_PER_SECOND=1000000 CHAT_COMMAND_BURST=1000000 \
CHAT_MAX_CONNECTIONS_PER_USER=16 CHAT_MAX_ROOMS_PER_USER=100000 CHAT_ROOM_ACTIONS_PER_MINUTE=0 \
CHAT_MAX_CONNECTIONS_PER_IP=100000 RUST_LOG=warn $PIN_SERVER $SERVER")
    done
    out="$WORK/cluster-$r.json"
    echo "== fanout on $r ($procs process(es))"
    $PIN_LOAD "$LOAD" run --proto native --scenario fanout --label "$r" "${args[@]}" "${watch[@]}" \
        --server-log "$WORK/cluster-$r.log" --out "$out" --strict "${QUICK_FLAGS[@]}" > /dev/null \
        || { echo "chat-load failed on $r; server logs:" >&2; tail -n 20 "$WORK"/cluster-"$r".log* >&2; exit 1; }
    FILES+=("$out")
    pg_drop_db "$db"
done

DATE=$(date -u +%Y-%m-%dT%H-%M-%SZ)
RESULTS="$WORK/cluster-quick.json"
if [ "$MODE" = full ]; then
    mkdir -p benches/results
    RESULTS="benches/results/$DATE-cluster.json"
fi
MACHINE=$(printf '{"nproc":%s,"cpu":"%s","mem_mib":%s,"kernel":"%s","server_core":%s,"load_core":%s,"postgres":"%s","nats":"%s","redis":"%s"}' \
    "$(nproc)" \
    "$(lscpu | sed -n 's/^Model name: *//p' | head -1)" \
    "$(free -m | awk '/^Mem:/ {print $2}')" \
    "$(uname -sr)" \
    "$SERVER_CORE" "$LOAD_CORE" \
    "$(psql "$PG_URL" -qAtX -c 'SHOW server_version' 2>/dev/null || echo '?')" \
    "$( (nats-server --version || /usr/sbin/nats-server --version) 2>/dev/null | head -1)" \
    "$( (redis-server --version || /usr/bin/redis-server --version) 2>/dev/null | head -1 | cut -d' ' -f1-3)")
COMMAND="benches/cluster.sh"
[ "$MODE" = quick ] && COMMAND="$COMMAND --quick"
[ "$(echo $WANTED)" != "$ALL_RUNS" ] && COMMAND="$COMMAND --only $(echo $WANTED | tr ' ' ',')"
"$LOAD" combine --out "$RESULTS" --machine "$MACHINE" --mode "$MODE" --command "$COMMAND" --date "$DATE" "${FILES[@]}"
echo "== results in $RESULTS"
"$LOAD" cluster-table "${FILES[@]}"
echo "== checks"
"$LOAD" check "$RESULTS"
