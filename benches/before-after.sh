#!/usr/bin/env bash
# Before/after of a change to chat-server: runs chat-load's scenarios against
# two chat-server binaries, interleaved, on the same machine, and prints each
# run's JSON after a "### round N scenario which" line.
#
#   benches/before-after.sh OLD_CHAT_SERVER NEW_CHAT_SERVER [rounds] [scenarios]
#   e.g. benches/before-after.sh /tmp/old/release/chat-server target/release/chat-server 2 "idle fanout"
#
# Build the old binary from a worktree of the old commit with its own
# CARGO_TARGET_DIR. Settings the old build does not know must not be given
# to it (its configuration refuses unknown CHAT_* variables), so the limits
# added by issue #21 are raised for the new one only, through NEW_ENV.
set -euo pipefail
OLD=${1:?old chat-server binary}
NEW=${2:?new chat-server binary}
ROUNDS=${3:-2}
SCENARIOS=${4:-idle fanout}
NEW_ENV=${NEW_ENV:-CHAT_ROOM_ACTIONS_PER_MINUTE=0 CHAT_MAX_CONNECTIONS_PER_IP=100000}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
LOAD=$ROOT/target/release/chat-load
[ -x "$LOAD" ] || cargo build --release -p chat-benches --bin chat-load
CHAT_JWT_SECRET=$(od -An -N24 -tx1 /dev/urandom | tr -d ' \n')
export CHAT_JWT_SECRET
WORK=$(mktemp -d /tmp/chat-before-after.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
PIN_SERVER="" PIN_LOAD=""
if [ "$(nproc)" -ge 2 ]; then PIN_SERVER="taskset -c 0" PIN_LOAD="taskset -c 1"; fi
for round in $(seq 1 "$ROUNDS"); do
    for scenario in $SCENARIOS; do
        for which in new old; do
            if [ "$which" = old ]; then bin=$OLD extra=""; else bin=$NEW extra=$NEW_ENV; fi
            rm -f "$WORK"/db*
            cmd="env CHAT_LISTEN=127.0.0.1:18080 CHAT_DATABASE_URL=sqlite://$WORK/db CHAT_JWT_SECRET=$CHAT_JWT_SECRET"
            cmd="$cmd CHAT_COMMANDS_PER_SECOND=1000000 CHAT_COMMAND_BURST=1000000 CHAT_MAX_CONNECTIONS_PER_USER=16"
            cmd="$cmd CHAT_MAX_ROOMS_PER_USER=100000 $extra RUST_LOG=warn $PIN_SERVER $bin"
            echo "### round $round $scenario $which load $(cut -d' ' -f1 /proc/loadavg)"
            $PIN_LOAD "$LOAD" run --proto native --scenario "$scenario" --addr 127.0.0.1:18080 \
                --server-cmd "$cmd" --server-log "$WORK/$which.log" --fsync-dir "$WORK" \
                --out "$WORK/out.json" > /dev/null
            cat "$WORK/out.json"
            echo
        done
    done
done
