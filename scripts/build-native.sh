#!/bin/sh
# Builds what the tube application loads at run time, the NIF + driver
# library and the Xenstore daemon, with cargo, and copies them into priv/:
#   priv/tube_nif.so   (native/tube_nif, with c_src/tube_drv.c)
#   priv/tubestored    (native/tubestored)
# Both Mix (the tube_native compiler in mix.exs) and rebar3 (a pre_hook in
# rebar.config) run this script from the project's root, also when tube is
# a dependency of another project.
#
# When both files in priv/ are newer than every native source, cargo is
# not run at all: a user's `mix compile` or `rebar3 compile` then costs
# nothing here. Set TUBE_NATIVE_FORCE=1 to build anyway.
set -eu
cd "$(dirname "$0")/.."

nif=priv/tube_nif.so
daemon=priv/tubestored

# The sources cargo reads for the two artefacts, newer than the older of
# the two copies in priv/ (prints the first one found, if any).
changed_source() {
  older=$nif
  [ "$daemon" -ot "$nif" ] && older=$daemon
  find Cargo.toml Cargo.lock c_src \
       native/tube_nif native/tube_ring native/tube_xs native/tubestored native/tube_dist_frag \
       -path '*/target' -prune -o -path '*/fuzz' -prune -o \
       -type f \( -name '*.rs' -o -name '*.c' -o -name '*.h' -o -name 'Cargo.toml' -o -name 'Cargo.lock' \) \
       -newer "$older" -print 2>/dev/null | head -n 1
}

if [ "${TUBE_NATIVE_FORCE:-0}" != 1 ] && [ -f "$nif" ] && [ -f "$daemon" ] && [ -z "$(changed_source)" ]; then
  exit 0
fi

cargo=$(command -v cargo || true)
if [ -z "$cargo" ] && [ -x "$HOME/.cargo/bin/cargo" ]; then cargo=$HOME/.cargo/bin/cargo; fi
if [ -z "$cargo" ]; then
  echo "tube: cargo not found (install Rust, e.g. bash scripts/setup.sh)" >&2
  exit 1
fi

"$cargo" build --release -p tube_nif -p tubestored

target=${CARGO_TARGET_DIR:-target}
mkdir -p priv
# Replace by rename, so that a running node keeps its mapping of the old
# file.
for pair in "libtube_nif.so:$nif" "tubestored:$daemon"; do
  from=$target/release/${pair%%:*}
  to=${pair#*:}
  cp "$from" "$to.tmp"
  mv -f "$to.tmp" "$to"
done
