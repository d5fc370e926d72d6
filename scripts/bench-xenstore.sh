#!/bin/sh
# Throughput (READ/WRITE, 1 and 16 clients) and watch-event latency of tubestored.
# Usage: scripts/bench-xenstore.sh [--db]   (BENCH_SECS=N sets seconds per figure)
set -eu
cd "$(dirname "$0")/.."
if [ "${1:-}" = "--db" ]; then
    BENCH_DB=1
    export BENCH_DB
fi
exec cargo bench -p tubestored --bench xs_bench
