#!/usr/bin/env bash
# Open/accept handshake time of the control plane, side by side: the Erlang
# sources of REF (default main) and those of the working tree, each run
# RUNS times (default 3) with N open/close cycles (default 200) on a private
# daemon, alternating. The native parts are the working tree's (build them
# first: MIX_ENV=test mix compile). Then, once for each, the Xenstore round
# trips and requests a handshake costs both nodes (bench/ctrl/handshake_ops),
# and the CPU time both nodes and the daemon use per cycle
# (bench/ctrl/handshake_cpu; near twice the wall time, this 2-core machine
# is busy and a handshake waits for CPU more than for round trips).
# With RT=1 (root) the nodes and their daemon run under SCHED_FIFO
# (chrt -f 10), which on a machine busy with other work gives figures close
# to those of an idle one.
#   scripts/bench-handshake.sh [REF] [N] [RUNS]
set -euo pipefail
cd "$(dirname "$0")/.."
ref="${1:-main}"; n="${2:-200}"; runs="${3:-3}"
work=$(mktemp -d /tmp/tube-hs.XXXXXX)
source scripts/daemon.sh
# A run that fails (set -e) leaves its daemon: every one goes at exit.
cleanup() {
  for d in "$work"/run.*; do stop_daemon "$d/xs.sock"; done
  [ -n "${KEEP:-}" ] || rm -rf "$work"
}
trap cleanup EXIT
app=$(ls -d _build/*/lib/tube | head -1)
for v in ref tree; do
  mkdir -p "$work/$v/tube/ebin" "$work/$v/src"
  ln -s "$PWD/priv" "$work/$v/tube/priv"
  cp "$app/ebin/tube.app" "$work/$v/tube/ebin/"
done
for f in $(git ls-tree --name-only "$ref" src/); do git show "$ref:$f" > "$work/ref/src/$(basename "$f")"; done
cp src/*.erl "$work/tree/src/"
# The modules bound to the native library's protocol (its NIF stubs, and
# the receive governor's port controls) must match the one library both use.
cp src/tube_nif.erl src/tube_rx_governor.erl "$work/ref/src/"
for v in ref tree; do erlc -I include -o "$work/$v/tube/ebin" "$work/$v"/src/*.erl; done
mkdir -p "$work/bench" && erlc -o "$work/bench" bench/ctrl/handshake_bench.erl bench/ctrl/handshake_ops.erl bench/ctrl/handshake_cpu.erl
elixir_ebin=$(dirname "$(dirname "$(readlink -f "$(command -v elixir)")")")/lib
results="$work/results"
prio=(); [ -z "${RT:-}" ] || prio=(chrt -f 10)
run() {
  XENSTORED_PATH="$1/xs.sock" ${prio[@]+"${prio[@]}"} erl -noshell -pa "$work/bench" -pa "$work/$2/tube/ebin" \
    -pa "$elixir_ebin/elixir/ebin" -pa "$elixir_ebin/logger/ebin" \
    -kernel logger_level error -run "$3" main "$n" 2>&1
}
for r in $(seq 1 "$runs"); do
  for v in ref tree; do
    d=$(mktemp -d "$work/run.XXXX"); chmod 700 "$d"
    printf '%-4s %s: ' "$v" "$([ $v = ref ] && echo "$ref" || echo 'working tree')"
    run "$d" "$v" handshake_bench | tail -${TAIL:-1} | tee -a "$results.$v"
    stop_daemon "$d/xs.sock"
  done
done
# Median and range over the runs of each one's p50s.
summary() {
  grep -o "$1 p50 [0-9.]*" "$results.$2" | awk '{print $NF}' | sort -n |
    awk '{a[NR]=$1} END {if (NR) printf "median %.0f us (range %.0f-%.0f, %d runs)", a[int((NR+1)/2)], a[1], a[NR], NR}'
}
for v in ref tree; do
  printf '%-4s open/3 p50: %s; open start to accept return p50: %s\n' "$v" \
    "$(summary 'open' $v)" "$(summary 'accept return' $v)"
done
for v in ref tree; do
  d=$(mktemp -d "$work/run.XXXX"); chmod 700 "$d"
  printf '%-4s Xenstore per handshake: %s\n' "$v" \
    "$(run "$d" "$v" handshake_ops | grep 'per handshake' | tr '\n' ';' | sed 's/;$//; s/;/; /')"
  stop_daemon "$d/xs.sock"
done
for v in ref tree; do
  d=$(mktemp -d "$work/run.XXXX"); chmod 700 "$d"
  printf '%-4s %s\n' "$v" "$(run "$d" "$v" handshake_cpu | tail -1)"
  stop_daemon "$d/xs.sock"
done
