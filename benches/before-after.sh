#!/usr/bin/env bash
# Before/after of a change to chat-server: runs chat-load's scenarios against
# two chat-server builds, interleaved (new, then old, in every round), on the
# same machine, and prints each run's JSON after a "### round N scenario which"
# line.
#
#   benches/before-after.sh OLD NEW [rounds] [scenarios]
#   e.g. benches/before-after.sh e6a1e71 HEAD 3 fanout,mix
#        benches/before-after.sh /tmp/old/release/chat-server target/release/chat-server 2 "idle fanout"
#
# OLD and NEW are each a chat-server binary or a git revision. A revision is
# exported (git archive) into a temporary directory and built in release mode
# with CARGO_TARGET_DIR (default: this checkout's target/), so that the two
# share their dependencies' builds; both are built before the first round.
# Scenarios are separated by commas or spaces. The load generator is this
# checkout's chat-load.
#
# Settings the old build does not know must not be given to it (its
# configuration refuses unknown CHAT_* variables): NEW_ENV is given to the
# new one only (by default the limits added by issue #21, raised), OLD_ENV to
# the old one only (empty by default; give it NEW_ENV's settings when the old
# build knows them, or its defaults refuse the scenarios' connections).
set -euo pipefail
OLD_ARG=${1:?old chat-server binary or git revision}
NEW_ARG=${2:?new chat-server binary or git revision}
ROUNDS=${3:-2}
SCENARIOS=$(echo "${4:-idle fanout}" | tr ',' ' ')
NEW_ENV=${NEW_ENV:-CHAT_ROOM_ACTIONS_PER_MINUTE=0 CHAT_MAX_CONNECTIONS_PER_IP=100000}
OLD_ENV=${OLD_ENV:-}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
LOAD=$TARGET/release/chat-load
WORK=$(mktemp -d /tmp/chat-before-after.XXXXXX)
trap 'rm -rf "$WORK"' EXIT

# The chat-server binary for a command-line argument: the argument itself
# when it is an executable file, else the release build of that revision.
binary_of() { # binary-or-revision name
    if [ -f "$1" ] && [ -x "$1" ]; then
        echo "$1"
        return
    fi
    local sha
    sha=$(git -C "$ROOT" rev-parse --verify --quiet "$1^{commit}") \
        || { echo "$1 is neither a chat-server binary nor a git revision" >&2; return 1; }
    mkdir -p "$WORK/src-$2"
    # Extracted files get the time of extraction (-m), not the commit's: with
    # older times, cargo would take artifacts built from another revision's
    # sources of the same crate for up to date.
    git -C "$ROOT" archive "$sha" | tar -x -m -C "$WORK/src-$2"
    echo "== building chat-server at $sha ($1) as the $2 build" >&2
    (cd "$WORK/src-$2" && CARGO_TARGET_DIR=$TARGET cargo build --release -q -p chat-server --bin chat-server) >&2
    cp "$TARGET/release/chat-server" "$WORK/chat-server-$2"
    echo "$WORK/chat-server-$2"
}
OLD=$(binary_of "$OLD_ARG" old)
NEW=$(binary_of "$NEW_ARG" new)
echo "== old: $OLD_ARG, new: $NEW_ARG" >&2
(cd "$ROOT" && CARGO_TARGET_DIR=$TARGET cargo build --release -q -p chat-benches --bin chat-load)

CHAT_JWT_SECRET=$(od -An -N24 -tx1 /dev/urandom | tr -d ' \n')
export CHAT_JWT_SECRET
# SERVER_CORE, LOAD_CORE, PIN_SERVER, PIN_LOAD
source "$ROOT/benches/pin.sh"
for round in $(seq 1 "$ROUNDS"); do
    for scenario in $SCENARIOS; do
        for which in new old; do
            if [ "$which" = old ]; then bin=$OLD extra=$OLD_ENV; else bin=$NEW extra=$NEW_ENV; fi
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
