#!/usr/bin/env bash
# Installs what tube needs on Debian/Ubuntu when it is missing: Erlang/OTP
# (with headers and edoc), rebar3, Elixir, Xen's xenstore client tools, and a
# Rust toolchain.
# Crates come from crates.io through cargo. Safe to run again.
set -euo pipefail

SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi

need_apt=()
command -v erl >/dev/null 2>&1 || need_apt+=(erlang-nox)
[ -f /usr/lib/erlang/usr/include/erl_driver.h ] || [ -n "${TUBE_ERTS_INCLUDE:-}" ] || need_apt+=(erlang-dev)
command -v elixir >/dev/null 2>&1 || need_apt+=(elixir)
command -v xenstore-ls >/dev/null 2>&1 || need_apt+=(xenstore-utils)
# Xen's own protocol test program, run against tubestored by the suite.
[ -x /usr/lib/xen-4.17/bin/test-xenstore ] || need_apt+=(xen-utils-4.17)
if ! command -v cargo >/dev/null 2>&1 && [ ! -x "$HOME/.cargo/bin/cargo" ]; then
  need_apt+=(cargo rustc)
fi
command -v cc >/dev/null 2>&1 || need_apt+=(gcc libc6-dev)
# The Erlang build (rebar.config) and the doc chunks h(tube) reads.
command -v rebar3 >/dev/null 2>&1 || need_apt+=(rebar3)
compgen -G "/usr/lib/erlang/lib/edoc-*" >/dev/null || [ -n "${TUBE_ERTS_INCLUDE:-}" ] || need_apt+=(erlang-edoc)

if [ "${#need_apt[@]}" -gt 0 ]; then
  echo "setup: installing ${need_apt[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

if [ -x "$HOME/.cargo/bin/cargo" ]; then export PATH="$HOME/.cargo/bin:$PATH"; fi
echo "setup: $(erl -noshell -eval 'io:format("OTP ~s", [erlang:system_info(otp_release)]), halt().'), $(elixir --version | tail -1), $(cargo --version)"
