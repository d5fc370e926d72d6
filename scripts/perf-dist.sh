#!/usr/bin/env bash
# Where the time of a distribution load goes, on both nodes: starts two
# nodes (tube_dist, or inet_tcp_dist with --tcp), runs one load for a while
# and records both OS processes with `perf record -g`, then prints the top
# symbols per node. The rate of each round of the load, and how busy each
# scheduler of the receiving node was in it, come first.
#
#   bash scripts/perf-dist.sh [--tcp] LOAD [SECONDS]
#
# LOAD: small (64-byte binaries one way), call (gen_server:call round
# trips), or a binary size in bytes (65536, 1048576, ...). SECONDS: 10.
# Needs perf (apt-get install linux-perf). The data stays in
# ${TMPDIR:-/tmp}/perf-dist-CARRIER-LOAD.data for `perf report -i`.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
export MIX_ENV=test
carrier=tube
if [ "${1:-}" = "--tcp" ]; then carrier=tcp; shift; fi
load=${1:?LOAD: small, call or a size in bytes}
seconds=${2:-10}
mix compile >/dev/null

out_dir=$(mktemp -d /tmp/tube-perf-dist.XXXXXX)
chmod 700 "$out_dir"
export XENSTORED_PATH="$out_dir/xenstored.sock"
runner=
source scripts/daemon.sh
cleanup() {
    # The nodes go before the daemon, or they would start another one.
    if [ -n "$runner" ]; then kill "$runner" 2>/dev/null || true; wait "$runner" 2>/dev/null || true; fi
    stop_daemon "$XENSTORED_PATH"
    rm -rf "$out_dir"
}
trap cleanup EXIT

erlc -o "$out_dir" bench/dist/tube_dist_bench.erl bench/dist/tube_dist_bench_echo.erl bench/dist/tube_dist_prof.erl
erl -noshell -pa _build/test/lib/tube/ebin -pa "$out_dir" \
    -eval "tube_dist_prof:main([\"$carrier\", \"$load\", \"$((seconds + 4))\", \"$out_dir/pids\"])" &
runner=$!
for _ in $(seq 1 600); do [ -s "$out_dir/pids" ] && break; sleep 0.1; done
read -r pid_a pid_b < "$out_dir/pids" || true
sleep 2
data="${TMPDIR:-/tmp}/perf-dist-$carrier-$load.data"
# perf report selects by thread: the nodes' threads, taken while they run.
tids() { ps -L -o lwp= -p "$1" | tr -d ' ' | paste -sd, -; }
tids_a=$(tids "$pid_a")
tids_b=$(tids "$pid_b")
perf record -q -g -o "$data" -p "$pid_a,$pid_b" -- sleep "$seconds" >/dev/null 2>&1
wait "$runner"
runner=
for who in "sender:$pid_a:$tids_a" "receiver:$pid_b:$tids_b"; do
    IFS=: read -r role pid list <<< "$who"
    echo "== $carrier, $load, $role (pid $pid): top symbols, self time, % of all samples"
    # head closes the pipe early: with pipefail that is not a failure.
    { perf report -i "$data" --no-children --tid "$list" --sort dso,sym --stdio 2>/dev/null \
        | grep -E '^ +[0-9.]+%' | head -25; } || true
    echo "-- $role by object (% of all samples)"
    { perf report -i "$data" --no-children --sort pid,dso --stdio 2>/dev/null \
        | grep -E '^ +[0-9.]+%' \
        | awk -v tids=",$list," '{ split($2, t, ":"); if (index(tids, "," t[1] ",")) s[$3] += $1 }
              END { for (d in s) printf "    %6.2f%%  %s\n", s[d], d }' \
        | sort -rn | head -6; } || true
done
echo "perf data: $data"
