#!/usr/bin/env bash
# Builds the reference docs of tube:
#   doc/erlang/index.html   the Erlang modules (edoc; Debian's erlang-edoc)
#   doc/elixir/Tube.html    the Elixir module Tube (from its compiled docs)
#   doc/chunks/*.chunk      doc chunks for h(tube) in the Erlang shell
# and prints where they are. The Mix and rebar3 builds also write the doc
# chunks beside the compiled modules, so `h(tube)` works in any build.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! erl -noshell -eval 'halt(case code:which(edoc) of non_existing -> 1; _ -> 0 end)'; then
  SUDO=""
  if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
  echo "docs: installing erlang-edoc"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq erlang-edoc >/dev/null
fi

rm -rf doc/erlang doc/elixir doc/chunks
erl -noshell -noinput -eval '
  Opts = [{dir, "doc/erlang"}, {preprocess, true}, {includes, ["include"]},
          {title, "tube: Erlang reference"}],
  case catch edoc:files(filelib:wildcard("src/*.erl"), Opts) of
      ok -> halt(0);
      E -> io:format(standard_error, "edoc: ~p~n", [E]), halt(1)
  end.'
sh scripts/doc-chunks.sh doc

# The Elixir module, from the docs compiled into its .beam.
mix compile >/dev/null
mix run --no-start --no-compile scripts/elixir_docs.exs doc/elixir

echo "docs: doc/erlang/index.html, doc/elixir/index.html, doc/chunks/"
