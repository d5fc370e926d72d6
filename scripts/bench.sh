#!/usr/bin/env bash
# Benchmarks tubes against Erlang distribution, gen_tcp over a Unix socket
# and gen_udp on loopback, then tubes at scale; prints the tables and
# writes bench/results/tube-<date>.{json,png} (and tube-latest.*).
#
#   bash scripts/bench.sh            # full run, about 4 minutes
#   bash scripts/bench.sh --quick    # about 1 minute
#
# Any argument is passed to `mix tube.bench`, a task of the benchmark's own
# Mix project in bench/ (see `cd bench && mix help tube.bench`).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh

SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
need_apt=()
command -v gnuplot >/dev/null 2>&1 || need_apt+=(gnuplot-nox)
command -v epmd >/dev/null 2>&1 || need_apt+=(erlang-base)
if [ "${#need_apt[@]}" -gt 0 ]; then
  echo "bench: installing ${need_apt[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

# The machine's references recorded beside each round (Tube.Bench.Machine).
cargo build --release -q -p tube_ring --bin ring-bench

# A thousand tubes hold a thousand event sockets per node.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
cd bench
exec mix tube.bench "$@"
