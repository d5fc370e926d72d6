#!/bin/sh
# Model-checks the ring index and wake-up protocol with loom.
# LOOM_MAX_PREEMPTIONS overrides the default bound of 3 set in the test.
set -eu
cd "$(dirname "$0")/../.."
CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target}/loom" RUSTFLAGS="--cfg loom" \
    cargo test -p tube_ring --release --test loom_ring -- --test-threads=1 "$@"
