#!/usr/bin/env bash
# Soak: the fault tests with larger counts than the suite's (100 kill -9
# rounds, a full minute of 1000 tubes at full speed, about 12 GB of large
# distribution messages from six processes at once). Counts can be set
# from the environment.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
export PATH="$HOME/.cargo/bin:$PATH"
export MIX_ENV=test
export TUBE_KILL_ROUNDS="${TUBE_KILL_ROUNDS:-100}"
export TUBE_LEAK_CYCLES="${TUBE_LEAK_CYCLES:-10000}"
export TUBE_RACES="${TUBE_RACES:-1000}"
export TUBE_LOAD_TUBES="${TUBE_LOAD_TUBES:-1000}"
export TUBE_LOAD_SECONDS="${TUBE_LOAD_SECONDS:-60}"
mix test test/faults_test.exs 2>&1

# Chaos round for the control plane (test/control_plane_chaos_test.exs):
# daemon SIGSTOP/SIGCONT and kill -9, peers paused and killed, owners of up
# to 1000 tubes crashing, for TUBE_CHAOS_SECONDS (default 600), ending with
# every tube accounted for and nothing left in Xenstore.
export TUBE_CHAOS_SECONDS="${TUBE_CHAOS_SECONDS:-600}"
mix test test/control_plane_chaos_test.exs 2>&1

# The default receive mode's bound (test/receive_test.exs): a receiver that
# reads nothing, flooded with 4096-byte packets for TUBE_RX_FLOOD_SECONDS
# (default 60), keeps its mailbox within the depth of 4096-byte packets (512) and its
# node's memory under that many packets' worth plus 32 MiB.
export TUBE_RX_FLOOD_SECONDS="${TUBE_RX_FLOOD_SECONDS:-60}"
mix test test/receive_test.exs 2>&1

# Large distribution messages from six processes at once between two nodes
# over a tube (test/dist_test.exs): TUBE_DIST_BURST messages of 70 KB to
# 2 MiB per process (default 2000, about 12 GB), each checked for order,
# contents and the new atom it carries.
export TUBE_DIST_BURST="${TUBE_DIST_BURST:-2000}"
mix test test/dist_test.exs --only test:"test large messages from many processes at once keep their order, contents and atoms" 2>&1
