#!/usr/bin/env bash
# Runs every scenario of the Socket.IO comparison against three servers in one
# run, each pinned to one core with the load generator (chat-load) on the
# other:
#   native         chat-server over its native WebSocket protocol (/v1/ws);
#   ours-socketio  the same chat-server, started the same way, over its
#                  Socket.IO transport (/socket.io/), driven with
#                  chat-load --proto socketio;
#   socketio       the reference Socket.IO server on Node in
#                  benches/socketio-ref, driven with the same Socket.IO
#                  client code (chat-load --proto socketio).
# Results go to benches/results/<date>.json; a full run also renders the
# comparison part of docs/BENCHMARKS.md and docs/benchmarks-socketio.svg from
# that file.
#
#   benches/run.sh                 the full comparison (about half an hour)
#   benches/run.sh --quick         small counts, a few seconds per scenario;
#                                  exits non-zero on any lost, duplicated or
#                                  out-of-order message (CI runs this)
#   benches/run.sh --only fanout,mix     some scenarios only
#   benches/run.sh --render FILE   re-render the docs from a results file
#   benches/run.sh --only cluster  the many-processes runs alone
#
#   NATIVE_ENV="CHAT_COMMIT_WINDOW_US=2000" benches/run.sh --only mix
#                                  adds settings to our server's environment
#                                  (native and ours-socketio)
#   SERVERS="ours-socketio socketio" benches/run.sh --only idle
#                                  some servers only (default all three)
#
# The durable-pg scenario runs both servers on PostgreSQL, at
# CHAT_BENCH_POSTGRES_URL (default postgres://postgres@127.0.0.1:5432/postgres;
# the role must be allowed to create databases). Each server gets a fresh
# database, chat_bench_native, chat_bench_ours_socketio or chat_bench_socketio,
# dropped afterwards. When
# PostgreSQL cannot be reached the scenario is skipped with a warning, unless
# CI=true, where that is an error.
#
# The cluster scenario is ours alone and is not part of the comparison: it
# runs benches/cluster.sh (fan-out on one process, on two through NATS and on
# two through Redis, all on PostgreSQL; strict on loss; --quick passed on),
# after the comparison's scenarios, with its own results file and tables.
#
# Every server listens on 127.0.0.1; clients connect from 127.0.0.1-4.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

MODE=full
ALL_SCENARIOS="fanout mix durable durable-pg idle reconnect cluster"
SCENARIOS=$ALL_SCENARIOS
RENDER_ONLY=""
while [ $# -gt 0 ]; do
    case "$1" in
        --quick) MODE=quick ;;
        --only) SCENARIOS=$(echo "$2" | tr ',' ' '); shift ;;
        --render) RENDER_ONLY="$2"; shift ;;
        *) echo "usage: $0 [--quick] [--only idle,fanout,mix,durable,durable-pg,reconnect,cluster] [--render results.json]" >&2; exit 2 ;;
    esac
    shift
done
ALL_SERVERS="native ours-socketio socketio"
SERVERS=${SERVERS:-$ALL_SERVERS}
for server in $SERVERS; do
    [[ " $ALL_SERVERS " == *" $server "* ]] || { echo "unknown server $server in SERVERS (known: $ALL_SERVERS)" >&2; exit 2; }
done

LOAD="$ROOT/target/release/chat-load"
DOC="$ROOT/docs/BENCHMARKS.md"
SVG="$ROOT/docs/benchmarks-socketio.svg"

echo "== build"
cargo build --release -q -p chat-server -p chat-benches --bin chat-server --bin chat-load
if [ -n "$RENDER_ONLY" ]; then
    "$LOAD" report "$RENDER_ONLY" --doc "$DOC" --svg "$SVG"
    echo "rendered $DOC and $SVG from $RENDER_ONLY"
    exit 0
fi
# The cluster runs are benches/cluster.sh's; the rest is the comparison.
CLUSTER=no
[[ " $SCENARIOS " == *" cluster "* ]] && CLUSTER=yes
SCENARIOS=$(echo " $SCENARIOS " | sed 's/ cluster / /; s/^ *//; s/ *$//')
QUICK_FLAGS=()
[ "$MODE" = quick ] && QUICK_FLAGS=(--quick)
run_cluster() {
    if [ "$CLUSTER" = yes ]; then
        echo "== cluster (benches/cluster.sh ${QUICK_FLAGS[*]})"
        benches/cluster.sh "${QUICK_FLAGS[@]}"
    fi
}
if [ -z "$SCENARIOS" ]; then
    run_cluster
    exit 0
fi
(
    cd benches/socketio-ref
    [ -d node_modules ] || npm ci --no-audit --no-fund
    # npm may skip install scripts; better-sqlite3 then lacks its native module.
    node -e 'require("better-sqlite3")' 2>/dev/null || npm rebuild better-sqlite3 bufferutil
    node -e 'require("better-sqlite3"); require("bufferutil")'
)

# SERVER_CORE, LOAD_CORE, PIN_SERVER, PIN_LOAD
source "$ROOT/benches/pin.sh"

WORK=$(mktemp -d /tmp/chat-bench.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
SECRET=$(od -An -N24 -tx1 /dev/urandom | tr -d ' \n')
export CHAT_JWT_SECRET="$SECRET"
NATIVE_ADDR=127.0.0.1:18080
SIO_PORT=19090

# PG_URL, pg_db_url, pg_drop_db, pg_fresh_db
source "$ROOT/benches/pg.sh"
if [[ " $SCENARIOS " == *" durable-pg "* ]] && ! psql "$PG_URL" -qAtX -c "SELECT 1" >/dev/null 2>&1; then
    if [ "${CI:-}" = true ]; then
        echo "error: PostgreSQL is not reachable at $PG_URL, and the durable-pg scenario needs it" >&2
        exit 1
    fi
    echo "warning: PostgreSQL is not reachable at $PG_URL (set CHAT_BENCH_POSTGRES_URL); skipping durable-pg" >&2
    SCENARIOS=$(echo " $SCENARIOS " | sed 's/ durable-pg / /; s/^ *//; s/ *$//')
fi

# The PostgreSQL database of a server's durable-pg run.
pg_name() { echo "chat_bench_${1//-/_}"; }

server_cmd() { # server scenario db
    local db="sqlite://$3"
    if [ "$2" = durable-pg ]; then db=$(pg_db_url "$(pg_name "$1")"); fi
    case "$1" in
        native|ours-socketio)
            # One chat-server, whichever protocol the load speaks to it.
            echo "env CHAT_LISTEN=$NATIVE_ADDR CHAT_DATABASE_URL=$db CHAT_JWT_SECRET=$SECRET" \
                "CHAT_COMMANDS_PER_SECOND=1000000 CHAT_COMMAND_BURST=1000000 CHAT_MAX_CONNECTIONS_PER_USER=16" \
                "CHAT_MAX_ROOMS_PER_USER=100000 CHAT_ROOM_ACTIONS_PER_MINUTE=0 CHAT_MAX_CONNECTIONS_PER_IP=100000 RUST_LOG=warn ${NATIVE_ENV:-} $PIN_SERVER $ROOT/target/release/chat-server" ;;
        socketio)
            # The durable and reconnect scenarios need messages to outlive
            # the process: one better-sqlite3 (or PostgreSQL) commit per message.
            local durable=""
            case "$2" in
                durable|reconnect) durable="--durable $3" ;;
                durable-pg) durable="--durable-pg $db" ;;
            esac
            echo "env CHAT_JWT_SECRET=$SECRET $PIN_SERVER node $ROOT/benches/socketio-ref/server.js" \
                "--port $SIO_PORT $durable" ;;
    esac
}

FILES=()
for scenario in $SCENARIOS; do
    for server in $SERVERS; do
        case "$server" in
            native) addr=$NATIVE_ADDR proto=native ;;
            ours-socketio) addr=$NATIVE_ADDR proto=socketio ;;
            socketio) addr=127.0.0.1:$SIO_PORT proto=socketio ;;
        esac
        out="$WORK/$scenario-$server.json"
        echo "== $scenario on $server"
        [ "$scenario" = durable-pg ] && pg_fresh_db "$(pg_name "$server")"
        $PIN_LOAD "$LOAD" run --proto "$proto" --server-name "$server" --scenario "$scenario" --addr "$addr" \
            --server-cmd "$(server_cmd "$server" "$scenario" "$WORK/$scenario-$server.db")" \
            --server-log "$WORK/$scenario-$server.log" --fsync-dir "$WORK" \
            --out "$out" "${QUICK_FLAGS[@]}" > /dev/null \
            || { echo "chat-load failed; server log:" >&2; tail -20 "$WORK/$scenario-$server.log" >&2
                 trap - EXIT; echo "the runs so far are kept in $WORK" >&2; exit 1; }
        FILES+=("$out")
        [ "$scenario" = durable-pg ] && pg_drop_db "$(pg_name "$server")"
    done
done

DATE=$(date -u +%Y-%m-%dT%H-%M-%SZ)
mkdir -p benches/results
RESULTS="benches/results/$DATE${MODE/full/}.json"
[ "$MODE" = quick ] && RESULTS="$WORK/quick.json"
MACHINE=$(printf '{"nproc":%s,"cpu":"%s","mem_mib":%s,"kernel":"%s","node":"%s","socketio":"%s","server_core":%s,"load_core":%s}' \
    "$(nproc)" \
    "$(lscpu | sed -n 's/^Model name: *//p' | head -1)" \
    "$(free -m | awk '/^Mem:/ {print $2}')" \
    "$(uname -sr)" \
    "$(node -v)" \
    "$(node -p 'require("./benches/socketio-ref/node_modules/socket.io/package.json").version')" \
    "$SERVER_CORE" "$LOAD_CORE")
COMMAND="benches/run.sh"
[ "$MODE" = quick ] && COMMAND="benches/run.sh --quick"
[ "$SCENARIOS" != "${ALL_SCENARIOS% cluster}" ] && COMMAND="$COMMAND --only $(echo $SCENARIOS | tr ' ' ',')"
[ "$SERVERS" != "$ALL_SERVERS" ] && COMMAND="SERVERS=\"$SERVERS\" $COMMAND"
"$LOAD" combine --out "$RESULTS" --machine "$MACHINE" --mode "$MODE" --command "$COMMAND" --date "$DATE" "${FILES[@]}"

if [ "$MODE" = full ]; then
    "$LOAD" report "$RESULTS" --doc "$DOC" --svg "$SVG"
    echo "results in $RESULTS; rendered $DOC and $SVG"
fi
echo "== checks"
"$LOAD" check "$RESULTS"
run_cluster
