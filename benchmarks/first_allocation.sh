#!/usr/bin/env bash
# Seconds from ./scripts/serve starting in a fresh clone of this checkout's HEAD to the first
# answered POST /allocate, and the sizes of what it installed (docs/dependencies.md):
#   benchmarks/first_allocation.sh                  the package caches as they are
#   UV_CACHE_DIR=$(mktemp -d) PIP_NO_CACHE_DIR=1 benchmarks/first_allocation.sh   no cache
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d)
git clone -q "$root" "$work/keygen"
cd "$work/keygen"
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
start=$(date +%s.%N)
setsid ./scripts/serve --port "$port" >"$work/serve.log" 2>&1 &
serve=$!
trap 'kill -TERM -- -$serve 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"' EXIT
until answer=$(curl -sf -X POST -H 'Content-Type: application/json' -d '{"size": 10}' \
    "http://127.0.0.1:$port/allocate" 2>/dev/null); do
    if ! kill -0 "$serve" 2>/dev/null; then
        echo "scripts/serve exited:" >&2
        cat "$work/serve.log" >&2
        exit 1
    fi
    if [ "$(echo "$(date +%s.%N) - $start > 300" | bc)" = 1 ]; then
        echo "no allocation within 300 s" >&2
        exit 1
    fi
    sleep 0.1  # the poll's interval
done
echo "first allocation $(echo "$(date +%s.%N) - $start" | bc) s after ./scripts/serve started: $answer"
echo "installed: .venv $(du -sh .venv | cut -f1), .tools $(du -sh .tools | cut -f1)"
echo "command: $0${UV_CACHE_DIR:+ (UV_CACHE_DIR=$UV_CACHE_DIR)}"
