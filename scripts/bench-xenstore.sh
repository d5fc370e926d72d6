#!/bin/sh
# Throughput (READ/WRITE, 1 and 16 clients) and watch-event latency of tubestored.
# Usage: scripts/bench-xenstore.sh [--db] [--tx] [--binary PATH]
#   --db           persistence (journal, fsync before replies) and history on
#   --tx           a transaction held open the whole run (snapshot versions kept)
#   --binary PATH  measure that tubestored binary (started on a private socket) instead of
#                  the in-process daemon of this tree, e.g. another build to compare with
# BENCH_SECS=N sets seconds per figure.
set -eu
cd "$(dirname "$0")/.."
BIN=""
while [ $# -gt 0 ]; do
    case "$1" in
        --db) BENCH_DB=1; export BENCH_DB ;;
        --tx) BENCH_OPEN_TX=1; export BENCH_OPEN_TX ;;
        --binary) BIN="$2"; shift ;;
        *) echo "usage: $0 [--db] [--tx] [--binary PATH]" >&2; exit 2 ;;
    esac
    shift
done
if [ -z "$BIN" ]; then
    exec cargo bench -p tubestored --bench xs_bench
fi
DIR=$(mktemp -d)
PID=""
trap '[ -n "$PID" ] && kill "$PID" 2>/dev/null; wait 2>/dev/null; rm -rf "$DIR"' EXIT
if [ -n "${BENCH_DB:-}" ]; then
    "$BIN" --quiet --socket "$DIR/socket" --db "$DIR/bench.db" &
else
    "$BIN" --quiet --socket "$DIR/socket" &
fi
PID=$!
i=0
until [ -S "$DIR/socket" ]; do
    i=$((i + 1)); [ "$i" -lt 500 ] || { echo "daemon did not start" >&2; exit 1; }
    sleep 0.02
done
BENCH_SOCKET="$DIR/socket" cargo bench -p tubestored --bench xs_bench
