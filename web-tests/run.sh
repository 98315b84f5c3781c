#!/usr/bin/env bash
# The browser tests in one command, for CI and for people:
#
#   web-tests/run.sh
#
# Installs Debian's Chromium when it is missing (as root, with apt-get),
# installs playwright-core exactly as package-lock.json pins it (npm ci),
# builds chat-server (debug), and runs every test in web-tests/tests/ with
# node's test runner. Screenshots land in web-tests/artifacts/.
#
# CHROMIUM_PATH and CHAT_SERVER_BIN override the browser and the server binary.
set -euo pipefail
cd "$(dirname "$0")/.."

chromium="${CHROMIUM_PATH:-/usr/bin/chromium}"
if [ ! -x "$chromium" ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "== installing Debian's chromium"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  else
    echo "web-tests: no browser at $chromium; install Debian's chromium package or set CHROMIUM_PATH" >&2
    exit 1
  fi
fi
for tool in node npm cargo; do
  command -v "$tool" >/dev/null || { echo "web-tests: $tool is needed" >&2; exit 1; }
done

echo "== npm ci (web-tests)"
npm ci --prefix web-tests --no-audit --no-fund --loglevel=error

if [ -z "${CHAT_SERVER_BIN:-}" ]; then
  echo "== cargo build -p chat-server"
  cargo build -p chat-server
  export CHAT_SERVER_BIN="$PWD/target/debug/chat-server"
fi

echo "== browser tests ($("$chromium" --version 2>/dev/null | head -n1))"
export CHROMIUM_PATH="$chromium"
npm --prefix web-tests test
