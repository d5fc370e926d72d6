#!/usr/bin/env bash
# Demo: two BEAM nodes, a tube between them, packets both ways, and the
# tube as Xen's xenstore-ls sees it.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
export PATH="$HOME/.cargo/bin:$PATH"
MIX_ENV=test mix run --no-start scripts/demo.exs
