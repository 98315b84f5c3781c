#!/usr/bin/env bash
# Attachments: concurrent uploads and downloads against chat-server (HTTP
# multipart, streamed to disk) and, in the same run, against the reference
# Socket.IO server on Node (benches/socketio-ref), where files travel the way
# Socket.IO apps send them: a Buffer argument of an event, written to disk once
# it has arrived whole. Throughput, and each server's RSS, idle and at its peak.
#
#   benches/uploads.sh                         50 clients, 1, 5 and 20 MiB, 2 rounds
#   CLIENTS=10 SIZES=1,5 ROUNDS=1 benches/uploads.sh
#
# Needs: cargo, node 20 and npm (for socketio-ref and socket.io-client).
set -euo pipefail
cd "$(dirname "$0")/.."
CLIENTS=${CLIENTS:-50}
SIZES=${SIZES:-1,5,20}
ROUNDS=${ROUNDS:-2}
export CHAT_JWT_SECRET=bench-secret-bench-secret-bench-secret

cargo build --release -q -p chat-server -p chat-benches --bin chat-server --bin uploads
(
    cd benches/socketio-ref
    [ -d node_modules/socket.io-client ] || npm ci --no-audit --no-fund
    node -e 'require("better-sqlite3")' 2>/dev/null || npm rebuild better-sqlite3 bufferutil
)

echo "## chat-server (HTTP multipart)"
target/release/uploads --server target/release/chat-server --clients "$CLIENTS" --sizes-mib "$SIZES" --rounds "$ROUNDS"

echo
echo "## Socket.IO on Node (a Buffer per event)"
echo
echo "| file | uploads MiB/s | uploads files/s | downloads MiB/s | server RSS idle | server RSS peak |"
echo "|---|---|---|---|---|---|"
for size in ${SIZES//,/ }; do
    dir=$(mktemp -d)
    port=$((20000 + RANDOM % 20000))
    UPLOAD_DIR="$dir" MAX_UPLOAD_BYTES=$((size * 1048576)) \
        node benches/socketio-ref/server.js --port "$port" > "$dir/server.log" 2>&1 &
    pid=$!
    for _ in $(seq 100); do
        (echo > "/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
        sleep 0.1
    done
    line=$(node benches/socketio-ref/upload-bench.js --url "http://127.0.0.1:$port" --pid "$pid" \
        --clients "$CLIENTS" --size-mib "$size" --rounds "$ROUNDS")
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    rm -rf "$dir"
    node -e '
        const r = JSON.parse(process.argv[1]);
        const f = (x) => Math.round(x);
        console.log(`| ${r.size_mib} MiB | ${f(r.upload_mib_s)} | ${r.upload_files_s.toFixed(1)} | ${f(r.download_mib_s)} | ${f(r.idle_rss_mib)} MiB | ${f(r.peak_rss_mib)} MiB |`);
    ' "$line"
done
