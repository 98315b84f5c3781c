#!/usr/bin/env bash
# What push costs durable sends once someone has subscribed: the durable
# scenario on one chat-server binary, interleaved, on a fresh database with
# one push subscription in it (so that every batch of committed messages
# asks the store whom to push) and on one without (so that push queues
# nothing). The load's users are all connected: nobody is pushed; this is
# the cost of looking.
#
#   benches/push-in-use.sh [chat-server binary] [rounds]
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
BIN=${1:-$TARGET/release/chat-server}
ROUNDS=${2:-2}
LOAD=$TARGET/release/chat-load
(cd "$ROOT" && cargo build --release -q -p chat-benches --bin chat-load)
[ -x "$BIN" ] || (cd "$ROOT" && cargo build --release -q -p chat-server --bin chat-server)
W=$(mktemp -d /tmp/chat-push-in-use.XXXXXX)
trap 'rm -rf "$W"' EXIT
CHAT_JWT_SECRET=$(od -An -N24 -tx1 /dev/urandom | tr -d ' \n')
export CHAT_JWT_SECRET
# A database with the schema and one subscription (of a user outside the load).
CHAT_LISTEN=127.0.0.1:18091 CHAT_DATABASE_URL="sqlite://$W/seeded" RUST_LOG=warn "$BIN" > "$W/seed.log" 2>&1 &
seeder=$!
for _ in $(seq 1 100); do curl -sf http://127.0.0.1:18091/health > /dev/null && break; sleep 0.1; done
kill "$seeder"; wait "$seeder" || true
sqlite3 "$W/seeded" "INSERT INTO push_subscriptions (endpoint, user_id, p256dh, auth, created_at)
                     VALUES ('https://push.example.com/x', 'someone-else', 'k', 'a', 0)"
for round in $(seq 1 "$ROUNDS"); do
    for which in subscribed none; do
        rm -f "$W"/db "$W"/db-wal "$W"/db-shm
        if [ "$which" = subscribed ]; then cp "$W/seeded" "$W/db"; fi
        cmd="env CHAT_LISTEN=127.0.0.1:18080 CHAT_DATABASE_URL=sqlite://$W/db CHAT_JWT_SECRET=$CHAT_JWT_SECRET"
        cmd="$cmd CHAT_COMMANDS_PER_SECOND=1000000 CHAT_COMMAND_BURST=1000000 CHAT_MAX_CONNECTIONS_PER_USER=16"
        cmd="$cmd CHAT_MAX_ROOMS_PER_USER=100000 CHAT_ROOM_ACTIONS_PER_MINUTE=0 CHAT_MAX_CONNECTIONS_PER_IP=100000"
        cmd="$cmd RUST_LOG=warn $BIN"
        echo "### round $round durable $which load $(cut -d' ' -f1 /proc/loadavg)"
        "$LOAD" run --proto native --scenario durable --addr 127.0.0.1:18080 --server-cmd "$cmd" \
            --server-log "$W/$which.log" --fsync-dir "$W" --out "$W/out.json" > /dev/null
        python3 -c "import json,sys; d=json.load(open(sys.argv[1])); r=d['result']; c=d['checks']; \
print('acked/s', round(r['acked_per_s']), 'p50', r['ack_latency']['p50_ms'], 'p99', r['ack_latency']['p99_ms'], \
'lost', c['lost'], 'duplicated', c['duplicated'], 'out of order', c['out_of_order'])" "$W/out.json"
    done
done
