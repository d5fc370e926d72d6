#!/usr/bin/env bash
# Erlang distribution over tubes (tube_dist) against inet_tcp_dist, side by
# side in one run: small messages per second, gen_server:call round trips,
# throughput from 4 KiB to 16 MiB, CPU per message. Prints a table and
# writes JSON (default bench-dist.json).
#
#   bash scripts/bench-dist.sh [--out FILE] [--scale 0.2] [--dist-busy-poll US]
#                              [--only small,call,ping,4096,65536,1048576,16777216]
#                              [--node-args "+S 1:1 ..."]
#
# --scale multiplies the message counts (1.0: 300k small messages, 20k
# calls and 20k plain message round trips (ping), and rounds of 300 ms
# per throughput size: two to warm up, then five whose median is the
# figure); --dist-busy-poll sets the tube nodes'
# application env dist_busy_poll (default: the library's, 50); --node-args
# adds emulator flags to the nodes of both carriers.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
export MIX_ENV=test
mix compile >/dev/null

out_dir=$(mktemp -d /tmp/tube-bench-dist.XXXXXX)
chmod 700 "$out_dir"
export XENSTORED_PATH="$out_dir/xenstored.sock"
source scripts/daemon.sh
cleanup() {
    stop_daemon "$XENSTORED_PATH"
    rm -rf "$out_dir"
}
trap cleanup EXIT

erlc -o "$out_dir" bench/dist/tube_dist_bench.erl bench/dist/tube_dist_bench_echo.erl
erl -noshell -pa _build/test/lib/tube/ebin -pa "$out_dir" \
    -eval 'tube_dist_bench:main(init:get_plain_arguments())' -extra "$@"
