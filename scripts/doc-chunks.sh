#!/bin/sh
# Writes the EEP-48 doc chunks of the Erlang modules (edoc's chunk doclet)
# into DIR/chunks/, where code:get_doc/1 finds them beside the ebin
# directory: h(tube) and h(tube, send) in the Erlang shell, h :tube in
# iex. Does nothing when every chunk is newer than its source.
#
#   sh scripts/doc-chunks.sh [DIR]     (default: doc)
#   sh scripts/doc-chunks.sh --rebar   (rebar3's post_hook: beside ebin)
#
# Run by the Mix and rebar3 builds, and by scripts/docs.sh.
set -eu
root=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-$root/doc}
# From rebar3's hook: a checkout (_checkouts/tube) is compiled into
# _build/<profile>/checkouts/tube, away from its sources; the chunks go
# there. Otherwise (top level, or a dependency under _build/*/lib) this
# directory holds ebin, or is above it.
if [ "$out" = --rebar ]; then
  out=$root/doc
  co=${REBAR_CHECKOUTS_DIR:-/nonexistent}/tube
  if [ -d "$co" ] && [ "$(cd "$co" && pwd -P)" = "$(cd "$root" && pwd -P)" ]; then
    out=$REBAR_CHECKOUTS_OUT_DIR/tube/doc
  fi
fi
stale=0
for src in "$root"/src/*.erl; do
  chunk=$out/chunks/$(basename "$src" .erl).chunk
  if [ ! -f "$chunk" ] || [ "$src" -nt "$chunk" ]; then stale=1; break; fi
done
[ "$stale" = 0 ] && exit 0
mkdir -p "$out"
cd "$root"
exec erl -noshell -noinput -eval '
  [Out] = init:get_plain_arguments(),
  code:which(edoc) =:= non_existing andalso
      begin
          io:format(standard_error, "tube: edoc is not installed (Debian: erlang-edoc), "
                    "so h(tube) will have no docs~n", []),
          halt(0)
      end,
  Opts = [{doclet, edoc_doclet_chunks}, {layout, edoc_layout_chunks},
          {dir, Out}, {preprocess, true}, {includes, ["include"]}],
  case catch edoc:files(filelib:wildcard("src/*.erl"), Opts) of
      ok -> halt(0);
      E -> io:format(standard_error, "edoc chunks: ~p~n", [E]), halt(1)
  end.' -extra "$out"
