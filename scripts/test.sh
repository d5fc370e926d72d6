#!/usr/bin/env bash
# The whole test suite: Rust crates (unit, integration, interop with Xen's
# tools, bounded fuzzing) and the ExUnit suite against real peer nodes.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
export PATH="$HOME/.cargo/bin:$PATH"
export MIX_ENV=test

echo "== cargo test"
cargo test --workspace --release 2>&1
echo "== loom model of the ring protocol"
sh native/tube_ring/loom.sh 2>&1
echo "== mix test"
mix test 2>&1
